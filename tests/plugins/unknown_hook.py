"""A plugin with a misspelt hook name next to a working one."""

from automl_vision import hookimpl
from automl_vision.types import Metric


@hookimpl
def on_trail_end(run_dir, record):  # typo of on_trial_end: never called
    pass


@hookimpl
def register_metrics(register):
    register(Metric("unknown_hook_metric", "maximize", lambda y, p: 1.0))
