"""A small CNN family whose Ctrl-C lands where Python cannot pass it on.

In the first trial's third training step, the forward pass drops an object whose ``__del__``
receives a SIGINT (as a user's Ctrl-C can arrive while any clean-up code runs): Python
prints "Exception ignored in ..." and carries on. Used by ``tests/test_interrupts.py``
to check that such a Ctrl-C still stops the search.
"""

import os
import signal
import time

from torch import nn

from automl_vision import hookimpl
from automl_vision.types import ModelFamily


class _CleanUp:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the interrupt is raised here, inside __del__, and swallowed


class SwallowingCNN(nn.Module):
    def __init__(self, in_chans: int, num_classes: int, width: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_chans, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))

    def forward(self, x):
        if self.training:
            _steps.append(1)
            if len(_steps) == 3:  # once in the process
                _CleanUp()  # dropped at once: __del__ runs now
        return self.body(x)


_steps = []


def suggest(trial, ctx):
    return {"swallow.width": trial.suggest_categorical("swallow.width", [8, 16])}


def build(params, in_chans, image_size, num_classes):
    return SwallowingCNN(in_chans, num_classes, params["swallow.width"])


@hookimpl
def register_model_families(register):
    register(ModelFamily(name="swallow", suggest=suggest, build=build, describe=lambda p: f"swallow w{p['swallow.width']}"))
