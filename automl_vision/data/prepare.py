"""From a dataset source's samples to validated, split, cached data in the run directory.

Steps, each recorded in ``data_report.json``:

1. read every image's header (format, size, mode) and refuse what is not an image or is
   a decompression bomb;
2. decode the rest once into the cache at the first resolution; files that fail here
   (truncated, corrupt) are skipped too;
3. split stratified into train / validation / test with the run's seed, unless the
   source fixed the splits; the split is stored in ``splits.json`` and reused on resume;
4. check that every split has every class, report duplicates across splits and class
   imbalance.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from automl_vision.data import cache as cache_mod
from automl_vision.data.images import ImageDecodeError, inspect, is_grey_mode
from automl_vision.rundir import DECODE_FAILURES, RunDir, read_json, write_json
from automl_vision.types import SPLITS, Dataset, DataError, Sample

DEFAULT_FRACTIONS = (0.70, 0.15, 0.15)
# how a dataset source starts the ``skipped`` reason of a file it was given twice with two labels
LABEL_CONFLICT = "labelling conflict"
IMBALANCE_RATIO = 10.0


@dataclass
class PreparedData:
    """Validated samples, their split, and access to cached pixels at any resolution."""

    run_dir: RunDir
    classes: list[str]
    samples: list[Sample]
    in_chans: int
    split_index: dict[str, np.ndarray]  # split name -> indices into ``samples``
    report: dict = field(default_factory=dict)

    @property
    def labels(self) -> np.ndarray:
        return np.asarray([s.label for s in self.samples], dtype=np.int64)

    def has_test(self) -> bool:
        return len(self.split_index.get("test", [])) > 0

    def images(self, image_size: int, progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """All valid samples at ``image_size``: ``uint8`` ``(N, H, W, C)`` (memory map)."""
        arr, _failures = cache_mod.load_or_build(
            self.samples, self.run_dir.cache_dir(image_size, self.in_chans), image_size, self.in_chans, progress=progress
        )
        return arr

    def gather(self, idx: np.ndarray, image_size: int, limit: int | None) -> np.ndarray:
        """Images ``idx`` at ``image_size``: in memory up to ``limit`` bytes, else memory-mapped."""
        return cache_mod.gather(self.images(image_size), idx, self.run_dir.cache_dir(image_size, self.in_chans), limit)

    def training_arrays(self, train_idx: np.ndarray, val_idx: np.ndarray, image_size: int,
                        log: Callable[[str], None] | None = None,
                        train_side: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The images a trainer needs, held in memory when they fit under :func:`cache.memory_limit`:
        the training images at ``train_side`` (``image_size`` unless given; larger for a network
        that cuts random-resized crops from them, training/augment.py ``train_side``), the
        validation images at ``image_size``.

        A split that does not fit is read from a memory-mapped file in the cache instead
        (and ``log`` says so), so a dataset larger than memory still trains.
        """
        limit, why = cache_mod.memory_limit()
        x_train = self.gather(train_idx, train_side or image_size, limit)
        left = None if limit is None else max(0, limit - (0 if isinstance(x_train, np.memmap) else x_train.nbytes))
        x_val = self.gather(val_idx, image_size, left)
        streamed = [name for name, x in (("training", x_train), ("validation", x_val)) if isinstance(x, np.memmap)]
        if streamed and log is not None:
            size = sum(x.nbytes for x in (x_train, x_val) if isinstance(x, np.memmap))
            log(f"{' and '.join(streamed)} images at {train_side or image_size}px ({size / 2**30:.2f} GiB) are read from a "
                f"memory-mapped file in the cache: more than {why}; set {cache_mod.MEMORY_ENV} to change the limit")
        return x_train, x_val

    def split_images(self, name: str, image_size: int) -> np.ndarray:
        """The images of split ``name`` at ``image_size``: from the cache of every image when one is built
        at that side (the sides trials train at), else decoded for that split alone and cached apart: a
        model's ``eval_size`` is needed for the validation and test images only, and decoding a large
        folder's every image again at the end of a search would cost its time budget minutes."""
        idx = self.split_index[name]
        if (self.run_dir.cache_dir(image_size, self.in_chans) / cache_mod.IMAGES).exists():
            return np.asarray(self.images(image_size)[idx])
        arr, _failures = cache_mod.load_or_build([self.samples[i] for i in idx],
                                                 self.run_dir.split_cache_dir(image_size, self.in_chans, name),
                                                 image_size, self.in_chans)
        return np.asarray(arr)

    def split(self, name: str, image_size: int) -> tuple[np.ndarray, np.ndarray]:
        return self.split_images(name, image_size), self.labels[self.split_index[name]]


def _file_digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _scan(samples: list[Sample]) -> tuple[list[Sample], list[dict], list[str], dict[str, str], list[dict]]:
    """Header pass: (valid samples, skipped, modes, digest by key, fixes)."""
    def one(s: Sample):
        if s.array is not None:
            arr = np.asarray(s.array)
            if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or min(arr.shape[:2]) < 1:
                return s, "in-memory image must be uint8 (H, W) or (H, W, C)", None, None, []
            grey = arr.ndim == 2 or arr.shape[2] == 1
            return s, None, "L" if grey else "RGB", hashlib.blake2b(arr.tobytes(), digest_size=16).hexdigest(), []
        try:
            if os.path.getsize(s.path) == 0:
                return s, "empty file (0 bytes)", None, None, []
            info = inspect(s.path)
            return s, None, info.mode, _file_digest(s.path), info.fixes(Path(s.path))
        except ImageDecodeError as exc:
            return s, str(exc), None, None, []
        except OSError as exc:
            return s, f"unreadable: {exc.strerror or exc}", None, None, []

    valid, skipped, modes, digests, fixed = [], [], [], {}, []
    for s, err, mode, digest, fixes in _map(one, samples):
        if err is not None:
            skipped.append({"path": s.key, "reason": err})
        else:
            valid.append(s)
            modes.append(mode)
            digests[s.key] = digest
            if fixes:
                fixed.append({"path": s.key, "fixes": fixes})
    return valid, skipped, modes, digests, fixed


def _map(fn, items):
    """``map`` over a thread pool that stops at once on Ctrl-C instead of finishing the queue."""
    pool = ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1)))
    try:
        yield from pool.map(fn, items)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _stat_key(sample: Sample) -> str | None:
    try:
        st = os.stat(sample.path)
    except (OSError, TypeError):
        return None
    return f"{st.st_size}:{st.st_mtime_ns}"


def _known_failures(run_dir: RunDir, valid: list[Sample]) -> dict[str, str]:
    """Files that failed to decode in an earlier run and have not changed since (key -> reason).

    Remembering them keeps a resumed search from decoding every image twice (once with
    the broken files, once without) just to find the same broken files again.
    """
    stored = read_json(run_dir.cache_root / DECODE_FAILURES) or {}
    out = {}
    for s in valid:
        rec = stored.get(s.key)
        if rec and s.path is not None and rec.get("stat") == _stat_key(s):
            out[s.key] = rec["reason"]
    return out


def stratified_split(labels: np.ndarray, fractions: tuple[float, float, float], seed: int,
                     groups: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Indices per split; every class with at least 3 images gets one in each split.

    ``groups`` (one id per image, e.g. its content digest) keeps the images of a group in
    one split: a file copied twice into a class folder is then never in training and in
    validation or test at once, where it would make them score what was memorised. Without
    groups, or when no two images of a class share one, the split is the plain one.
    """
    rng = np.random.default_rng(seed)
    out: dict[str, list[int]] = {k: [] for k in SPLITS}
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        rng.shuffle(idx)
        n = len(idx)
        n_test = int(round(n * fractions[2])) if fractions[2] > 0 else 0
        n_val = int(round(n * fractions[1]))
        if n >= 3:
            n_val = max(1, n_val)
            n_test = max(1, n_test) if fractions[2] > 0 else 0
        elif n == 2:
            n_val, n_test = 1, 0
        else:
            n_val, n_test = 0, 0
        n_train = n - n_val - n_test
        if n_train < 1 and n >= 3:
            n_train, n_test = 1, n - n_val - 1
        cuts = [n_train, n_train + n_val]
        if groups is not None:
            idx, cuts = _grouped(idx, np.asarray(groups)[idx], cuts)
        out["train"].extend(idx[: cuts[0]])
        out["val"].extend(idx[cuts[0] : cuts[1]])
        out["test"].extend(idx[cuts[1] :])
    return {k: np.sort(np.asarray(v, dtype=np.int64)) for k, v in out.items()}


def _grouped(idx: np.ndarray, ids: np.ndarray, cuts: list[int]) -> tuple[np.ndarray, list[int]]:
    """Reorder shuffled ``idx`` so that each group's images follow its first one, and move
    the two cuts (train | val | test) to the group boundaries nearest to them, keeping a
    group for every split the plain cuts gave images to."""
    positions: dict = {}
    for pos, g in enumerate(ids.tolist()):
        positions.setdefault(g, []).append(pos)
    n = len(idx)
    need_val, need_test = cuts[1] > cuts[0], cuts[1] < n
    if len(positions) == n or len(positions) < 1 + need_val + need_test:
        # no two images share a group: the plain split; too few distinct images for a
        # group in each split: the plain split too, and the data report warns of the leak
        return idx, cuts
    groups = list(positions.values())
    order = np.asarray([idx[p] for group in groups for p in group], dtype=idx.dtype)
    bounds = np.cumsum([0] + [len(g) for g in groups]).tolist()  # where a split may end
    last = len(groups)

    def nearest(target: int, lo: int, hi: int) -> int:
        """The boundary nearest to ``target`` among bounds[lo..hi] (indices of groups)."""
        return min(range(lo, hi + 1), key=lambda i: (abs(bounds[i] - target), i))

    # training always has an image; enough groups are left for the splits after each cut
    g0 = nearest(cuts[0], 1, last - need_val - need_test)
    g1 = nearest(cuts[1], g0 + need_val, last - need_test)
    return order, [bounds[g0], bounds[g1]]


def prepare(
    dataset: Dataset,
    run_dir: RunDir,
    image_size: int,
    seed: int = 0,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    log: Callable[[str], None] = lambda msg: None,
) -> PreparedData:
    """Validate, cache and split ``dataset`` into ``run_dir``. Raises DataError."""
    classes = list(dataset.classes)
    if not dataset.samples:
        where = dataset.root or "the data location"
        raise DataError(
            f"no image found in {where}. Expected one folder per class (DATA_DIR/<class>/<image>) "
            "or train/ and val/ folders that each hold one folder per class."
        )
    skipped = list(dataset.skipped)
    valid, bad, modes, digests, fixed = _scan(list(dataset.samples))
    skipped += bad
    if not valid:
        write_json(run_dir.data_report, {"root": dataset.root, "classes": classes, "num_images": 0,
                                         "num_skipped": len(skipped), "skipped": skipped, "notes": list(dataset.notes)})
        raise DataError(
            f"none of the {len(dataset.samples)} files in {dataset.root} is a readable image; the reason for "
            f"each file is in {run_dir.data_report}"
        )
    in_chans = 1 if all(is_grey_mode(m) for m in modes) else 3
    known = _known_failures(run_dir, valid)
    if known:
        skipped += [{"path": k, "reason": r} for k, r in known.items()]
        valid = [s for s in valid if s.key not in known]
    log(f"decoding {len(valid)} images at {image_size}px ({'greyscale' if in_chans == 1 else 'colour'}) into the cache")
    _arr, failures = cache_mod.load_or_build(valid, run_dir.cache_dir(image_size, in_chans), image_size, in_chans)
    if failures:
        memo = {k: {"stat": _stat_key(s), "reason": r} for k, r, s in
                ((s.key, known[s.key], s) for s in dataset.samples if s.key in known)}
        for i, reason in sorted(failures.items()):
            skipped.append({"path": valid[i].key, "reason": reason})
            memo[valid[i].key] = {"stat": _stat_key(valid[i]), "reason": reason}
        write_json(run_dir.cache_root / DECODE_FAILURES, memo)
        keep = [s for i, s in enumerate(valid) if i not in failures]
        # the cache is keyed by the sample list, so rebuild it for the kept samples
        valid = keep
        cache_mod.load_or_build(valid, run_dir.cache_dir(image_size, in_chans), image_size, in_chans)
    fixed = [f for f in fixed if f["path"] in {s.key for s in valid}]

    # A class with no usable image cannot be learned or evaluated: drop it and say so.
    labels = np.asarray([s.label for s in valid], dtype=np.int64)
    present = sorted(set(labels.tolist()))
    dropped = [{"class": c, "reason": "no usable image in its folder"} for i, c in enumerate(classes) if i not in present]
    if dropped and len(present) >= 2:
        remap = {old: new for new, old in enumerate(present)}
        valid = [dataclasses.replace(s, label=remap[s.label]) for s in valid]
        classes = [classes[i] for i in present]
        labels = np.asarray([s.label for s in valid], dtype=np.int64)
        present = list(range(len(classes)))
    if len(present) < 2:
        only = classes[present[0]] if present else "none"
        raise DataError(
            f"{dataset.root}: found only one class ({only}) with readable images; classification needs at "
            "least two class folders, each with images."
        )
    too_small = [classes[c] for c, n in sorted(Counter(labels.tolist()).items()) if n < 2]
    if too_small and not any(s.split for s in valid):
        raise DataError(
            f"{dataset.root}: class(es) {', '.join(too_small)} have a single usable image; every class needs at "
            "least 2 (one to train on, one to validate with). Add images or remove the folder."
        )

    split_index = _splits(valid, labels, run_dir, seed, fractions, digests)
    for name in ("train", "val"):
        missing = sorted(set(present) - set(labels[split_index[name]].tolist()))
        if missing:
            names = ", ".join(classes[m] for m in missing)
            raise DataError(
                f"split {name!r} has no image of class(es) {names}. Every class needs images in train and "
                "validation: add images, or let automl-vision split a class-per-folder tree itself."
            )
    if len(split_index["test"]):
        missing = sorted(set(present) - set(labels[split_index["test"]].tolist()))
        if missing:
            raise DataError(
                f"split 'test' has no image of class(es) {', '.join(classes[m] for m in missing)}; "
                "add test images for every class or remove the test/ folder."
            )

    report = _report(dataset, valid, labels, classes, split_index, skipped, digests, in_chans, image_size, seed, fractions)
    report["fixed"] = fixed
    report["dropped_classes"] = dropped
    if dropped:
        report["warnings"].append(
            f"class folder(s) with no usable image, left out of the classes: {', '.join(d['class'] for d in dropped)}"
        )
    write_json(run_dir.data_report, report)
    kept = sum(1 for d in report["duplicates"] if not d["leak"])
    if kept:
        log(f"note: {kept} group(s) of identical files, each kept in one split (listed in data_report.json)")
    return PreparedData(run_dir, classes, valid, in_chans, split_index, report)


def _splits(valid: list[Sample], labels: np.ndarray, run_dir: RunDir, seed: int, fractions,
            digests: dict[str, str | None]) -> dict[str, np.ndarray]:
    keys = [s.key for s in valid]
    stored = run_dir.read_splits()
    if stored and set(stored.get("keys", [])) == set(keys):
        pos = {k: i for i, k in enumerate(keys)}
        return {name: np.asarray(sorted(pos[k] for k in stored["splits"][name]), dtype=np.int64) for name in SPLITS}
    fixed = {s.split for s in valid}
    if fixed - {None}:
        if None in fixed:
            raise DataError("the dataset source fixed the split of some samples but not others")
        index = {name: np.flatnonzero(np.asarray([s.split == name for s in valid])) for name in SPLITS}
        if len(index["val"]) == 0:
            raise DataError("the data has a train split but no validation split (val/, valid/ or validation/)")
    else:
        # identical files (same bytes) stay in one split: no copy of a training image is validated on
        groups = np.asarray([digests.get(s.key) or s.key for s in valid], dtype=object)
        index = stratified_split(labels, fractions, seed, groups=groups)
    write_json(
        run_dir.splits,
        {"seed": seed, "keys": keys, "splits": {name: [keys[i] for i in index[name]] for name in SPLITS}},
    )
    return index


def _report(dataset, valid, labels, classes, split_index, skipped, digests, in_chans, image_size, seed, fractions) -> dict:
    counts = {
        name: {classes[c]: int(n) for c, n in sorted(Counter(labels[idx].tolist()).items())}
        for name, idx in split_index.items()
    }
    split_of = {}
    for name, idx in split_index.items():
        for i in idx:
            split_of[valid[i].key] = name
    by_digest: dict[str, list[str]] = {}
    for key, d in digests.items():
        if key in split_of:
            by_digest.setdefault(d, []).append(key)
    label_of = {s.key: classes[s.label] for s in valid}
    duplicates = []
    for keys in by_digest.values():
        if len(keys) > 1:
            splits = sorted({split_of[k] for k in keys})
            names = sorted({label_of[k] for k in keys})
            # the same bytes under two classes is a labelling conflict, whichever splits they are in
            duplicates.append({"files": sorted(keys), "splits": splits, "classes": names,
                               "leak": len(splits) > 1 or len(names) > 1})
    totals = Counter(labels.tolist())
    warnings = []
    if totals and max(totals.values()) / max(1, min(totals.values())) >= IMBALANCE_RATIO:
        warnings.append(
            f"extreme class imbalance: largest class has {max(totals.values())} images, smallest "
            f"{min(totals.values())}; class-weighted loss is part of the search and balanced accuracy is reported"
        )
    leaks = [d for d in duplicates if len(d["splits"]) > 1]
    if leaks:
        warnings.append(f"{len(leaks)} group(s) of identical images appear in more than one split (validation leaks into training)")
    conflicts = [d for d in duplicates if len(d["classes"]) > 1]
    if conflicts:
        warnings.append(
            f"labelling conflict: {len(conflicts)} group(s) of identical images are labelled as different classes "
            f"(e.g. {' and '.join(conflicts[0]['files'][:2])}); keep each image in one class (listed under "
            "duplicates in data_report.json)"
        )
    listed_twice = [s for s in skipped if s["reason"].startswith(LABEL_CONFLICT)]
    if listed_twice:
        warnings.append(
            f"labelling conflict: {len(listed_twice)} file(s) listed again with another label (e.g. "
            f"{listed_twice[0]['path']}); the first listing is used (listed under skipped in data_report.json)"
        )
    empty = [c for i, c in enumerate(classes) if i not in totals]
    if empty:
        warnings.append(f"class folder(s) with no usable image: {', '.join(empty)}")
    return {
        "root": dataset.root,
        "classes": classes,
        "in_chans": in_chans,
        "image_size": image_size,
        "num_images": len(valid),
        "num_skipped": len(skipped),
        "split_seed": seed,
        "split_fractions": list(fractions),
        "split_source": "fixed by the data" if any(s.split for s in valid) else "stratified by automl-vision",
        "counts": counts,
        "skipped": skipped,
        "duplicates": duplicates,
        "warnings": warnings,
        "notes": list(dataset.notes),
    }


def reload_prepared(run_dir: RunDir, pm, location: str | None = None) -> PreparedData:
    """The run's samples, splits and image cache, rebuilt from the run directory and its data.

    Every later step reads the data this way (``ensemble``, a refit, a joining worker):
    ``splits.json`` lists the valid samples in cache order, so listing the dataset is
    enough; the pixels come from the cache the search built. The data is listed again by
    the dataset source that read it, at the location stored in ``run.json`` (``data.location``:
    ``NAME:LOCATION``, a relative path made absolute, see :func:`~automl_vision.data.sources.reloadable`),
    so a plugin's source works from any working directory whatever it puts in
    ``Dataset.root``; ``location`` overrides it (``worker --data``, the data moved).
    Labels follow the report's classes (a class folder without a usable image is left
    out by :func:`prepare`). Nothing in the run directory is rewritten.

    Raises:
        UsageError: the search has not prepared its data, or the data is gone or changed.
    """
    from automl_vision.data.sources import load_dataset
    from automl_vision.types import UsageError

    run = run_dir.read_run() or {}
    report = run_dir.read_data_report()
    stored = run_dir.read_splits()
    if not report or not stored:
        raise UsageError(f"{run_dir.path}: the search has not prepared its data there (no data_report.json or "
                         "splits.json); pass the run directory the search wrote")
    if not location:
        recorded = (run.get("data") or {}).get("location")
        typed = (run.get("settings") or {}).get("data")
        # runs from before data.location: what was typed, else the root the source reported
        location = recorded or (typed if typed and os.path.exists(typed) else report.get("root") or typed or "")
    try:
        dataset = load_dataset(location, pm)
    except UsageError as exc:  # DataError too
        raise UsageError(f"this step re-reads the run's images from {location!r}, but: {exc}") from None
    by_key = {s.key: s for s in dataset.samples}
    missing = [k for k in stored["keys"] if k not in by_key]
    if missing:
        raise UsageError(f"{len(missing)} image(s) used by the run are gone from {location} (e.g. {missing[0]}); "
                         "restore the data the search was run on (or give where it is now), or start a new search")
    index_of = {c: i for i, c in enumerate(report["classes"])}
    samples = [dataclasses.replace(by_key[k], label=index_of[dataset.classes[by_key[k].label]]) for k in stored["keys"]]
    pos = {k: i for i, k in enumerate(stored["keys"])}
    split_index = {name: np.asarray(sorted(pos[k] for k in stored["splits"].get(name, [])), dtype=np.int64)
                   for name in SPLITS}
    return PreparedData(run_dir, list(report["classes"]), samples, int(report["in_chans"]), split_index, report)
