"""Write scikit-learn's bundled digits (8x8 greyscale, 10 classes, 1797 images) as an
image folder: OUT/<digit>/<index>.png. No download: the data ships with scikit-learn."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits


def write_digits(out: str | Path, limit_per_class: int | None = None) -> Path:
    out = Path(out)
    digits = load_digits()
    counts: dict[int, int] = {}
    for i, (img, label) in enumerate(zip(digits.images, digits.target)):
        label = int(label)
        if limit_per_class is not None and counts.get(label, 0) >= limit_per_class:
            continue
        counts[label] = counts.get(label, 0) + 1
        folder = out / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (np.asarray(img) * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
        Image.fromarray(pixels, "L").save(folder / f"{i:04d}.png")
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", nargs="?", default="examples/data/digits")
    parser.add_argument("--limit-per-class", type=int)
    args = parser.parse_args()
    path = write_digits(args.out, args.limit_per_class)
    print(f"wrote digits to {path}")
