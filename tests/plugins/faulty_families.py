"""Model families that break during training, for tests/test_interrupts.py.

``nanloss`` produces infinite logits, so its loss is NaN: the trial must be pruned with
that reason. ``wrongshape`` returns one logit too many: the trial must fail with a
message that names the model. ``nanonce`` is sound but its gradients are NaN in one
step of every five (as a flaky kernel's): those steps must be left out and the trial
must complete.
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


class _NaNOnce(_Linear):
    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features, 1.0)
        self.calls = 0

    def forward(self, x):
        out = super().forward(x)
        if self.training:
            self.calls += 1
            if self.calls % 5 == 2:
                out.register_hook(lambda grad: torch.full_like(grad, float("nan")))
        return out


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
    register(ModelFamily(
        name="nanonce", suggest=_suggest("nanonce"),
        build=lambda p, in_chans, image_size, num_classes: _NaNOnce(in_chans * image_size ** 2, num_classes),
    ))
