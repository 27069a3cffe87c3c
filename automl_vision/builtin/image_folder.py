"""Built-in dataset source: image folders.

Two layouts are understood:

* class-per-folder: ``ROOT/<class>/<image>``; automl-vision splits it stratified;
* pre-split: ``ROOT/train/<class>/...``, ``ROOT/val/`` (or ``valid/``, ``validation/``)
  and optionally ``ROOT/test/``, each class-per-folder.

Every regular, non-hidden file is a candidate (an image without extension is fine);
whether it really is an image is decided when it is decoded. Hidden files and
``.DS_Store`` are skipped and listed. Symbolic links are followed when they stay inside
ROOT and refused when they point outside it.
"""

from __future__ import annotations

import os
from pathlib import Path

from automl_vision.hookspecs import hookimpl
from automl_vision.types import Dataset, DatasetSource, DataError, Sample

SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
IGNORED_NAMES = {"Thumbs.db", "desktop.ini", "__MACOSX"}


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name in IGNORED_NAMES


def _walk_class(class_dir: Path, root_real: Path, root: Path, skipped: list, notes: list) -> list[Path]:
    files: list[Path] = []
    visited: set[Path] = set()
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
        here = Path(dirpath)
        real_here = here.resolve()
        if real_here != root_real and root_real not in real_here.parents:
            skipped.append({"path": str(here.relative_to(root)), "reason": "symlink points outside the data folder (refused)"})
            dirnames[:] = []
            continue
        if real_here in visited:
            # a link back to a folder already walked: following it again would never end
            skipped.append({"path": str(here.relative_to(root)), "reason": "symlink loop (folder already read)"})
            dirnames[:] = []
            continue
        visited.add(real_here)
        for d in list(dirnames):
            if _is_hidden(d):
                dirnames.remove(d)
                skipped.append({"path": str((here / d).relative_to(root)), "reason": "hidden folder"})
        for name in sorted(filenames):
            path = here / name
            rel = str(path.relative_to(root))
            if _is_hidden(name):
                skipped.append({"path": rel, "reason": "hidden or system file"})
                continue
            if path.is_symlink():
                target = path.resolve()
                if not target.exists():
                    skipped.append({"path": rel, "reason": "broken symlink (its target does not exist)"})
                    continue
                if root_real not in target.parents:
                    skipped.append({"path": rel, "reason": "symlink points outside the data folder (refused)"})
                    continue
                notes.append(f"symlink followed: {rel}")
            if not path.is_file():
                skipped.append({"path": rel, "reason": "not a regular file"})
                continue
            files.append(path)
    return files


def _class_dirs(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and not _is_hidden(p.name)), key=lambda p: p.name)


def load_image_folder(location: str) -> Dataset:
    root = Path(location).expanduser()
    if not root.exists():
        raise DataError(f"data folder {location!r} does not exist. Pass a folder of class sub-folders of images.")
    if not root.is_dir():
        raise DataError(f"{location!r} is a file, not a folder. Pass a folder of class sub-folders of images (or a .csv manifest).")
    root_real = root.resolve()
    skipped: list[dict] = []
    notes: list[str] = []
    subdirs = _class_dirs(root)
    split_dirs = {SPLIT_NAMES[p.name.lower()]: p for p in subdirs if p.name.lower() in SPLIT_NAMES}
    if "train" in split_dirs:
        if "val" not in split_dirs:
            raise DataError(
                f"{location}: found train/ but no validation folder; add val/ (or valid/, validation/) "
                "with the same class folders, or use a class-per-folder tree and let automl-vision split it."
            )
        classes = sorted({c.name for c in _class_dirs(split_dirs["train"])})
        if not classes:
            raise DataError(f"{split_dirs['train']}: no class folders inside train/")
        samples: list[Sample] = []
        for split, folder in split_dirs.items():
            for cdir in _class_dirs(folder):
                if cdir.name not in classes:
                    raise DataError(
                        f"{cdir}: class {cdir.name!r} is in {folder.name}/ but not in train/; every class "
                        "must have training images."
                    )
                label = classes.index(cdir.name)
                for f in _walk_class(cdir, root_real, root, skipped, notes):
                    samples.append(Sample(key=str(f.relative_to(root)), label=label, path=f, split=split))
        return Dataset(classes=classes, samples=samples, root=str(root), skipped=skipped, notes=notes)

    classes = [p.name for p in subdirs]
    samples = []
    for label, cdir in enumerate(subdirs):
        for f in _walk_class(cdir, root_real, root, skipped, notes):
            samples.append(Sample(key=str(f.relative_to(root)), label=label, path=f))
    loose = [p for p in root.iterdir() if p.is_file() and not _is_hidden(p.name)]
    for p in loose:
        skipped.append({"path": p.name, "reason": "file at the top level, outside any class folder"})
    if not classes and loose:
        raise DataError(
            f"{location}: images must be in one folder per class (DATA_DIR/<class>/<image>); found "
            f"{len(loose)} file(s) at the top level and no class folder."
        )
    if len(classes) == 1:
        raise DataError(
            f"{location}: found one class folder ({classes[0]!r}); classification needs at least two "
            "class folders, each with images."
        )
    return Dataset(classes=classes, samples=samples, root=str(root), skipped=skipped, notes=notes)


SOURCE = DatasetSource(
    name="folder",
    load=load_image_folder,
    detect=lambda location: not location.lower().endswith(".csv"),
    description="class-per-folder image tree, or train/ val/ [test/] folders of class folders",
)


@hookimpl
def register_datasets(register):
    register(SOURCE)
