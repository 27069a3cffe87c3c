"""A probe plugin: the ``probe:`` dataset source (a ``.npz`` file, ``root`` set to the file),
the ``probenet`` family (an MLP whose dropout exists only when it has hidden layers) and the
``top2`` metric."""

import numpy as np
from torch import nn

from automl_vision import hookimpl
from automl_vision.types import Dataset, DatasetSource, Metric, ModelFamily, Sample


def load(location):
    with np.load(location, allow_pickle=False) as npz:
        images, labels = npz["images"], npz["labels"]
    classes = [str(c) for c in sorted({int(v) for v in labels})]
    samples = [Sample(key=f"img{i:04d}", label=classes.index(str(int(v))), array=images[i])
               for i, v in enumerate(labels)]
    return Dataset(classes=classes, samples=samples, root=location)


def suggest(trial, context):
    params = {"probenet.hidden": trial.suggest_int("probenet.hidden", 0, 2)}
    if params["probenet.hidden"]:
        params["probenet.dropout"] = trial.suggest_float("probenet.dropout", 0.0, 0.3)
    return params


def build(params, in_chans, image_size, num_classes):
    layers, width = [nn.Flatten()], in_chans * image_size * image_size
    for _ in range(params["probenet.hidden"]):
        layers += [nn.Linear(width, 64), nn.ReLU(), nn.Dropout(params.get("probenet.dropout", 0.0))]
        width = 64
    return nn.Sequential(*layers, nn.Linear(width, num_classes))


def top2(y, p):
    return float(np.mean([label in row.argsort()[-2:] for label, row in zip(y, p)]))


@hookimpl
def register_datasets(register):
    register(DatasetSource("probe", load=load, detect=None, description="images + labels in a .npz file"))


@hookimpl
def register_model_families(register):
    register(ModelFamily("probenet", suggest=suggest, build=build,
                         describe=lambda p: f"probenet h{p['probenet.hidden']}", description="a test MLP"))


@hookimpl
def register_metrics(register):
    register(Metric("top2", "maximize", top2, min_classes=3, description="true class among the 2 most likely"))
