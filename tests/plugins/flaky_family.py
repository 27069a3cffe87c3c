"""A model family whose build fails in trial 1 only, and event hooks that record what they see.

Events are appended as JSON lines to ``$AUTOML_VISION_TEST_EVENTS``; ``on_trial_end``
raises for trial 2, which must not stop the search.
"""

import json
import os

from torch import nn

from automl_vision import hookimpl
from automl_vision.types import ModelFamily


def suggest(trial, ctx):
    return {"flaky.width": trial.suggest_categorical("flaky.width", [8, 16]), "flaky.boom": trial.number == 1}


def build(params, in_chans, image_size, num_classes):
    if params["flaky.boom"]:
        raise ValueError("this architecture does not fit in trial 1")
    return nn.Sequential(nn.Flatten(), nn.Linear(in_chans * image_size * image_size, params["flaky.width"]), nn.ReLU(),
                         nn.Linear(params["flaky.width"], num_classes))


@hookimpl
def register_model_families(register):
    register(ModelFamily(name="flaky", suggest=suggest, build=build, describe=lambda p: f"flaky w{p['flaky.width']}"))


def _event(**kw):
    with open(os.environ["AUTOML_VISION_TEST_EVENTS"], "a") as fh:
        fh.write(json.dumps(kw, default=str) + "\n")


@hookimpl
def on_search_start(run_dir, settings):
    _event(hook="on_search_start", run_dir=run_dir, models=settings["models"])


@hookimpl
def on_trial_end(run_dir, trial, record):
    _event(hook="on_trial_end", number=trial.number, state=record["state"], reason=record.get("reason", ""),
           metrics=sorted(record.get("metrics") or {}))
    if trial.number == 2:
        raise RuntimeError("tracking server unreachable")


@hookimpl
def on_search_end(run_dir, study, summary):
    _event(hook="on_search_end", n_trials=len(study.trials), deliverable=summary.get("deliverable"))
