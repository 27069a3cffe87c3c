"""Small real-photo sets: does the search beat a plain hand-written loop given the same time?

For every dataset folder (``<set>/train/<class>/*`` and ``<set>/eval/<class>/*``, e.g. the
sets built by ``prepare_small_data.py``), every seed and every budget, the arms run one
after another (never in parallel), in an order rotated per seed so that drift in the
machine's load hits every arm alike:

* ``default``: ``automl-vision search <set>/train --time-budget B --seed S`` as a
  subprocess (plus ``--extra`` options), then ``automl-vision predict RUN <set>/eval``;
  the wall time of the search call is recorded (start-up included: what a user waits),
  and from ``RUN/final/report.json`` its top-level scalars and the ``best_val``,
  ``best_test`` and ``final_fit`` records;
* ``random``: the same with ``--sampler random``;
* ``loop``: a plain PyTorch loop written out below (not automl-vision's trainer), given
  the same wall-clock budget including its own image loading: every training photo
  decoded once (Pillow, EXIF orientation applied, RGB) and resized to a 64x64 square,
  kept as a uint8 tensor; a 4-stage plain CNN (a stride-2 conv3x3-BN-ReLU stem at width
  32, then stages of width 32/64/128/256, each conv3x3-BN-ReLU + 2x2 max-pool, global
  average pool, dropout 0.1, linear; 0.39M parameters), AdamW (lr 2e-3, weight decay
  0.05), batch 64, a cosine learning rate driven by elapsed time / budget (training
  stops at the budget: no step is started that would end after it), a
  random-resized-crop (scale 0.35-1, ratio 3/4-4/3) and a horizontal flip drawn per image
  and applied to the batch as one affine resampling, label smoothing 0.1, fp32,
  channels-last, ``torch.set_num_threads(--threads)``; then the eval photos are loaded
  the same way (outside the budget) and scored once;
* ``loop_tv``: the same network, optimiser, schedule and budget, fed as a torchvision
  tutorial feeds it: a Dataset over the training files and a DataLoader (batch 64,
  shuffled, 2 workers) in which every epoch decodes each photo again in full (Pillow, EXIF
  orientation, RGB) and torchvision's ``RandomResizedCrop(64, scale=(0.35, 1))`` and
  ``RandomHorizontalFlip`` cut the crop from the full photo (sharper crops than ``loop``'s,
  which are cut from a 64-px square, at the cost of decoding every epoch); eval photos
  resized to a 64x64 square by ``transforms.Resize``. The search arms report, beside runs
  above ``loop``, runs above ``loop_tv`` of the same seed.

Every arm is scored once on the eval folder (accuracy over every eval image; an image
that could not be predicted counts as wrong). Reported per set and arm: the median eval
accuracy and its range over seeds and, for the search arms, in how many runs it beat the
loop of the same seed.

``--quick`` is the smoke setting: a 30 s budget, one seed, a tiny set (generated, or a
few images per class of the given sets), small searches; results go to
``results/quick/``. ``--resume`` keeps the runs already in the results file (same
budget, arm, seed and options) and runs only the missing or failed ones.

Examples::

    .venv/bin/python benchmarks/bench_small_data.py --data-root /work/bench-data --budget 10m --seeds 0,1,2
    .venv/bin/python benchmarks/bench_small_data.py --data /work/bench-data/hymenoptera --arms loop --budget 30s
    .venv/bin/python benchmarks/bench_small_data.py --quick
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
from bench_search_quality import count_states, fmt_range  # noqa: E402

import numpy as np  # noqa: E402

ARMS = ("default", "random", "loop", "loop_tv")
LOOP_ARMS = ("loop", "loop_tv")
SEARCH_ARMS = {"default": [], "random": ["--sampler", "random"]}
IMAGE_EXTS = {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
REPORT_RECORDS = ("best_val", "best_test", "final_fit")
QUICK_EXTRA = ["--models", "cnn", "--image-size", "32", "--max-epochs", "2", "--precision", "fp32",
               "--channels-last", "off"]

# the loop arm
LOOP = {"image_size": 64, "batch_size": 64, "lr": 2e-3, "weight_decay": 0.05, "label_smoothing": 0.1,
        "dropout": 0.1, "widths": [32, 64, 128, 256], "stem_width": 32, "crop_scale": [0.35, 1.0],
        "crop_ratio": [3 / 4, 4 / 3], "hflip": 0.5, "precision": "fp32", "channels_last": True}
LOOP_TV_WORKERS = 2  # DataLoader workers of the loop_tv arm: one per core of the 2-core machines
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------------------
# data folders
# --------------------------------------------------------------------------------------
def image_files(folder: Path) -> list[tuple[Path, str]]:
    """(file, class) for every image under ``folder/<class>/`` (recursively), sorted."""
    out = []
    for cls_dir in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for root, dirs, files in os.walk(cls_dir):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for f in sorted(files):
                if Path(f).suffix.lower() in IMAGE_EXTS and not f.startswith("."):
                    out.append((Path(root) / f, cls_dir.name))
    return out


def describe_set(path: Path) -> dict[str, Any]:
    train, held = image_files(path / "train"), image_files(path / "eval")
    classes = sorted({c for _f, c in train})
    return {"path": path.name, "classes": classes, "n_train": len(train), "n_eval": len(held),
            "eval_classes_not_in_train": sorted({c for _f, c in held} - set(classes))}


def find_sets(data: str | None, data_root: str | None) -> list[Path]:
    sets: list[Path] = []
    if data_root:
        root = Path(data_root)
        sets += sorted(p for p in root.iterdir() if (p / "train").is_dir() and (p / "eval").is_dir())
    if data:
        sets += [Path(d.strip()) for d in data.split(",") if d.strip()]
    return sets


def tiny_generated_set(out: Path, seed: int = 0) -> Path:
    """Three classes of coloured blobs on noisy backgrounds: 12 train / 6 eval images each."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    colours = {"red": (200, 40, 40), "green": (40, 170, 60), "blue": (50, 70, 200)}
    for part, n in (("train", 12), ("eval", 6)):
        for cls, colour in colours.items():
            d = out / part / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                bg = rng.integers(60, 200, (48, 48, 3), dtype=np.uint8)
                img = Image.fromarray(bg)
                draw = ImageDraw.Draw(img)
                x, y = (int(v) for v in rng.integers(8, 40, 2))
                r = int(rng.integers(6, 14))
                jitter = rng.integers(-30, 30, 3)
                draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(colour, jitter)))
                img.save(d / f"{cls}_{i:02d}.jpg", quality=90)
    return out


def tiny_copy(src: Path, out: Path, train_per_class: int = 10, eval_per_class: int = 5) -> Path:
    """The first few images per class of a set (quick mode)."""
    for part, n in (("train", train_per_class), ("eval", eval_per_class)):
        seen: dict[str, int] = {}
        for f, cls in image_files(src / part):
            if seen.get(cls, 0) >= n:
                continue
            seen[cls] = seen.get(cls, 0) + 1
            d = out / part / cls
            d.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, d / f.name)
    return out


# --------------------------------------------------------------------------------------
# search arms (subprocesses)
# --------------------------------------------------------------------------------------
def cli_command(cli: str | None) -> list[str]:
    if cli:
        return shlex.split(cli)
    exe = Path(sys.executable).parent / "automl-vision"
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-m", "automl_vision.cli"]


def read_report(run_dir: Path) -> dict[str, Any]:
    """Top-level scalars of final/report.json plus its best_val, best_test and final_fit records."""
    try:
        report = json.loads((run_dir / "final" / "report.json").read_text())
    except (OSError, ValueError):
        return {}
    out = {k: v for k, v in report.items() if isinstance(v, (str, int, float, bool)) or v is None}
    for k in REPORT_RECORDS:
        if isinstance(report.get(k), dict):
            out[k] = report[k]
    return out


def score_predictions(csv_path: Path, eval_dir: Path) -> dict[str, Any]:
    """Accuracy of predict's CSV against the eval folder's class names.

    The columns are found from the header: the image path ('path', or a column naming a
    file) and the predicted label ('prediction', 'predicted', 'label' or 'class').
    Every eval image counts; one without a prediction counts as wrong.
    """
    truth = {str(f.resolve()): c for f, c in image_files(eval_dir)}
    with open(csv_path, newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        raise ValueError(f"{csv_path}: empty")
    header = [h.strip().lower() for h in rows[0]]

    def column(*names: str) -> int:
        for n in names:
            if n in header:
                return header.index(n)
        for i, h in enumerate(header):
            if any(n in h for n in names):
                return i
        raise ValueError(f"{csv_path}: no column among {names} in header {rows[0]}")

    i_path = column("path", "file", "image")
    i_pred = column("prediction", "predicted", "label", "class")
    pred: dict[str, str] = {}
    for row in rows[1:]:
        if len(row) <= max(i_path, i_pred):
            continue
        p = Path(row[i_path])
        if not p.is_absolute():
            p = Path.cwd() / p
        pred[str(p.resolve())] = row[i_pred].strip()
    correct = sum(1 for f, c in truth.items() if pred.get(f) == c)
    per_class: dict[str, list[int]] = {}
    for f, c in truth.items():
        hit = per_class.setdefault(c, [0, 0])
        hit[0] += int(pred.get(f) == c)
        hit[1] += 1
    return {
        "eval_accuracy": correct / len(truth) if truth else float("nan"),
        "eval_images": len(truth), "eval_correct": correct,
        "eval_unpredicted": sum(1 for f in truth if not pred.get(f)),
        "eval_per_class_accuracy": {c: h[0] / h[1] for c, h in sorted(per_class.items())},
        "eval_wrong": wrong_files([Path(f) for f, c in truth.items() if pred.get(f) != c], eval_dir),
    }


def wrong_files(files: list[Path], eval_dir: Path) -> list[str]:
    """The misclassified eval photos, relative to the eval folder: whether two arms miss the
    same photos (a label ceiling) or different ones (a real difference) shows near 100%."""
    return sorted(str(f.resolve().relative_to(eval_dir.resolve())) for f in files)


def run_search_arm(arm: str, set_dir: Path, run_dir: Path, seed: int, budget: float, extra: list[str],
                   cli: list[str]) -> dict[str, Any]:
    shutil.rmtree(run_dir, ignore_errors=True)  # a leftover run directory would be resumed, not restarted
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    cmd = [*cli, "search", str(set_dir / "train"), "--time-budget", f"{budget:g}s", "--seed", str(seed),
           "--out", str(run_dir), "--plain", *SEARCH_ARMS[arm], *extra]
    # results files record no path of the machine that ran them: the set by its name, the rest by file name
    shown = [*(["automl-vision"] if cli and cli[0].endswith("automl-vision") else cli)] + cmd[len(cli):]
    shown = [a.replace(str(set_dir), set_dir.name).replace(str(run_dir.parent), "WORKDIR/runs") for a in shown]
    res: dict[str, Any] = {"command": shlex.join(shown)}
    log = run_dir.with_suffix(".search.log")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    t0 = time.perf_counter()
    try:
        with open(log, "w") as fh:
            proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, timeout=budget * 2 + 600)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    res["search_seconds"] = time.perf_counter() - t0
    res["search_overrun_seconds"] = res["search_seconds"] - budget
    res["search_log"] = log.name
    res["states"] = count_states(run_dir)
    res["trials"] = sum(res["states"].values())
    res["report"] = read_report(run_dir)
    if rc != 0:
        res["error"] = f"search exited with {rc}: " + tail(log)
        return res
    preds = run_dir.with_suffix(".eval_predictions.csv")
    cmd = [*cli, "predict", str(run_dir), str(set_dir / "eval"), "--out", str(preds)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    res["predict_seconds"] = time.perf_counter() - t0
    if proc.returncode != 0 or not preds.exists():
        res["error"] = f"predict exited with {proc.returncode}: " + (proc.stderr or proc.stdout)[-1500:]
        return res
    res["predictions"] = preds.name
    res.update(score_predictions(preds, set_dir / "eval"))
    return res


def tail(path: Path, n: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


# --------------------------------------------------------------------------------------
# the plain loop
# --------------------------------------------------------------------------------------
def load_square(files: list[Path], size: int) -> tuple[np.ndarray, list[int]]:
    """uint8 (N, size, size, 3); Pillow decode, EXIF orientation, RGB, resize to a square.
    Returns the array and the indices of the files that could not be read."""
    from PIL import Image, ImageOps

    arr = np.zeros((len(files), size, size, 3), dtype=np.uint8)
    bad = []
    for i, f in enumerate(files):
        try:
            with Image.open(f) as img:
                img.draft("RGB", (size * 2, size * 2))  # JPEG: decode at a reduced scale, >= 2x the target
                img = ImageOps.exif_transpose(img)
                arr[i] = np.asarray(img.convert("RGB").resize((size, size), Image.BILINEAR))
        except Exception:
            bad.append(i)
    return arr, bad


def plain_cnn(num_classes: int):
    import torch.nn as nn

    def cbr(cin: int, cout: int, stride: int = 1) -> list:
        return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    layers = cbr(3, LOOP["stem_width"], stride=2)
    cin = LOOP["stem_width"]
    for w in LOOP["widths"]:
        layers += cbr(cin, w) + [nn.MaxPool2d(2)]
        cin = w
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(LOOP["dropout"]), nn.Linear(cin, num_classes)]
    return nn.Sequential(*layers)


def random_resized_crop_flip(x, gen):
    """Per image: a random-resized crop (area scale 0.35-1, aspect 3/4-4/3) and a horizontal
    flip with probability 0.5, applied to the batch (float, N C H W) as one bilinear affine
    resampling to the same size."""
    import torch
    import torch.nn.functional as F

    n = x.shape[0]
    lo, hi = LOOP["crop_scale"]
    area = lo + (hi - lo) * torch.rand(n, generator=gen)
    log_r = math.log(LOOP["crop_ratio"][0]) + (math.log(LOOP["crop_ratio"][1]) - math.log(LOOP["crop_ratio"][0])) * torch.rand(n, generator=gen)
    ratio = torch.exp(log_r)
    w = torch.sqrt(area * ratio).clamp(max=1.0)  # crop width / image width
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (1 - w) * (2 * torch.rand(n, generator=gen) - 1)  # crop centre in [-1, 1] coordinates
    cy = (1 - h) * (2 * torch.rand(n, generator=gen) - 1)
    flip = torch.where(torch.rand(n, generator=gen) < LOOP["hflip"], -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = w * flip
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def fit_plain(model, epoch_batches, budget: float, t0: float, dev) -> dict[str, Any]:
    """Train ``model`` on the batches ``epoch_batches()`` yields for one epoch ((x normalised, labels)
    pairs), epoch after epoch, until the budget (counted from ``t0``) ends: AdamW, the cosine learning
    rate driven by elapsed time / budget, label smoothing; no step is started that would end after it."""
    import torch

    opt = torch.optim.AdamW(model.parameters(), lr=LOOP["lr"], weight_decay=LOOP["weight_decay"])
    crit = torch.nn.CrossEntropyLoss(label_smoothing=LOOP["label_smoothing"])
    seen = steps = epochs_done = 0
    last_loss = float("nan")
    model.train()
    t_train = time.perf_counter()
    stop = False
    step_seconds = 0.0  # running estimate of one step, loading included
    while not stop:
        batches = epoch_batches()
        while True:
            t_step = time.perf_counter()
            elapsed = t_step - t0
            if elapsed + step_seconds >= budget:
                stop = True
                break
            try:
                xb, yb = next(batches)
            except StopIteration:
                epochs_done += 1
                break
            for g in opt.param_groups:
                g["lr"] = LOOP["lr"] * 0.5 * (1.0 + math.cos(math.pi * elapsed / budget))
            loss = crit(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(yb)
            steps += 1
            took = time.perf_counter() - t_step
            step_seconds = took if steps == 1 else 0.8 * step_seconds + 0.2 * took
            if steps % 20 == 0:
                last_loss = float(loss.detach())
        del batches  # a DataLoader's workers end with their iterator
    if dev.type == "cuda":
        torch.cuda.synchronize()
    train_seconds = time.perf_counter() - t_train
    return {"seen": seen, "steps": steps, "full_epochs": epochs_done, "last_loss": last_loss,
            "train_seconds": train_seconds, "total_seconds": time.perf_counter() - t0,
            "images_per_second": seen / train_seconds if train_seconds > 0 else float("nan")}


def score_plain(model, set_dir: Path, index: dict[str, int], load_eval, dev, fmt) -> dict[str, Any]:
    """Score once on ``set_dir/eval``: ``load_eval(files)`` gives float (N, 3, S, S) batches in [0, 1]
    and the indices it could not read (counted wrong)."""
    import torch

    t1 = time.perf_counter()
    held = image_files(set_dir / "eval")
    mean = torch.tensor(MEAN, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=dev).view(1, 3, 1, 1)
    model.eval()
    preds = np.full(len(held), -1)
    bad_e: list[int] = []
    with torch.no_grad():
        for b in range(0, len(held), 256):
            xb, bad = load_eval([f for f, _c in held[b:b + 256]])
            bad_e += [b + i for i in bad]
            xb = ((xb.to(dev) - mean) / std).contiguous(memory_format=fmt)
            preds[b:b + 256] = model(xb).argmax(1).cpu().numpy()
    for i in bad_e:
        preds[i] = -1
    truth = np.array([index.get(c, -2) for _f, c in held])  # a class unknown to training: never right
    names = np.array([c for _f, c in held])
    per_class = {c: float((preds[names == c] == truth[names == c]).mean()) for c in sorted(set(names.tolist()))}
    return {
        "eval_accuracy": float((preds == truth).mean()) if len(held) else float("nan"),
        "eval_images": len(held), "eval_correct": int((preds == truth).sum()),
        "eval_unpredicted": len(bad_e), "eval_per_class_accuracy": per_class,
        "eval_wrong": wrong_files([f for (f, _c), p, t in zip(held, preds, truth) if p != t], set_dir / "eval"),
        "eval_seconds": time.perf_counter() - t1,
    }


def loop_setup(seed: int, device: str, threads: int):
    """Threads and seeds of a loop arm; its device and memory format."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    np.random.seed(seed)
    return torch.device(device), (torch.channels_last if LOOP["channels_last"] else torch.contiguous_format)


def loop_result(fit: dict[str, Any], n: int, budget: float, model, dev) -> dict[str, Any]:
    """What a loop arm reports of its training (``fit_plain``'s figures) on ``n`` photos."""
    import torch

    return {
        "train_images": int(n), "train_seconds": fit["train_seconds"], "total_seconds": fit["total_seconds"],
        "overrun_seconds": fit["total_seconds"] - budget,
        "epochs": fit["seen"] / n if n else 0.0, "full_epochs": fit["full_epochs"], "steps": fit["steps"],
        "images_per_second": fit["images_per_second"], "last_loss": fit["last_loss"],
        "params": int(sum(p.numel() for p in model.parameters())),
        "device": str(dev), "threads": torch.get_num_threads(),
    }


def run_loop_arm(set_dir: Path, seed: int, budget: float, device: str, threads: int) -> dict[str, Any]:
    """The ``loop`` arm: photos decoded once at 64 px, crops and flips drawn per image on the batch."""
    import torch

    dev, fmt = loop_setup(seed, device, threads)
    size, bs = LOOP["image_size"], LOOP["batch_size"]
    mean = torch.tensor(MEAN, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=dev).view(1, 3, 1, 1)

    t0 = time.perf_counter()  # the budget starts before the images are read
    train = image_files(set_dir / "train")
    classes = sorted({c for _f, c in train})
    index = {c: i for i, c in enumerate(classes)}
    arr, bad = load_square([f for f, _c in train], size)
    keep = np.setdiff1d(np.arange(len(train)), bad)
    x_all = torch.from_numpy(arr[keep]).permute(0, 3, 1, 2).contiguous().to(dev)
    y_all = torch.tensor([index[train[i][1]] for i in keep], dtype=torch.long, device=dev)
    load_seconds = time.perf_counter() - t0

    model = plain_cnn(len(classes)).to(dev).to(memory_format=fmt)
    gen = torch.Generator().manual_seed(seed)
    n = len(y_all)

    def epoch_batches():
        perm = torch.randperm(n, generator=gen).to(dev)
        for b in range(0, n, bs):
            idx = perm[b:b + bs]
            if len(idx) < 2:  # batch norm needs two images
                continue
            xb = random_resized_crop_flip(x_all[idx].float().div_(255.0), gen)
            yield ((xb - mean) / std).contiguous(memory_format=fmt), y_all[idx]

    fit = fit_plain(model, epoch_batches, budget if n >= 2 else 0.0, t0, dev)

    def load_eval(files):
        a, bad_e = load_square(files, size)
        return torch.from_numpy(a).permute(0, 3, 1, 2).float().div_(255.0), bad_e

    return {
        **score_plain(model, set_dir, index, load_eval, dev, fmt),
        **loop_result(fit, n, budget, model, dev),
        "unreadable_train_images": len(bad), "load_seconds": load_seconds,
    }


def run_loop_tv_arm(set_dir: Path, seed: int, budget: float, device: str, threads: int,
                    workers: int = LOOP_TV_WORKERS) -> dict[str, Any]:
    """The ``loop_tv`` arm: the same network and schedule, fed the way a torchvision tutorial feeds
    it: every epoch each training photo is decoded again in full by a DataLoader worker and
    torchvision's RandomResizedCrop(64) + RandomHorizontalFlip cut from the full photo."""
    import torch
    from PIL import Image, ImageOps
    from torchvision import transforms as T

    dev, fmt = loop_setup(seed, device, threads)
    size, bs = LOOP["image_size"], LOOP["batch_size"]
    normalise = T.Normalize(MEAN, STD)

    t0 = time.perf_counter()
    train = image_files(set_dir / "train")
    classes = sorted({c for _f, c in train})
    index = {c: i for i, c in enumerate(classes)}
    augment = T.Compose([T.RandomResizedCrop(size, scale=tuple(LOOP["crop_scale"]), ratio=tuple(LOOP["crop_ratio"])),
                         T.RandomHorizontalFlip(LOOP["hflip"]), T.ToTensor(), normalise])

    class Photos(torch.utils.data.Dataset):
        def __len__(self):
            return len(train)

        def __getitem__(self, i):
            with Image.open(train[i][0]) as img:
                photo = ImageOps.exif_transpose(img).convert("RGB")
            return augment(photo), index[train[i][1]]

    loader = torch.utils.data.DataLoader(Photos(), batch_size=bs, shuffle=True, drop_last=len(train) % bs == 1,
                                         num_workers=workers, persistent_workers=workers > 0,
                                         generator=torch.Generator().manual_seed(seed))
    model = plain_cnn(len(classes)).to(dev).to(memory_format=fmt)

    def epoch_batches():
        for xb, yb in loader:
            yield xb.to(dev).contiguous(memory_format=fmt), yb.to(dev)

    fit = fit_plain(model, epoch_batches, budget, t0, dev)
    del loader
    square = T.Resize((size, size))

    def load_eval(files):
        out, bad_e = torch.zeros(len(files), 3, size, size), []
        for i, f in enumerate(files):
            try:
                with Image.open(f) as img:
                    out[i] = T.functional.to_tensor(square(ImageOps.exif_transpose(img).convert("RGB")))
            except Exception:
                bad_e.append(i)
        return out, bad_e

    n = len(train)
    return {
        **score_plain(model, set_dir, index, load_eval, dev, fmt),
        **loop_result(fit, n, budget, model, dev),
        "load_seconds": 0.0, "workers": workers,
    }


# --------------------------------------------------------------------------------------
# summary
# --------------------------------------------------------------------------------------
def ok(run: dict[str, Any]) -> bool:
    return "error" not in run and isinstance(run.get("eval_accuracy"), (int, float)) and math.isfinite(run["eval_accuracy"])


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    loop_by_seed = {r["seed"]: r["eval_accuracy"] for r in runs if r["arm"] == "loop" and ok(r)}
    loop_wrong = {r["seed"]: set(r["eval_wrong"]) for r in runs if r["arm"] == "loop" and ok(r) and "eval_wrong" in r}
    loop_median = C.median(list(loop_by_seed.values())) if loop_by_seed else None
    for arm in sorted({r["arm"] for r in runs}, key=lambda a: (ARMS.index(a) if a in ARMS else 99, a)):
        mine = [r for r in runs if r["arm"] == arm]
        good = [r for r in mine if ok(r)]
        s: dict[str, Any] = {"runs": len(mine), "failed": len(mine) - len(good),
                             "eval_accuracy": C.spread([r["eval_accuracy"] for r in good])}
        if arm in SEARCH_ARMS:
            s["search_seconds"] = C.spread([r["search_seconds"] for r in good])
            s["trials"] = C.spread([r["trials"] for r in good])
            if loop_by_seed and good:
                wins = [r["eval_accuracy"] > loop_by_seed.get(r["seed"], loop_median) for r in good]
                level = sum(r["eval_accuracy"] == loop_by_seed.get(r["seed"], loop_median) for r in good)
                s["above_loop"] = f"{sum(wins)}/{len(wins)}" + (f" ({level} level)" if level else "")
                # near 100%, whether the two miss the same photos tells a label ceiling from a difference
                s["misses_shared_with_loop"] = [
                    {"seed": r["seed"], "search": len(r["eval_wrong"]), "loop": len(loop_wrong[r["seed"]]),
                     "both": len(set(r["eval_wrong"]) & loop_wrong[r["seed"]])}
                    for r in good if "eval_wrong" in r and r["seed"] in loop_wrong]
                s["above_loop_fraction"] = sum(wins) / len(wins) if wins else float("nan")
                s["loop_paired_by_seed"] = all(r["seed"] in loop_by_seed for r in good)
            tv = {r["seed"]: r["eval_accuracy"] for r in runs if r["arm"] == "loop_tv" and ok(r)}
            paired = [r for r in good if r["seed"] in tv]
            if paired:  # against the torchvision-fed loop, seed by seed
                s["above_loop_tv"] = (f"{sum(r['eval_accuracy'] > tv[r['seed']] for r in paired)}/{len(paired)}"
                                      + "".join(f" (s{r['seed']} {r['eval_accuracy'] - tv[r['seed']]:+.3f})"
                                                for r in paired))
        elif arm in LOOP_ARMS:
            s["epochs"] = C.spread([r["epochs"] for r in good])
            s["images_per_second"] = C.spread([r["images_per_second"] for r in good])
        out[arm] = s
    return out


def print_table(payload: dict[str, Any]) -> None:
    print(table_text(payload))


def table_text(payload: dict[str, Any]) -> str:
    """The results as one markdown table (also what report.py puts in benchmarks/README.md)."""
    rows = []
    for name, entry in payload["datasets"].items():
        for arm, s in entry.get("summary", {}).items():
            if arm in SEARCH_ARMS:
                other = f"{fmt_range(s['trials'], 0)} trials, {fmt_range(s['search_seconds'], 0)} s"
                if s.get("above_loop_tv"):
                    other += f"; above loop_tv {s['above_loop_tv']}"
                if s.get("misses_shared_with_loop"):
                    other += "; photos missed (search/loop/both): " + ", ".join(
                        f"s{m['seed']} {m['search']}/{m['loop']}/{m['both']}" for m in s["misses_shared_with_loop"])
            else:
                other = f"{fmt_range(s['epochs'], 1)} epochs, {fmt_range(s['images_per_second'], 0)} img/s"
            rows.append([name, arm + (f" ({s['failed']} failed)" if s["failed"] else ""),
                         fmt_range(s["eval_accuracy"]), s["runs"] - s["failed"], s.get("above_loop", "-"), other])
    return C.table(["set", "arm", "eval accuracy median (min-max)", "runs", "runs above loop", "notes"], rows)


# --------------------------------------------------------------------------------------
def budget_label(text: str) -> str:
    return re.sub(r"[^0-9A-Za-z.]+", "", text) or "budget"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", help="comma-separated dataset folders, each with train/ and eval/")
    ap.add_argument("--data-root", help="every subfolder of this folder that has train/ and eval/")
    ap.add_argument("--seeds", default="0,1,2", help="search and loop seeds (default 0,1,2)")
    ap.add_argument("--budget", default=None,
                    help="time budget of every arm, e.g. 90s, 10m; several comma-separated budgets give one "
                         "results file each (default 10m; 30s with --quick)")
    ap.add_argument("--arms", default="default,loop,random", help=f"some of {', '.join(ARMS)} (default: all)")
    ap.add_argument("--extra", default="", help="more options for 'automl-vision search', e.g. \"--preset fast\"")
    ap.add_argument("--cli", help="the automl-vision command (default: the one next to this Python, "
                                  "else 'python -m automl_vision.cli')")
    ap.add_argument("--device", default="auto", help="device of the loop arm: auto (cuda when there is one), cpu, cuda")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the loop arm (default 2)")
    ap.add_argument("--resume", action="store_true",
                    help="keep the runs already in the results file; run only the missing or failed ones")
    ap.add_argument("--quick", action="store_true", help="smoke setting: 30 s, one seed, tiny data (figures mean nothing)")
    ap.add_argument("--workdir", help="keep run directories, logs and predictions here (default: temporary, removed)")
    ap.add_argument("--out", help="results JSON (default: benchmarks/results/small_data_<budget>.json; "
                                  "with --quick results/quick/)")
    args = ap.parse_args(argv)

    from automl_vision.settings import parse_duration
    from automl_vision.types import UsageError

    budget_texts = [b.strip() for b in (args.budget or ("30s" if args.quick else "10m")).split(",") if b.strip()]
    budgets = []
    for b in budget_texts:
        try:
            budgets.append(parse_duration(b))
        except UsageError as exc:
            ap.error(f"--budget: {exc}")
    if args.out and len(budgets) > 1:
        ap.error("--out takes one --budget")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        ap.error("--seeds takes whole numbers like 0,1,2")
    if args.quick and args.seeds == "0,1,2":
        seeds = [0]
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    for a in arms:
        if a not in ARMS:
            ap.error(f"--arms: unknown arm {a!r}; expected some of {', '.join(ARMS)}")
    extra = shlex.split(args.extra)
    if args.quick:
        extra = QUICK_EXTRA + extra
    if args.device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        device = args.device
    sets = find_sets(args.data, args.data_root)
    if not sets and not args.quick:
        ap.error("give --data and/or --data-root (or --quick)")
    for s in sets:
        if not ((s / "train").is_dir() and (s / "eval").is_dir()):
            ap.error(f"{s}: expected {s}/train/<class>/ and {s}/eval/<class>/")
    cli = cli_command(args.cli)

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-small-data-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        if args.quick:
            sets = ([tiny_copy(s, work / "quick-data" / s.name) for s in sets] if sets
                    else [tiny_generated_set(work / "quick-data" / "tiny-blobs")])
        machine = C.machine()
        for budget_text, budget in zip(budget_texts, budgets):
            name = f"small_data_{budget_label(budget_text)}"
            out_path = Path(args.out) if args.out else C.default_path(name, args.quick)
            payload: dict[str, Any] = {
                "benchmark": "small_data", "machine": machine, "quick": args.quick,
                "settings": {"budget": budget_text, "budget_seconds": budget, "seeds": seeds, "arms": arms,
                             "extra": extra, "cli": [Path(cli[0]).name, *cli[1:]],
                             "loop": {**LOOP, "device": device, "threads": args.threads,
                                      "loop_tv_workers": LOOP_TV_WORKERS},
                             "scoring": "accuracy over every image of <set>/eval (unpredicted = wrong)"},
                "datasets": {},
            }
            if args.resume and out_path.exists():
                try:
                    old = json.loads(out_path.read_text())
                    payload["datasets"] = old.get("datasets", {})
                    payload["earlier_machines"] = old.get("earlier_machines", []) + [old.get("machine")]
                except (OSError, ValueError):
                    pass

            def save() -> None:
                payload["load_average_at_end"] = C.load_average()
                C.write_results(name, payload, out_path)

            for s in sets:
                entry = payload["datasets"].setdefault(s.name, {"runs": [], "summary": {}})
                entry.update(describe_set(s))
                print(f"{s.name}: {entry['n_train']} train / {entry['n_eval']} eval images, "
                      f"{len(entry['classes'])} classes", flush=True)
            if any(payload["datasets"][s.name]["eval_classes_not_in_train"] for s in sets):
                print("warning: some eval classes have no training images; their images count as wrong", flush=True)

            for k, seed in enumerate(seeds):
                order = arms[k % len(arms):] + arms[: k % len(arms)]  # rotated: load drift hits every arm alike
                for s in sets:
                    entry = payload["datasets"][s.name]
                    for arm in order:
                        key_extra = extra if arm in SEARCH_ARMS else []
                        done = [r for r in entry["runs"] if r["arm"] == arm and r["seed"] == seed
                                and r.get("extra", []) == key_extra]
                        if args.resume and any(ok(r) for r in done):
                            print(f"  {s.name} seed {seed} {arm:8s}: kept from {out_path.name}", flush=True)
                            continue
                        entry["runs"] = [r for r in entry["runs"] if not (r["arm"] == arm and r["seed"] == seed)]
                        load_before = C.load_average()
                        if arm in LOOP_ARMS:
                            try:
                                run_loop = run_loop_arm if arm == "loop" else run_loop_tv_arm
                                res = run_loop(s, seed, budget, device, args.threads)
                            except Exception as exc:  # one failed run must not lose the others' figures
                                res = {"error": f"{type(exc).__name__}: {exc}"}
                        else:
                            run_dir = work / "runs" / f"{s.name}-{budget_label(budget_text)}-s{seed}-{arm}"
                            res = run_search_arm(arm, s, run_dir, seed, budget, extra, cli)
                        res = {"arm": arm, "seed": seed, "extra": key_extra, "budget_seconds": budget,
                               "git_commit": machine.get("git_commit"),
                               "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                               "load_average_before": load_before, "load_average_after": C.load_average(), **res}
                        entry["runs"].append(res)
                        entry["summary"] = summarise(entry["runs"])
                        save()
                        if "error" in res:
                            print(f"  {s.name} seed {seed} {arm:8s}: ERROR {res['error'][-600:]}", flush=True)
                        elif arm in LOOP_ARMS:
                            print(f"  {s.name} seed {seed} {arm:8s}: eval acc {res['eval_accuracy']:.4f}  "
                                  f"{res['epochs']:.1f} epochs, {res['images_per_second']:.0f} img/s, "
                                  f"load {res['load_seconds']:.1f}s, total {res['total_seconds']:.1f}s", flush=True)
                        else:
                            rep = res.get("report", {})
                            print(f"  {s.name} seed {seed} {arm:8s}: eval acc {res['eval_accuracy']:.4f}  "
                                  f"search {res['search_seconds']:.0f}s ({res['search_overrun_seconds']:+.0f}s), "
                                  f"{res['trials']} trials, deliverable {rep.get('deliverable', '?')}", flush=True)
            print(f"\nbudget {budget_text}: {len(seeds)} seed(s)")
            print_table(payload)
            save()
            print(f"results: {out_path}\n", flush=True)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
