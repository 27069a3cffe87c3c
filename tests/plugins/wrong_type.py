"""A plugin that registers things of the wrong type, a bad name, and returns a list."""

from automl_vision import hookimpl
from automl_vision.types import Dataset, DatasetSource, Metric


@hookimpl
def register_datasets(register):
    register({"name": "dictsource", "load": print})  # a dict, not a DatasetSource
    register(DatasetSource(name="Bad Name", load=lambda loc: Dataset([], [])))
    register(DatasetSource(name="wrongtype_ok", load=lambda loc: Dataset([], [])))


@hookimpl
def register_metrics(register):
    return [Metric("returned_metric", "maximize", lambda y, p: 0.0)]  # pytest style: ignored
