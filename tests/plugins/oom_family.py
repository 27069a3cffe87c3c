"""A small CNN family that runs out of memory when its training batch is too large.

Used by ``tests/test_distributed.py`` to check the out-of-memory handling on a machine
without a GPU: when a training batch holds more than ``$AUTOML_VISION_TEST_OOM_BATCH``
images, the forward pass asks the allocator for an impossible buffer (2**62 bytes), so
the error is the allocator's own, as a too-large batch on a GPU would give.
"""

import os

import torch
from torch import nn

from automl_vision import hookimpl
from automl_vision.types import ModelFamily


class HungryCNN(nn.Module):
    def __init__(self, in_chans: int, num_classes: int, width: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_chans, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))

    def forward(self, x):
        limit = int(os.environ.get("AUTOML_VISION_TEST_OOM_BATCH", "0") or 0)
        if self.training and limit and x.shape[0] > limit:
            torch.empty(1 << 62, dtype=torch.uint8)  # the allocator refuses: a real out-of-memory error
        return self.body(x)


def suggest(trial, ctx):
    return {"hungry.width": trial.suggest_categorical("hungry.width", [8, 16])}


def build(params, in_chans, image_size, num_classes):
    return HungryCNN(in_chans, num_classes, params["hungry.width"])


@hookimpl
def register_model_families(register):
    register(ModelFamily(name="hungry", suggest=suggest, build=build, describe=lambda p: f"hungry w{p['hungry.width']}"))
