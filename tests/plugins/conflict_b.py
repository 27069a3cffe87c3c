"""Registers the metric ``agreement`` too, as a constant, so tests can tell which one ran."""

from automl_vision import hookimpl
from automl_vision.types import Metric


@hookimpl
def register_metrics(register):
    register(Metric("agreement", "maximize", lambda y, p: 0.25))
