"""A dataset source for NumPy .npz files (``images`` uint8 (N, H, W), ``labels``), written as
docs/plugins.md suggests: ``root`` is the file it read, not a folder."""

import numpy as np

from automl_vision import hookimpl
from automl_vision.types import Dataset, DatasetSource, Sample


def load(location):
    with np.load(location, allow_pickle=False) as npz:
        images, labels = npz["images"], npz["labels"]
    classes = sorted({str(int(v)) for v in labels})
    samples = [Sample(key=f"{i}", label=classes.index(str(int(v))), array=images[i]) for i, v in enumerate(labels)]
    return Dataset(classes=classes, samples=samples, root=location)


@hookimpl
def register_datasets(register):
    register(DatasetSource("testnpz", load=load, detect=lambda loc: loc.endswith(".npz")))
