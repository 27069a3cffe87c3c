"""A plugin whose hook takes an argument the hook does not have."""

from automl_vision import hookimpl


@hookimpl
def on_trial_end(run_dir, trial, record, extra):
    pass
