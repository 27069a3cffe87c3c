"""Built-in dataset source: image folders.

Two layouts are understood:

* class-per-folder: ``ROOT/<class>/<image>``; automl-vision splits it stratified;
* pre-split: ``ROOT/train/<class>/...``, ``ROOT/val/`` (or ``valid/``, ``validation/``)
  and optionally ``ROOT/test/``, each class-per-folder.

Every regular, non-hidden file is a candidate (an image without extension is fine);
whether it really is an image is decided when it is decoded. Every other entry the scan
passes over is listed in the dataset's ``skipped`` with the reason: hidden files and
folders (``.git/``, ``__MACOSX/``, ``.DS_Store``), loose files outside a class folder,
broken symlinks, folders that cannot be read. Symbolic links are followed when they stay
inside ROOT; one pointing outside it, to a folder above it or already read (a loop), or
into another class's folder (its images would get two labels) is refused.
"""

from __future__ import annotations

import os
from pathlib import Path

from automl_vision.hookspecs import hookimpl
from automl_vision.types import Dataset, DatasetSource, DataError, Sample

SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
IGNORED_NAMES = {"Thumbs.db", "desktop.ini", "__MACOSX"}
OUTSIDE = "symlink points outside the data folder (refused)"
BROKEN = "broken symlink (its target does not exist)"
LOOSE = "file at the top level, outside any class folder"


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name in IGNORED_NAMES


class _Scan:
    """One walk over ROOT: every entry it passes over becomes a file to read or a ``skipped`` record."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root_real = root.resolve()
        self.skipped: list[dict] = []
        self.notes: list[str] = []
        self.visited: set[Path] = set()  # every folder read so far (real paths): the root and splits first
        self.class_dirs: set[Path] = set()  # real paths of every class folder (of every split)

    def skip(self, path: Path, reason: str) -> None:
        self.skipped.append({"path": str(path.relative_to(self.root)), "reason": reason})

    def _inside(self, real: Path) -> bool:
        return real == self.root_real or self.root_real in real.parents

    def folders(self, folder: Path) -> list[Path]:
        """The non-hidden sub-folders of ``folder``; every other entry is reported as skipped."""
        self.visited.add(folder.resolve())
        out = []
        for p in sorted(folder.iterdir(), key=lambda p: p.name):
            if _is_hidden(p.name):
                self.skip(p, "hidden folder" if p.is_dir() else "hidden or system file")
            elif p.is_dir():
                out.append(p)
            elif p.is_symlink() and not p.exists():
                self.skip(p, BROKEN)
            else:
                self.skip(p, LOOSE if p.is_file() else "not a regular file")
        return out

    def _refused_folder(self, real: Path, class_real: Path) -> str | None:
        """Why the folder at ``real``, reached from the class folder ``class_real``, is not read."""
        if not self._inside(real):
            return OUTSIDE
        if real in self.visited or any(real in c.parents for c in self.class_dirs):
            # a link to a folder read before, or above a class folder: following it would never
            # end, or would read every other class's images again under this class's label
            return "symlink loop (folder already read)"
        owners = [c for c in self.class_dirs if c == real or c in real.parents]
        owner = max(owners, key=lambda c: len(c.parts), default=class_real)  # the innermost class folder
        if owner != class_real:
            return "symlink into another class folder (refused: its images would get two labels)"
        return None

    def walk(self, class_dir: Path) -> list[Path]:
        """The files to read under one class folder, following links that stay inside it."""
        class_real = class_dir.resolve()
        files: list[Path] = []

        def unreadable(exc: OSError) -> None:
            self.skip(Path(exc.filename), f"unreadable folder ({exc.strerror or exc})")

        for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True, onerror=unreadable):
            here = Path(dirpath)
            real = here.resolve()
            refused = self._refused_folder(real, class_real)
            if refused:
                self.skip(here, refused)
                dirnames[:] = []
                continue
            self.visited.add(real)
            dirnames.sort()
            for d in [d for d in dirnames if _is_hidden(d)]:
                dirnames.remove(d)
                self.skip(here / d, "hidden folder")
            for name in sorted(filenames):
                path = here / name
                if _is_hidden(name):
                    self.skip(path, "hidden or system file")
                    continue
                if path.is_symlink():
                    target = path.resolve()
                    if not target.exists():
                        self.skip(path, BROKEN)
                        continue
                    if not self._inside(target):
                        self.skip(path, OUTSIDE)
                        continue
                    self.notes.append(f"symlink followed: {path.relative_to(self.root)}")
                if not path.is_file():
                    self.skip(path, "not a regular file")
                    continue
                files.append(path)
        return files


def _split_folders(location: str, subdirs: list[Path]) -> dict[str, Path]:
    """``{split: folder}`` of a pre-split tree. Raises DataError when two folders claim one split."""
    by_split: dict[str, list[Path]] = {}
    for p in subdirs:
        if p.name.lower() in SPLIT_NAMES:
            by_split.setdefault(SPLIT_NAMES[p.name.lower()], []).append(p)
    for split, folders in by_split.items():
        if len(folders) > 1:
            names = " and ".join(f"{p.name}/" for p in folders)
            raise DataError(
                f"{location}: both {names} are there, so which holds the {split} split is ambiguous; merge them "
                f"into one folder (or rename one) and run again."
            )
    return {split: folders[0] for split, folders in by_split.items()}


def load_image_folder(location: str) -> Dataset:
    root = Path(location).expanduser()
    if not root.exists():
        raise DataError(f"data folder {location!r} does not exist. Pass a folder of class sub-folders of images.")
    if not root.is_dir():
        raise DataError(f"{location!r} is a file, not a folder. Pass a folder of class sub-folders of images (or a .csv manifest).")
    scan = _Scan(root)
    subdirs = scan.folders(root)
    split_dirs = _split_folders(location, subdirs)
    if "train" in split_dirs:
        if "val" not in split_dirs:
            raise DataError(
                f"{location}: found train/ but no validation folder; add val/ (or valid/, validation/) "
                "with the same class folders, or use a class-per-folder tree and let automl-vision split it."
            )
        for p in subdirs:
            if p not in split_dirs.values():
                scan.skip(p, "folder beside train/ and val/ that is not a split (train, val, test)")
        per_split = {split: scan.folders(folder) for split, folder in split_dirs.items()}
        classes = sorted({c.name for c in per_split["train"]})
        if not classes:
            raise DataError(f"{split_dirs['train']}: no class folders inside train/")
        for split, cdirs in per_split.items():
            for cdir in cdirs:
                if cdir.name not in classes:
                    raise DataError(
                        f"{cdir}: class {cdir.name!r} is in {split_dirs[split].name}/ but not in train/; every "
                        "class must have training images."
                    )
        scan.class_dirs = {c.resolve() for cdirs in per_split.values() for c in cdirs}
        samples = [
            Sample(key=str(f.relative_to(root)), label=classes.index(cdir.name), path=f, split=split)
            for split, cdirs in per_split.items() for cdir in cdirs for f in scan.walk(cdir)
        ]
        return Dataset(classes=classes, samples=samples, root=str(root), skipped=scan.skipped, notes=scan.notes)

    classes = [p.name for p in subdirs]
    scan.class_dirs = {p.resolve() for p in subdirs}
    samples = [Sample(key=str(f.relative_to(root)), label=label, path=f)
               for label, cdir in enumerate(subdirs) for f in scan.walk(cdir)]
    loose = [s for s in scan.skipped if s["reason"] == LOOSE]
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
    return Dataset(classes=classes, samples=samples, root=str(root), skipped=scan.skipped, notes=scan.notes)


SOURCE = DatasetSource(
    name="folder",
    load=load_image_folder,
    # a folder, or a path that does not exist yet (then load says so); an existing file is left
    # to a source that reads files (a plugin's .npz, the CSV manifest)
    detect=lambda location: not location.lower().endswith(".csv") and not os.path.isfile(location),
    description="class-per-folder image tree, or train/ val/ [test/] folders of class folders",
)


@hookimpl
def register_datasets(register):
    register(SOURCE)
