"""A third-party family whose parameter exists only for some values of an int parameter:
``tinyvit.drop`` is sampled only when ``tinyvit.depth >= 2`` (define-by-run, as Optuna allows)."""

from torch import nn

from automl_vision import hookimpl
from automl_vision.types import ModelFamily


def suggest(trial, context):
    params = {"tinyvit.depth": trial.suggest_int("tinyvit.depth", 1, 4)}
    if params["tinyvit.depth"] >= 2:
        params["tinyvit.drop"] = trial.suggest_float("tinyvit.drop", 0.0, 0.3)
    return params


def build(params, in_chans, image_size, num_classes):
    layers = [nn.Flatten(), nn.Linear(in_chans * image_size * image_size, 32), nn.ReLU()]
    for _ in range(params["tinyvit.depth"] - 1):
        layers += [nn.Dropout(params.get("tinyvit.drop", 0.0)), nn.Linear(32, 32), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(32, num_classes))


@hookimpl
def register_model_families(register):
    register(ModelFamily("tinyvit", suggest=suggest, build=build, description="a test family"))
