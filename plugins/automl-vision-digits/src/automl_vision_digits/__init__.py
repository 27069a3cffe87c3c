"""automl-vision dataset sources ``digits:`` and ``npz:``.

``digits:`` reads scikit-learn's bundled handwritten digits (no download); ``npz:``
reads images and labels stored as NumPy arrays in a ``.npz`` file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from automl_vision import hookimpl
from automl_vision.types import Dataset, DatasetSource, DataError, Sample

__version__ = "0.1.0"


def load_digits(location: str) -> Dataset:
    """``digits:`` (all 1,797 images) or ``digits:N`` (the first N images of each class)."""
    from sklearn.datasets import load_digits as sk_load_digits

    location = location.strip()
    per_class = None
    if location:
        if not location.isdigit() or int(location) < 1:
            raise DataError(f"digits:{location}: expected 'digits:' or 'digits:N' with N images per class, e.g. digits:30")
        per_class = int(location)
    bunch = sk_load_digits()
    # the 8x8 images hold 0..16; stretch to the full uint8 range
    pixels = np.clip(np.rint(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    counts: dict[int, int] = {}
    samples = []
    for i, (img, label) in enumerate(zip(pixels, bunch.target)):
        label = int(label)
        if per_class is not None and counts.get(label, 0) >= per_class:
            continue
        counts[label] = counts.get(label, 0) + 1
        samples.append(Sample(key=f"digits/{i}", label=label, array=img))
    return Dataset(classes=[str(c) for c in bunch.target_names], samples=samples, root="digits:" + location,
                   notes=["scikit-learn's bundled 8x8 digits, scaled from 0..16 to 0..255"])


def _images(arr: np.ndarray, name: str, where: str) -> np.ndarray:
    if arr.dtype != np.uint8:
        raise DataError(
            f"{where}: array {name!r} is {arr.dtype}; images must be uint8 0..255 "
            f"(e.g. np.clip(x * 255, 0, 255).astype(np.uint8) for floats in 0..1)"
        )
    if arr.ndim == 4 and arr.shape[-1] not in (1, 3, 4):
        raise DataError(f"{where}: array {name!r} has shape {arr.shape}; expected (N, H, W) or (N, H, W, C) with C 1, 3 or 4")
    if arr.ndim not in (3, 4):
        raise DataError(f"{where}: array {name!r} has shape {arr.shape}; expected (N, H, W) or (N, H, W, C)")
    return arr[..., 0] if arr.ndim == 4 and arr.shape[-1] == 1 else arr


def _labels(raw: np.ndarray, classes: list[str] | None, where: str, name: str) -> tuple[np.ndarray, list[str]]:
    if raw.ndim != 1:
        raise DataError(f"{where}: array {name!r} has shape {raw.shape}; expected (N,) labels")
    if raw.dtype.kind in "iu":
        names = classes or [str(c) for c in sorted(set(raw.tolist()))]
        if classes is None:
            index = {int(c): i for i, c in enumerate(sorted(set(raw.tolist())))}
            return np.asarray([index[int(v)] for v in raw], dtype=np.int64), names
        if raw.min() < 0 or raw.max() >= len(classes):
            raise DataError(f"{where}: labels in {name!r} must index the {len(classes)} names in 'classes'")
        return raw.astype(np.int64), names
    if raw.dtype.kind in "US":
        values = [str(v) for v in raw.tolist()]
        names = classes or sorted(set(values))
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise DataError(f"{where}: labels {unknown[:5]} are not in 'classes'")
        return np.asarray([names.index(v) for v in values], dtype=np.int64), names
    raise DataError(f"{where}: array {name!r} is {raw.dtype}; labels must be integers or strings")


def load_npz(location: str) -> Dataset:
    """Images and labels from a ``.npz`` file (see the README for the layout)."""
    path = Path(location).expanduser()
    if not path.is_file():
        raise DataError(f"npz:{location}: file not found; give the path of a .npz file written with numpy.savez")
    try:
        # allow_pickle=False: an .npz from elsewhere must never run code when read
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except ValueError as exc:
        raise DataError(f"{location}: cannot read it without unpickling ({exc}); save plain numeric or string arrays") from exc
    except OSError as exc:
        raise DataError(f"{location}: not a readable .npz file ({exc})") from exc
    where = str(path)
    classes = [str(c) for c in arrays["classes"].tolist()] if "classes" in arrays else None
    parts: list[tuple[str | None, np.ndarray, np.ndarray, str, str]] = []
    if "x_train" in arrays:
        for split in ("train", "val", "test"):
            if f"x_{split}" in arrays:
                if f"y_{split}" not in arrays:
                    raise DataError(f"{where}: has x_{split} but no y_{split}")
                parts.append((split, arrays[f"x_{split}"], arrays[f"y_{split}"], f"x_{split}", f"y_{split}"))
        if not any(p[0] == "val" for p in parts):
            raise DataError(f"{where}: with x_train, give x_val/y_val too (or use images/labels and let automl-vision split)")
    else:
        xk = "images" if "images" in arrays else "x" if "x" in arrays else None
        yk = "labels" if "labels" in arrays else "y" if "y" in arrays else None
        if xk is None or yk is None:
            raise DataError(f"{where}: expected arrays 'images' and 'labels' (or x/y, or x_train/y_train/x_val/y_val); "
                            f"found {sorted(arrays)}")
        parts.append((None, arrays[xk], arrays[yk], xk, yk))
    # labels of all parts share one class list
    all_raw = np.concatenate([p[2] for p in parts])
    _, class_names = _labels(all_raw, classes, where, "labels")
    samples: list[Sample] = []
    split_arr = arrays.get("split")
    for split, x, y, xk, yk in parts:
        x = _images(x, xk, where)
        if len(x) != len(y):
            raise DataError(f"{where}: {xk} has {len(x)} images but {yk} has {len(y)} labels")
        labels, _ = _labels(y, class_names, where, yk)
        for i in range(len(x)):
            s = split
            if split is None and split_arr is not None:
                s = str(split_arr[i]).lower()
                if s not in ("train", "val", "test"):
                    raise DataError(f"{where}: split[{i}] is {s!r}; expected train, val or test")
            samples.append(Sample(key=f"{xk}/{i}", label=int(labels[i]), array=np.ascontiguousarray(x[i]), split=s))
    return Dataset(classes=class_names, samples=samples, root=where)


DIGITS = DatasetSource(
    name="digits",
    load=load_digits,
    description="scikit-learn's bundled 8x8 digits; digits:N keeps N images per class",
)
NPZ = DatasetSource(
    name="npz",
    load=load_npz,
    detect=lambda location: location.lower().endswith(".npz"),
    description="NumPy arrays in a .npz file: images (N,H,W[,C]) uint8 + labels, or x_train/y_train/x_val/y_val",
)


@hookimpl
def register_datasets(register):
    register(DIGITS)
    register(NPZ)
