"""Metrics a search cannot use as its objective: one returns NaN, one needs more classes than digits has."""

import math

from automl_vision import hookimpl
from automl_vision.types import Metric


@hookimpl
def register_metrics(register):
    register(Metric("always_nan", "maximize", lambda y, p: math.nan, description="returns NaN"))
    register(Metric("needs_twenty", "maximize", lambda y, p: 0.5, min_classes=20, description="20+ classes"))
