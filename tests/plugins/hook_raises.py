"""A plugin whose registration hook raises after registering one metric."""

from automl_vision import hookimpl
from automl_vision.types import Metric


@hookimpl
def register_metrics(register):
    register(Metric("raises_first", "maximize", lambda y, p: 0.0))
    raise RuntimeError("could not reach the licence server")
