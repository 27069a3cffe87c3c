"""Build the small real-photo benchmark sets used by ``bench_small_data.py``.

Each set is laid out as ``<out>/<name>/{train,eval}/<class>/<image>`` and comes from a
public GitHub repository that holds the photos as ordinary files. Nothing is downloaded
here: the script reads a local git copy of each repository (a bare git directory or a
clone) and copies the photos out of the pinned commit.

Getting the repositories (once, by hand; any clone at the pinned commit will do)::

    git clone --bare https://github.com/zhangtao7750/syn                                 mirrors/zhangtao7750+syn/repo
    git clone --bare https://github.com/JoelOscarsson/dl-assignment                      mirrors/JoelOscarsson+dl-assignment/repo
    git clone --bare https://github.com/ardamavi/Sign-Language-Digits-Dataset            mirrors/ardamavi+Sign-Language-Digits-Dataset/repo
    git clone --bare https://github.com/bungabudia9-spec/H1D024006_PraktikumKB_Pertemuan8 mirrors/bungabudia9-spec+H1D024006_PraktikumKB_Pertemuan8/repo
    git clone --bare https://github.com/afroozsheikh/Intel-Image-Classifier              mirrors/afroozsheikh+Intel-Image-Classifier/repo
    git clone --bare https://github.com/congduytran12/Trash-Classification-              mirrors/congduytran12+Trash-Classification-/repo
    git clone --bare https://github.com/995114879/17flowers                              mirrors/995114879+17flowers/repo
    git clone --bare https://github.com/dsw88/cs601r-project1-dataset                    mirrors/dsw88+cs601r-project1-dataset/repo

then::

    python benchmarks/prepare_small_data.py --mirror-root mirrors --out /work/bench-data \\
        --cats-dogs ../shared/data/cats-vs-dogs

``--mirror NAME=GITDIR`` points one set at another git directory. ``--only a,b`` builds
some sets. Without ``--force`` a set whose folder exists is left alone.

What is done to every set (deterministic: the same inputs give the same files):

* only ``.jpg/.jpeg/.png`` files under the set's folder in the repository are taken
  (per-set exclusions are listed in ``SOURCES``, e.g. the augmented ``aug_*`` copies in
  the flowers repository);
* exact duplicates (same git blob) are kept once; a blob found under two different
  classes is dropped altogether (its label is ambiguous);
* every file must open with Pillow (``Image.open(...).load()``); those that do not are
  dropped and counted;
* split: where the repository already has one (train/val or train/test folders), its
  held-out part becomes ``eval``; otherwise a stratified 80/20 split: per class, sorted
  file names, ``numpy.random.RandomState(0).permutation`` (one generator, classes in
  sorted order), the first ``round(0.2 * n)`` go to ``eval``;
* sets larger than ``--max-train`` (3,000) training or ``--max-eval`` (1,000) evaluation
  images are subsampled, stratified (per-class quotas proportional to the class sizes,
  largest remainders), with ``RandomState(0)``;
* every class must keep at least 20 training images (checked; the build fails otherwise).

A ``manifest.json`` in every set folder records the source, the commit, the counts and
the typical image size; ``<out>/DATASETS.md`` is written from the manifests.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

IMAGE_EXTS = {".jpg", ".jpeg", ".png"}
MIN_TRAIN_PER_CLASS = 20

# name -> where the photos are and how they are split. ``layout``:
#   "split": <root>/<train_dir>/<class>/* and <root>/<eval_dir>/<class>/* (the repository's own split)
#   "flat":  <root>/<class>/* (split here, stratified 80/20 with seed 0)
#   "numbered": <root>/<file> with no class folders; the class comes from the number in the file name
#            (``number_re``, group 1): ``classes[(number - 1) // per_class]``, i.e. ``per_class``
#            consecutive numbers per class in the order of ``classes`` (the Oxford 17 Flowers layout,
#            image_0001..image_1360.jpg); split here like "flat". With ``per_class: 1`` the number is the
#            class number itself (1 -> ``classes[0]``), e.g. a class prefix of the file name
SOURCES: dict[str, dict[str, Any]] = {
    "hymenoptera": {
        "repo": "zhangtao7750/syn",
        "commit": "f0503091488f67b6809a6da2eaa43c25f2f277fc",
        "root": "hymenoptera_data",
        "layout": "split", "train_dir": "train", "eval_dir": "val",
        "exclude": [],
        "licence": "not stated (the ants/bees set of the PyTorch transfer-learning tutorial, a small ImageNet subset)",
        "about": "ants vs bees photos, the classic 'hymenoptera_data' of the PyTorch transfer-learning tutorial",
    },
    "flowers": {
        "repo": "JoelOscarsson/dl-assignment",
        "commit": "05bf18b10cd76b8225e93e93beef1cb94c77cfbb",
        "root": "data/flowers",
        "layout": "flat",
        "exclude_prefix": ["aug_"],  # augmented copies the repository added to balance the classes
        "licence": "not stated (Kaggle 'Flowers Recognition', photos from Flickr/Google/Yandex)",
        "about": "the Kaggle 'Flowers Recognition' photos (5 classes), stored by the repository resized to 227x227; "
                 "its augmented 'aug_*' copies are left out",
    },
    "sign-digits": {
        "repo": "ardamavi/Sign-Language-Digits-Dataset",
        "commit": "4b09433ef9d5c60602e8805bb54b8aa2428527f8",
        "root": "Dataset",
        "layout": "flat",
        "licence": "Apache-2.0 (LICENSE file of the repository)",
        "about": "Turkey Ankara Ayranci Anadolu High School's Sign Language Digits: 100x100 RGB photos of hands "
                 "showing the digits 0-9 (218 students, ~10 photos each; the random split mixes students)",
    },
    "rock-paper-scissors": {
        "repo": "bungabudia9-spec/H1D024006_PraktikumKB_Pertemuan8",
        "commit": "a0ca246b3dcbd0b5664f66954e3b360f5ec7f7fa",
        "root": "rps-cv-images",
        "layout": "flat",
        "licence": "CC BY-SA 4.0 (the original dataset by Julien de la Bruere-Terreault, DrGFreeman/rps-cv)",
        "about": "real photos of rock/paper/scissors hand gestures on a green background, 300x200 PNG "
                 "(the Kaggle 'drgfreeman/rockpaperscissors' set, complete)",
    },
    "intel-scenes": {
        "repo": "afroozsheikh/Intel-Image-Classifier",
        "commit": "268f8fc38fb3f7307c1861d619ee99ff4158a3f5",
        "root": "",
        "layout": "split", "train_dir": "train", "eval_dir": "test",
        "licence": "not stated (Intel Image Classification, Kaggle puneet6060)",
        "about": "natural scene photos: buildings, forest, glacier, mountain, sea, street (Kaggle's 150x150 "
                 "photos, stored by the repository resized to 100x100; it holds 8,741 train / 2,158 test, "
                 "subsampled here)",
    },
    "trashnet": {
        "repo": "congduytran12/Trash-Classification-",
        "commit": "00212f2c18dcdb9045c74481eaae5baaf72537df",
        "root": "dataset-resized",
        "layout": "flat",
        "licence": "not stated in this copy (TrashNet, Yang & Thung 2016, github.com/garythung/trashnet, MIT)",
        "about": "TrashNet 'dataset-resized': photos (384x512 as stored) of single pieces of waste on a white board: "
                 "cardboard, glass, metal, paper, plastic, trash",
    },
    "flowers17": {
        "repo": "995114879/17flowers",
        "commit": "876e29c6941fa22981238f99fa5fe704f70e379f",
        # the original JPEGs of 17flowers.tgz; the repository's datas/17flowers/c*/ and
        # 17flowers_traintest/ hold the same photos re-saved at a higher JPEG quality (larger files), not used
        "root": "17flowers",
        "layout": "numbered", "number_re": r"image_(\d{4})\.jpg", "per_class": 80,
        # the dataset's class order (80 consecutive images each)
        "classes": ["daffodil", "snowdrop", "lily_valley", "bluebell", "crocus", "iris", "tigerlily", "tulip",
                    "fritillary", "sunflower", "daisy", "colts_foot", "dandelion", "cowslip", "buttercup",
                    "windflower", "pansy"],
        "licence": "not stated (Oxford VGG 17 Category Flower Dataset, Nilsback & Zisserman 2006; photos from the web)",
        "about": "the Oxford 17 Category Flower Dataset: 80 photos of each of 17 common UK flower species "
                 "(shorter side about 500 px), labelled from the image numbers; the official data splits are not used",
    },
    "leeds-butterflies": {
        "repo": "dsw88/cs601r-project1-dataset",
        "commit": "b01a8ebbd54c247e99699d3ff2576a63ff414549",
        # the Leeds Butterfly Dataset as packaged for a course (resized to at most 500 px wide); the repository's
        # butterflies/segmentations/ masks and its birds/ folder (a CUB-200 sample, ~4 photos a class) are not used
        "root": "dataset/butterflies/images",
        # file names are <3-digit category ID><4-digit sequence number>.png (0010001.png); the category ID is the
        # class: per_class 1 maps ID 1..10 to classes[0..9]
        "layout": "numbered", "number_re": r"(\d{3})\d{4}\.png", "per_class": 1,
        # the dataset's category order (001 Danaus plexippus, 002 Heliconius charitonius, 003 Heliconius erato,
        # 004 Junonia coenia, 005 Lycaena phlaeas, 006 Nymphalis antiopa, 007 Papilio cresphontes,
        # 008 Pieris rapae, 009 Vanessa atalanta, 010 Vanessa cardui), by their common names (line 2 of the
        # repository's dataset/butterflies/descriptions/<ID>.txt)
        "classes": ["monarch", "zebra_longwing", "crimson_patched_longwing", "common_buckeye", "american_copper",
                    "mourning_cloak", "giant_swallowtail", "cabbage_white", "red_admiral", "painted_lady"],
        "licence": "not stated (LICENSE.txt is empty; the README asks for learning use only, no commercial use "
                   "without the dataset creators' permission; Leeds Butterfly Dataset, Wang, Markert & Everingham, "
                   "BMVC 2009, photos from Google Images)",
        "about": "the Leeds Butterfly Dataset: 832 photos of 10 butterfly species (55-100 each), "
                 "collected from Google Images; PNG, resized by the repository to at most 500 px wide; labelled "
                 "from the category prefix of the file names",
    },
}
CATS_DOGS_ABOUT = ("1,802 Dogs-vs-Cats photos (subset of the Kaggle/Asirra set) from "
                   "beyondcodesandalgos/Image_Classifier, as kept in the project's shared/data/cats-vs-dogs")


# --------------------------------------------------------------------------------------
# git access
# --------------------------------------------------------------------------------------
def find_git_dir(mirror_root: Path, repo: str) -> Path | None:
    base = mirror_root / repo.replace("/", "+")
    for cand in (base / "repo" / ".git", base / "repo", base / ".git", base):
        if (cand / "HEAD").is_file() and (cand / "objects").is_dir():
            return cand
    return None


def git(git_dir: Path, *args: str, input: bytes | None = None) -> bytes:
    return subprocess.run(["git", f"--git-dir={git_dir}", *args], input=input, check=True,
                          capture_output=True).stdout


def resolve_commit(git_dir: Path, wanted: str) -> tuple[str, bool]:
    """The pinned commit when the copy has it, else HEAD (with a warning)."""
    try:
        git(git_dir, "cat-file", "-e", f"{wanted}^{{commit}}")
        return wanted, True
    except subprocess.CalledProcessError:
        head = git(git_dir, "rev-parse", "HEAD").decode().strip()
        return head, False


def list_tree(git_dir: Path, commit: str, root: str) -> list[tuple[str, str, int]]:
    """(path, blob sha, size) of every blob under ``root``."""
    args = ["ls-tree", "-r", "-l", "-z", commit]
    if root:
        args += ["--", root.rstrip("/") + "/"]
    out = []
    for rec in git(git_dir, *args).split(b"\0"):
        if not rec:
            continue
        meta, path = rec.split(b"\t", 1)
        mode, kind, sha, size = meta.split()
        if kind != b"blob":
            continue
        out.append((path.decode("utf-8", "surrogateescape"), sha.decode(), int(size) if size != b"-" else 0))
    return out


class BlobReader:
    """``git cat-file --batch``: one process for all the blobs of a set."""

    def __init__(self, git_dir: Path):
        self.proc = subprocess.Popen(["git", f"--git-dir={git_dir}", "cat-file", "--batch"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def read(self, sha: str) -> bytes:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(sha.encode() + b"\n")
        self.proc.stdin.flush()
        header = self.proc.stdout.readline().split()
        if len(header) < 3 or header[1] == b"missing":
            raise KeyError(sha)
        data = self.proc.stdout.read(int(header[2]))
        self.proc.stdout.read(1)  # the newline after the content
        return data

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait()


# --------------------------------------------------------------------------------------
# checks and splits
# --------------------------------------------------------------------------------------
def open_ok(data: bytes) -> tuple[int, int] | None:
    """(width, height) when Pillow can decode the whole image, else None."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return img.size
    except Exception:
        return None


def stratified_holdout(items: dict[str, list[str]], frac: float, rng: np.random.RandomState) -> tuple[dict, dict]:
    """Per class (sorted), sorted names, a permutation; the first round(frac * n) are held out."""
    train, held = {}, {}
    for cls in sorted(items):
        names = sorted(items[cls])
        perm = rng.permutation(len(names))
        k = int(round(frac * len(names)))
        held[cls] = sorted(names[i] for i in perm[:k])
        train[cls] = sorted(names[i] for i in perm[k:])
    return train, held


def stratified_cap(items: dict[str, list[str]], cap: int, rng: np.random.RandomState) -> dict[str, list[str]]:
    """At most ``cap`` items, per-class quotas proportional to the class sizes (largest remainders)."""
    total = sum(len(v) for v in items.values())
    if total <= cap:
        return {c: sorted(v) for c, v in items.items()}
    classes = sorted(items)
    exact = {c: cap * len(items[c]) / total for c in classes}
    quota = {c: int(np.floor(exact[c])) for c in classes}
    for c in sorted(classes, key=lambda c: (-(exact[c] - quota[c]), c))[: cap - sum(quota.values())]:
        quota[c] += 1
    out = {}
    for c in classes:
        names = sorted(items[c])
        pick = rng.choice(len(names), size=quota[c], replace=False)
        out[c] = sorted(names[i] for i in pick)
    return out


# --------------------------------------------------------------------------------------
# building one set
# --------------------------------------------------------------------------------------
def collect_from_git(name: str, spec: dict[str, Any], git_dir: Path, log) -> tuple[dict, dict, dict[str, Any]]:
    commit, pinned = resolve_commit(git_dir, spec["commit"])
    if not pinned:
        log(f"  warning: {git_dir} lacks the pinned commit {spec['commit'][:12]}; using HEAD {commit[:12]}")
    root = spec.get("root", "").strip("/")
    blobs = list_tree(git_dir, commit, root)
    parts = {"split": (spec.get("train_dir"), spec.get("eval_dir"))}.get(spec["layout"], (None,))
    excl = tuple(spec.get("exclude_prefix", []))
    # (part, class) -> [(path, sha, size)]
    found: dict[tuple[str | None, str], list[tuple[str, str, int]]] = defaultdict(list)
    skipped = Counter()
    for path, sha, size in blobs:
        rel = path[len(root) + 1:] if root else path
        bits = rel.split("/")
        if Path(rel).suffix.lower() not in IMAGE_EXTS or bits[-1].startswith("."):
            continue
        if bits[-1].startswith(excl) if excl else False:
            skipped["excluded by name"] += 1
            continue
        if spec["layout"] == "split":
            if len(bits) != 3 or bits[0] not in parts:
                continue
            found[(bits[0], bits[1])].append((path, sha, size))
        elif spec["layout"] == "numbered":
            if len(bits) != 1:
                continue
            m = re.fullmatch(spec["number_re"], bits[0])
            if m is None:
                skipped["name without a class number"] += 1
                continue
            idx = (int(m.group(1)) - 1) // spec["per_class"]
            if not 0 <= idx < len(spec["classes"]):
                skipped["number outside the classes"] += 1
                continue
            found[(None, spec["classes"][idx])].append((path, sha, size))
        else:
            if len(bits) != 2:
                continue
            found[(None, bits[0])].append((path, sha, size))
    # duplicates: one copy per blob; a blob under two classes is dropped
    classes_of_blob: dict[str, set[str]] = defaultdict(set)
    for (part, cls), files in found.items():
        for _p, sha, _s in files:
            classes_of_blob[sha].add(cls)
    seen: set[str] = set()
    reader = BlobReader(git_dir)
    kept: dict[tuple[str | None, str], list[tuple[str, bytes, tuple[int, int]]]] = defaultdict(list)
    try:
        # train part first, so a duplicate across the repository's own split stays in train
        order = sorted(found, key=lambda k: (k[0] != parts[0], k[0] or "", k[1]))
        for key in order:
            for path, sha, _size in sorted(found[key]):
                if len(classes_of_blob[sha]) > 1:
                    skipped["same file under two classes"] += 1
                    continue
                if sha in seen:
                    skipped["exact duplicate"] += 1
                    continue
                seen.add(sha)
                data = reader.read(sha)
                size = open_ok(data)
                if size is None:
                    skipped["Pillow cannot open"] += 1
                    continue
                kept[key].append((path, data, size))
    finally:
        reader.close()
    if spec["layout"] == "split":
        train = {cls: v for (part, cls), v in kept.items() if part == parts[0]}
        held = {cls: v for (part, cls), v in kept.items() if part == parts[1]}
        how = f"the repository's own split: {parts[0]}/ -> train, {parts[1]}/ -> eval"
    else:
        flat = {cls: v for (_p, cls), v in kept.items()}
        by_name = {cls: {p: (p, d, s) for p, d, s in v} for cls, v in flat.items()}
        tr, ev = stratified_holdout({c: list(v) for c, v in by_name.items()}, 0.2, np.random.RandomState(0))
        train = {c: [by_name[c][p] for p in tr[c]] for c in tr}
        held = {c: [by_name[c][p] for p in ev[c]] for c in ev}
        how = "stratified 80/20 split made here (per class, sorted names, numpy RandomState(0))"
    info = {"repo": spec["repo"], "commit": commit, "path": root or "(repository root)",
            "licence": spec.get("licence", "not stated"), "about": spec.get("about", ""), "split": how,
            "dropped": dict(skipped)}
    return train, held, info


def collect_from_folder(folder: Path) -> tuple[dict, dict, dict[str, Any]]:
    skipped = Counter()
    flat: dict[str, dict[str, tuple[str, bytes, tuple[int, int]]]] = {}
    seen: dict[bytes, str] = {}
    import hashlib

    for cls_dir in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = {}
        for f in sorted(cls_dir.iterdir()):
            if f.suffix.lower() not in IMAGE_EXTS or f.name.startswith("."):
                continue
            data = f.read_bytes()
            digest = hashlib.sha1(data).digest()
            if digest in seen:
                skipped["exact duplicate"] += 1
                continue
            seen[digest] = cls_dir.name
            size = open_ok(data)
            if size is None:
                skipped["Pillow cannot open"] += 1
                continue
            files[f.name] = (str(f), data, size)
        flat[cls_dir.name] = files
    tr, ev = stratified_holdout({c: list(v) for c, v in flat.items()}, 0.2, np.random.RandomState(0))
    train = {c: [flat[c][n] for n in tr[c]] for c in tr}
    held = {c: [flat[c][n] for n in ev[c]] for c in ev}
    info = {"repo": "beyondcodesandalgos/Image_Classifier (via shared/data/cats-vs-dogs)", "commit": "-",
            "path": str(folder), "licence": "not stated (Kaggle Dogs vs. Cats / Asirra photos)",
            "about": CATS_DOGS_ABOUT,
            "split": "stratified 80/20 split made here (per class, sorted names, numpy RandomState(0))",
            "dropped": dict(skipped)}
    return train, held, info


def write_set(out: Path, name: str, train: dict, held: dict, info: dict[str, Any], max_train: int,
              max_eval: int, log) -> dict[str, Any]:
    def cap(part: dict, n: int) -> dict:
        idx = {c: {p: (p, d, s) for p, d, s in v} for c, v in part.items()}
        chosen = stratified_cap({c: list(v) for c, v in idx.items()}, n, np.random.RandomState(0))
        return {c: [idx[c][p] for p in chosen[c]] for c in chosen}

    n_train_all = sum(len(v) for v in train.values())
    n_eval_all = sum(len(v) for v in held.values())
    train, held = cap(train, max_train), cap(held, max_eval)
    classes = sorted(set(train) | set(held))
    small = {c: len(train.get(c, [])) for c in classes if len(train.get(c, [])) < MIN_TRAIN_PER_CLASS}
    if small:
        raise SystemExit(f"{name}: classes with fewer than {MIN_TRAIN_PER_CLASS} training images: {small}")
    missing = [c for c in classes if not held.get(c)]
    if missing:
        raise SystemExit(f"{name}: classes without evaluation images: {missing}")
    tmp = out / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    sizes = []
    for part_name, part in (("train", train), ("eval", held)):
        for cls, files in part.items():
            d = tmp / part_name / cls
            d.mkdir(parents=True, exist_ok=True)
            used: set[str] = set()
            for path, data, size in files:
                fname = Path(path).name
                if fname in used:  # same name in two source folders of one class
                    fname = "__".join(Path(path).parts[-3:-1] + (fname,))
                used.add(fname)
                (d / fname).write_bytes(data)
                sizes.append(size)
    w = [s[0] for s in sizes]
    h = [s[1] for s in sizes]
    manifest = {
        "name": name, **info, "classes": classes,
        "train": {c: len(train.get(c, [])) for c in classes},
        "eval": {c: len(held.get(c, [])) for c in classes},
        "n_train": sum(len(v) for v in train.values()), "n_eval": sum(len(v) for v in held.values()),
        "n_train_before_cap": n_train_all, "n_eval_before_cap": n_eval_all,
        "caps": {"train": max_train, "eval": max_eval},
        "image_size": {"median_width": int(np.median(w)), "median_height": int(np.median(h)),
                       "min": [int(min(w)), int(min(h))], "max": [int(max(w)), int(max(h))],
                       "most_common": "x".join(map(str, Counter(sizes).most_common(1)[0][0]))},
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    final = out / name
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    log(f"  {name}: {manifest['n_train']} train / {manifest['n_eval']} eval, {len(classes)} classes"
        f" (before caps {n_train_all}/{n_eval_all}); dropped {info['dropped'] or 'none'}")
    return manifest


# --------------------------------------------------------------------------------------
# DATASETS.md
# --------------------------------------------------------------------------------------
def write_index(out: Path) -> Path:
    manifests = []
    for m in sorted(out.glob("*/manifest.json")):
        try:
            manifests.append(json.loads(m.read_text()))
        except (OSError, ValueError):
            pass
    lines = [
        "# Small real-photo benchmark sets",
        "",
        "Built by `benchmarks/prepare_small_data.py` (automl-vision repository); each set is",
        "`<name>/train/<class>/*` and `<name>/eval/<class>/*`, and `<name>/manifest.json` holds the",
        "exact per-class counts. Used by `benchmarks/bench_small_data.py`.",
        "",
        "Common steps: only .jpg/.jpeg/.png files; exact duplicates (same content) kept once, a file",
        "found under two classes dropped; every file decoded with Pillow (failures dropped); at most",
        "3,000 train / 1,000 eval images (stratified subsample, numpy RandomState(0)); every class has",
        "at least 20 train images.",
        "",
        "| set | classes | train | eval | typical size (WxH) | source (commit) |",
        "|---|---|---|---|---|---|",
    ]
    for m in manifests:
        commit = m["commit"][:12] if m["commit"] != "-" else "-"
        lines.append(f"| {m['name']} | {len(m['classes'])} | {m['n_train']} | {m['n_eval']} | "
                     f"{m['image_size']['most_common']} | {m['repo']} ({commit}) |")
    lines.append("")
    for m in manifests:
        sz = m["image_size"]
        lines += [
            f"## {m['name']}",
            "",
            f"- what: {m['about']}",
            f"- source: github.com/{m['repo']}" if m["commit"] != "-" else f"- source: {m['repo']}",
            f"- commit: {m['commit']}",
            f"- path in the repository: `{m['path']}`",
            f"- licence: {m['licence']}",
            f"- classes ({len(m['classes'])}): " + ", ".join(f"{c} ({m['train'][c]}/{m['eval'][c]})" for c in m["classes"])
            + " (train/eval)",
            f"- train / eval: {m['n_train']} / {m['n_eval']}"
            + (f" (subsampled from {m['n_train_before_cap']} / {m['n_eval_before_cap']})"
               if (m["n_train_before_cap"], m["n_eval_before_cap"]) != (m["n_train"], m["n_eval"]) else ""),
            f"- image size: most common {sz['most_common']}, median {sz['median_width']}x{sz['median_height']},"
            f" range {sz['min'][0]}x{sz['min'][1]} .. {sz['max'][0]}x{sz['max'][1]}",
            f"- split: {m['split']}",
            f"- dropped: {', '.join(f'{k}: {v}' for k, v in m['dropped'].items()) or 'nothing'}",
            "",
        ]
    path = out / "DATASETS.md"
    path.write_text("\n".join(lines))
    return path


def write_subset(out: Path, spec: str, log) -> None:
    """``NAME=SOURCE:N[:SEED[:K]]``: ``out/NAME`` holds N of ``out/SOURCE``'s train photos, the same number per
    class (the sorted paths shuffled by Python's ``random.Random(SEED)``, default 0, the first of each class
    kept), and all of its evaluation photos: a folder of a few hundred photos from a larger set, for the
    resolution measurements of benchmarks/README.md section 9 (cats-dogs-300, flowers-400: seed 0;
    flowers-720: seed 1). With K, only the first K classes in sorted order are kept, train and eval
    (flowers12 = flowers17:720:0:12, the shape of issue 18's hidden 12-class flower folder: 60 photos a
    class)."""
    import random
    import shutil

    name, _, rest = spec.partition("=")
    parts = rest.split(":")
    if not name or len(parts) not in (2, 3, 4) or not all(p.isdigit() for p in parts[1:]):
        raise SystemExit(f"--subset {spec!r}: expected NAME=SOURCE:N[:SEED[:K]]")
    src, dst, n = out / parts[0], out / name, int(parts[1])
    seed = int(parts[2]) if len(parts) >= 3 else 0
    if not (src / "train").is_dir() or not (src / "eval").is_dir():
        raise SystemExit(f"--subset {spec!r}: {src} has no train/ and eval/ folders; build {parts[0]} first")
    # not stratified_cap: that draws proportional quotas with NumPy; this selection is the one the measured
    # folders were made with, so that they can be rebuilt exactly
    files = sorted(f for f in (src / "train").rglob("*") if f.is_file())
    random.Random(seed).shuffle(files)
    by_class: dict[str, list[Path]] = {d.name: [] for d in sorted((src / "train").iterdir()) if d.is_dir()}
    if len(parts) == 4:
        by_class = dict(list(by_class.items())[: int(parts[3])])
    for f in files:
        if f.parent.name in by_class:
            by_class[f.parent.name].append(f)
    if dst.exists():
        shutil.rmtree(dst)
    kept = 0
    for cls, picks in by_class.items():
        (dst / "train" / cls).mkdir(parents=True)
        for f in picks[: n // len(by_class)]:
            shutil.copy2(f, dst / "train" / cls / f.name)
            kept += 1
    # with K, the other classes' eval folders are left out; without, the eval tree is copied whole, as before
    def dropped(folder: str, names: list[str]) -> list[str]:
        return [n for n in names if Path(folder) == src / "eval" and n not in by_class]

    shutil.copytree(src / "eval", dst / "eval", ignore=dropped if len(parts) == 4 else None)
    log(f"{name}: {kept} train photos of {len(by_class)} classes of {parts[0]} (seed {seed}) and their eval photos")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="/work/bench-data", help="where the sets go (default /work/bench-data)")
    ap.add_argument("--mirror-root", default="/work/.mirror",
                    help="folder holding the git copies as <owner>+<name>/repo (default /work/.mirror)")
    ap.add_argument("--mirror", action="append", default=[], metavar="NAME=GITDIR",
                    help="the git directory of one set's repository (overrides --mirror-root)")
    ap.add_argument("--cats-dogs", default=None, metavar="FOLDER",
                    help="also build 'cats-vs-dogs' from this class-per-folder tree (e.g. shared/data/cats-vs-dogs)")
    ap.add_argument("--only", help="comma-separated set names to build (default: all)")
    ap.add_argument("--max-train", type=int, default=3000)
    ap.add_argument("--max-eval", type=int, default=1000)
    ap.add_argument("--force", action="store_true", help="rebuild sets whose folder already exists")
    ap.add_argument("--subset", action="append", default=[], metavar="NAME=SOURCE:N[:SEED[:K]]",
                    help="also write NAME: N train photos of the built set SOURCE (equal per class; with K, of its "
                         "first K classes), all their eval photos")
    args = ap.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    overrides = {}
    for item in args.mirror:
        if "=" not in item:
            ap.error(f"--mirror {item!r}: expected NAME=GITDIR")
        k, v = item.split("=", 1)
        overrides[k] = Path(v)
    wanted = [s.strip() for s in args.only.split(",")] if args.only else [*SOURCES, "cats-vs-dogs"]
    log = lambda s: print(s, flush=True)  # noqa: E731
    failed = []
    for name in wanted:
        if name != "cats-vs-dogs" and name not in SOURCES:
            ap.error(f"--only: unknown set {name!r}; known: {', '.join([*SOURCES, 'cats-vs-dogs'])}")
        if (out / name / "manifest.json").exists() and not args.force:
            log(f"{name}: exists, kept (--force rebuilds)")
            continue
        log(f"{name}:")
        if name == "cats-vs-dogs":
            if not args.cats_dogs:
                log("  skipped: give --cats-dogs FOLDER")
                continue
            train, held, info = collect_from_folder(Path(args.cats_dogs))
        else:
            spec = SOURCES[name]
            git_dir = overrides.get(name) or find_git_dir(Path(args.mirror_root), spec["repo"])
            if git_dir is None:
                log(f"  no git copy of {spec['repo']} under {args.mirror_root}; see the docstring")
                failed.append(name)
                continue
            train, held, info = collect_from_git(name, spec, git_dir, log)
        write_set(out, name, train, held, info, args.max_train, args.max_eval, log)
    for spec in args.subset:
        write_subset(out, spec, log)
    log(f"wrote {write_index(out)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
