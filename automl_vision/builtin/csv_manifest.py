"""Built-in dataset source: a CSV manifest of image paths and labels.

The CSV has a header with at least ``path`` (or ``image``/``file``) and ``label``
(or ``class``) columns, and optionally ``split`` (train/val/test). Relative paths are
resolved against the CSV's folder, and no path may escape that root (``..`` or an
absolute path outside it is refused and reported). A file listed more than once is used
once, as its first row says: a later row is reported as skipped, as a labelling conflict
when it gives another label. One file is then one sample, in one split, and the same CSV
always gives the same samples (so a resumed search finds the same split).
"""

from __future__ import annotations

import csv
from pathlib import Path

from automl_vision.hookspecs import hookimpl
from automl_vision.types import Dataset, DatasetSource, DataError, Sample

PATH_COLUMNS = ("path", "image", "file", "filename")
LABEL_COLUMNS = ("label", "class", "category")
SPLIT_VALUES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


def load_csv_manifest(location: str) -> Dataset:
    csv_path = Path(location).expanduser()
    if not csv_path.is_file():
        raise DataError(f"CSV manifest {location!r} does not exist.")
    root = csv_path.parent.resolve()
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        fields = {f.strip().lower(): f for f in (reader.fieldnames or [])}
        path_col = next((fields[c] for c in PATH_COLUMNS if c in fields), None)
        label_col = next((fields[c] for c in LABEL_COLUMNS if c in fields), None)
        split_col = fields.get("split")
        if path_col is None or label_col is None:
            raise DataError(
                f"{location}: the CSV needs a header with a path column ({'/'.join(PATH_COLUMNS)}) and a label "
                f"column ({'/'.join(LABEL_COLUMNS)}); found {reader.fieldnames}."
            )
        rows = list(reader)
    classes = sorted({(r.get(label_col) or "").strip() for r in rows} - {""})
    samples: list[Sample] = []
    skipped: list[dict] = []
    first: dict[Path, tuple[int, str]] = {}  # file -> (line, label) of the row that lists it first
    for lineno, row in enumerate(rows, start=2):
        raw = (row.get(path_col) or "").strip()
        label = (row.get(label_col) or "").strip()
        if not raw or not label:
            skipped.append({"path": f"{csv_path.name}:{lineno}", "reason": "empty path or label"})
            continue
        full = (root / raw).resolve()
        if full != root and root not in full.parents:
            skipped.append({"path": raw, "reason": f"path escapes the manifest's root {root} (refused)"})
            continue
        if not full.is_file():
            skipped.append({"path": raw, "reason": "file not found"})
            continue
        if full in first:
            line, was = first[full]
            # "labelling conflict" starts the reason: prepare warns of it (prepare.LABEL_CONFLICT)
            reason = (f"labelling conflict: line {lineno} labels it {label!r}, line {line} {was!r}; line {line} is used"
                      if label != was else f"listed again at line {lineno} (first at line {line}, which is used)")
            skipped.append({"path": f"{raw} (line {lineno})", "reason": reason})
            continue
        first[full] = (lineno, label)
        split = None
        if split_col:
            value = (row.get(split_col) or "").strip().lower()
            if value not in SPLIT_VALUES:
                raise DataError(f"{location}:{lineno}: split {value!r} is not one of train, val, test")
            split = SPLIT_VALUES[value]
        samples.append(Sample(key=raw, label=classes.index(label), path=full, split=split))
    return Dataset(classes=classes, samples=samples, root=str(csv_path), skipped=skipped)


SOURCE = DatasetSource(
    name="csv",
    load=load_csv_manifest,
    detect=lambda location: location.lower().endswith(".csv"),
    description="CSV manifest with path,label[,split] columns; paths relative to the CSV",
)


@hookimpl
def register_datasets(register):
    register(SOURCE)
