"""Model families that break during training, for tests/test_interrupts.py.

``nanloss`` produces infinite logits, so its loss is NaN: the trial must be pruned with
that reason. ``wrongshape`` returns one logit too many: the trial must fail with a
message that names the model.
"""

import torch
from torch import nn

from automl_vision import hookimpl
from automl_vision.types import ModelFamily


class _Linear(nn.Module):
    def __init__(self, in_features: int, out_features: int, scale: float):
        super().__init__()
        self.fc = nn.Linear(in_features, out_features)
        self.scale = scale

    def forward(self, x):
        return self.fc(torch.flatten(x, 1)) * self.scale


def _suggest(name):
    return lambda trial, ctx: {f"{name}.width": trial.suggest_categorical(f"{name}.width", [4])}


@hookimpl
def register_model_families(register):
    register(ModelFamily(
        name="nanloss", suggest=_suggest("nanloss"),
        build=lambda p, in_chans, image_size, num_classes: _Linear(in_chans * image_size ** 2, num_classes, float("inf")),
    ))
    register(ModelFamily(
        name="wrongshape", suggest=_suggest("wrongshape"),
        build=lambda p, in_chans, image_size, num_classes: _Linear(in_chans * image_size ** 2, num_classes + 1, 1.0),
    ))
