"""Engine overhead: automl-vision's trial runner against a plain hand-written PyTorch loop.

The same model (the built-in custom CNN and timm's resnet18), the same cached data, the
same batch size, epochs, optimizer (AdamW), cosine schedule and execution path
(precision and memory format from ``automl_vision.training.device.choose``) are trained
once through :func:`automl_vision.training.trainer.train` and once through the loop
written out below, alternating, several repetitions, in one process. Both evaluate the
validation split after every epoch (a real loop does, and the trainer always does).

Reported: images per second of both (training images over wall-clock time, evaluation
included, and the training phase alone), their ratio (target >= 0.95), the first
epoch's time including decoding and caching against later epochs, and peak memory.

Run ``python benchmarks/bench_engine.py`` (digits from scikit-learn at 32 px) or
``--data /path/to/class-folders --image-size 64``; ``--quick`` is the smoke setting.
"""

from __future__ import annotations

import argparse
import math
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

CNN_PARAMS = {
    "cnn.block": "residual", "cnn.stages": 3, "cnn.blocks": 1, "cnn.width": 32, "cnn.kernel": 3,
    "cnn.norm": "batch", "cnn.act": "relu", "cnn.dropout": 0.1, "cnn.pool": "avg",
}
MODELS = {
    "cnn": ("cnn", CNN_PARAMS),
    "resnet18": ("timm", {"timm.arch": "resnet18", "timm.drop_rate": 0.0}),
}
LR, WEIGHT_DECAY, WARMUP = 1e-3, 0.05, 0.05


def write_digits(out: Path, per_class: int | None) -> Path:
    sys.path.insert(0, str(C.ROOT / "examples"))
    from make_digits import write_digits as _write

    return _write(out, per_class)


def load_samples(location: str, max_per_class: int | None):
    from automl_vision.data.sources import load_dataset
    from automl_vision.plugins import get_plugin_manager

    pm = get_plugin_manager()
    ds = load_dataset(location, pm)
    if max_per_class:
        kept, seen = [], {}
        for s in ds.samples:
            if seen.get(s.label, 0) < max_per_class:
                seen[s.label] = seen.get(s.label, 0) + 1
                kept.append(s)
        ds.samples = kept
    return ds, pm


def build_model(name: str, pm, in_chans: int, image_size: int, num_classes: int, seed: int) -> torch.nn.Module:
    family, params = MODELS[name]
    torch.manual_seed(seed)  # the same initial weights for both runners
    return pm.model_families.get(family).build(params, in_chans=in_chans, image_size=image_size, num_classes=num_classes)


def sync(path) -> None:
    if path.torch_device.type == "cuda":
        torch.cuda.synchronize()


# --------------------------------------------------------------------------------------
# The plain loop: what a competent user writes by hand for the same job.
# --------------------------------------------------------------------------------------
def plain_loop(model: torch.nn.Module, data, path, epochs: int, batch_size: int, seed: int) -> dict[str, Any]:
    device = path.torch_device
    fmt = torch.channels_last if path.channels_last else torch.contiguous_format
    model = model.to(device=device, memory_format=fmt)
    step_model = torch.compile(model) if getattr(path, "compile", False) else model
    x, y = data.x_train.to(device), data.y_train.to(device)
    x_val, y_val = data.x_val.to(device), data.y_val.numpy()
    mean = torch.tensor(data.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(data.std, device=device).view(1, -1, 1, 1)
    n = x.shape[0]
    bs = max(2, min(batch_size, n))
    steps = max(1, n // bs)
    total = steps * epochs
    warm = max(1, int(total * WARMUP))
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * min(1.0, (s - warm) / max(1, total - warm))))
    )
    scaler = torch.amp.GradScaler(device.type, enabled=(path.precision == "fp16"))
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    train_seconds, history = [], []
    for _epoch in range(epochs):
        model.train()
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=gen).to(device)
        loss_sum = torch.zeros((), device=device)
        for b in range(steps):
            idx = perm[b * bs : (b + 1) * bs]
            xb = ((x[idx].float().div_(255.0) - mean) / std).contiguous(memory_format=fmt)
            with path.autocast():
                logits = step_model(xb)
            loss = F.cross_entropy(logits.float(), y[idx])
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            loss_sum += loss.detach()
        train_loss = float(loss_sum) / steps
        sync(path)
        train_seconds.append(time.perf_counter() - t0)
        model.eval()
        with torch.no_grad():
            probs = []
            for i in range(0, x_val.shape[0], 256):
                xb = ((x_val[i : i + 256].float().div_(255.0) - mean) / std).contiguous(memory_format=fmt)
                with path.autocast():
                    probs.append(torch.softmax(model(xb).float(), dim=1).cpu())
            acc = float((torch.cat(probs).argmax(1).numpy() == y_val).mean())
        history.append({"train_loss": train_loss, "val_accuracy": acc})
    return {"train_seconds": train_seconds, "images": steps * bs * epochs, "val_accuracy": history[-1]["val_accuracy"]}


def engine_run(model: torch.nn.Module, data, path, epochs: int, batch_size: int, seed: int, family: str,
               params: dict, image_size: int) -> dict[str, Any]:
    """The trial runner as a trial calls it: with an epoch callback and the budget check."""
    from automl_vision.training.augment import AugPolicy
    from automl_vision.training.trainer import TrialConfig, train

    cfg = TrialConfig(family=family, model_params=params, image_size=image_size, batch_size=batch_size,
                      optimizer="adamw", lr=LR, weight_decay=WEIGHT_DECAY, schedule="cosine", warmup=WARMUP,
                      epochs=epochs, aug_preset="none", aug=AugPolicy(), seed=seed)
    y_val = data.y_val.numpy()
    accs: list[float] = []
    deadline = time.time() + 10 * 3600

    def on_epoch(epoch, probs, record):
        accs.append(float((probs.argmax(1) == y_val).mean()))

    def abort():
        return "time budget reached" if time.time() > deadline else None

    result = train(model, cfg, data, path, on_epoch=on_epoch, abort=abort)
    sync(path)
    n = data.x_train.shape[0]
    bs = max(2, min(batch_size, n))
    return {
        "train_seconds": [h["train_seconds"] for h in result.history],
        "eval_seconds": [h["eval_seconds"] for h in result.history],
        "images": (n // bs) * bs * epochs,
        "val_accuracy": accs[-1],
    }


def tensors(prepared, image_size: int):
    """The cached splits as the search's trials get them (``Objective.tensors``)."""
    from automl_vision.training.trainer import TensorData

    tr, va = prepared.split_index["train"], prepared.split_index["val"]
    x_train, x_val = prepared.training_arrays(tr, va, image_size)
    labels = prepared.labels
    return TensorData.from_arrays(x_train, labels[tr], x_val, labels[va], len(prepared.classes))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", help="class-per-folder image tree (default: scikit-learn's digits written as PNGs)")
    ap.add_argument("--image-size", type=int, help="input pixels (default: 32 for digits, 64 for --data)")
    ap.add_argument("--models", default="cnn,resnet18", help="comma-separated: cnn, resnet18")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions of each runner (alternating)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-per-class", type=int, help="use at most this many images per class")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--channels-last", default="auto")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's, one per core)")
    ap.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up run of each runner")
    ap.add_argument("--quick", action="store_true", help="tiny smoke setting (seconds; figures mean nothing)")
    ap.add_argument("--workdir", help="where the cache is built (default: a temporary folder, removed)")
    ap.add_argument("--out", help="results JSON (default: benchmarks/results/engine.json; with --quick results/quick/engine.json)")
    args = ap.parse_args(argv)
    if args.quick:
        args.epochs, args.reps, args.batch_size = 2, 1, 16
        args.max_per_class = args.max_per_class or 6
        args.image_size = args.image_size or 16
        args.no_warmup = True
        # the measured bf16 path compiles oneDNN kernels for every new shape: seconds of nothing here
        args.precision = "fp32" if args.precision == "auto" else args.precision
        args.channels_last = "off" if args.channels_last == "auto" else args.channels_last
        torch.set_num_threads(1)  # a smoke run on a busy machine: no OpenMP threads spinning for a core
    if args.threads:
        torch.set_num_threads(args.threads)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    for m in models:
        if m not in MODELS:
            ap.error(f"--models: unknown model {m!r}; expected some of {', '.join(MODELS)}")

    from automl_vision.data.prepare import prepare
    from automl_vision.rundir import RunDir
    from automl_vision.training.device import choose

    info = C.machine()
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-engine-"))
    try:
        if args.data:
            location = args.data
            image_size = args.image_size or 64
        else:
            location = str(write_digits(work / "digits", args.max_per_class))
            image_size = args.image_size or 32
        path = choose(args.device, args.precision, args.channels_last)
        ds, pm = load_samples(location, args.max_per_class)
        run_dir = RunDir(work / "run")
        shutil.rmtree(run_dir.path, ignore_errors=True)
        run_dir.path.mkdir(parents=True)
        with C.MemoryWatch() as mem_prep, C.Stopwatch() as sw_prep:
            prepared = prepare(ds, run_dir, image_size, seed=0)
        with C.Stopwatch() as sw_tensors:
            data = tensors(prepared, image_size)
        n_train, n_val = data.x_train.shape[0], data.x_val.shape[0]
        print(f"{len(prepared.samples)} images ({n_train} train, {n_val} val) at {image_size}px, "
              f"{prepared.in_chans} channel(s); path: {path.describe()}", flush=True)
        print(f"scan+decode+cache: {sw_prep.seconds:.2f}s; cache -> tensors: {sw_tensors.seconds:.2f}s", flush=True)

        results: dict[str, Any] = {}
        for name in models:
            family, params = MODELS[name]
            mk = lambda: build_model(name, pm, prepared.in_chans, image_size, data.num_classes, 0)  # noqa: E731
            runners = {
                "automl_vision": lambda m: engine_run(m, data, path, args.epochs, args.batch_size, 0, family, params, image_size),
                "plain_loop": lambda m: plain_loop(m, data, path, args.epochs, args.batch_size, 0),
            }
            if not args.no_warmup:  # kernels, allocator and caches warm for both
                for fn in runners.values():
                    fn(mk())
            runs: dict[str, list[dict[str, Any]]] = {k: [] for k in runners}
            for rep in range(args.reps):
                order = list(runners) if rep % 2 == 0 else list(reversed(list(runners)))
                for key in order:
                    model = mk()
                    cpu0 = time.process_time()
                    with C.MemoryWatch() as mem, C.Stopwatch() as sw:
                        out = runners[key](model)
                    # CPU time of the process: less disturbed than wall time when others share the cores
                    out["cpu_seconds"] = time.process_time() - cpu0
                    out["wall_seconds"] = sw.seconds
                    out["wall_images_per_second"] = out["images"] / sw.seconds
                    out["train_images_per_second"] = out["images"] / sum(out["train_seconds"])
                    out["memory"] = mem.result()
                    out["load_average"] = C.load_average()
                    runs[key].append(out)
                    print(f"  {name} rep {rep + 1}/{args.reps} {key:14s} {out['wall_images_per_second']:8.1f} img/s "
                          f"(train phase {out['train_images_per_second']:.1f}), val acc {out['val_accuracy']:.3f}",
                          flush=True)
            summary = {}
            for key, rs in runs.items():
                summary[key] = {
                    "wall_images_per_second": C.spread([r["wall_images_per_second"] for r in rs]),
                    "train_images_per_second": C.spread([r["train_images_per_second"] for r in rs]),
                    "val_accuracy": C.spread([r["val_accuracy"] for r in rs]),
                    "peak_anon_mib": C.median([r["memory"].get("peak_anon_mib_above_start", float("nan")) for r in rs]),
                    "peak_rss_mib": C.median([r["memory"].get("peak_rss_mib_above_start", float("nan")) for r in rs]),
                }
            # ratio per repetition pair, then the median (pairs ran back to back)
            ratios_wall = [a["wall_images_per_second"] / b["wall_images_per_second"]
                           for a, b in zip(runs["automl_vision"], runs["plain_loop"])]
            ratios_train = [a["train_images_per_second"] / b["train_images_per_second"]
                            for a, b in zip(runs["automl_vision"], runs["plain_loop"])]
            ratios_cpu = [b["cpu_seconds"] / a["cpu_seconds"] for a, b in zip(runs["automl_vision"], runs["plain_loop"])]
            first = runs["automl_vision"][0]
            later = [t + e for r in runs["automl_vision"] for t, e in
                     zip(r["train_seconds"][1:], r["eval_seconds"][1:])]
            results[name] = {
                "family": family,
                "params": params,
                "runs": runs,
                "summary": summary,
                "ratio_wall": C.spread(ratios_wall),
                "ratio_train_phase": C.spread(ratios_train),
                "ratio_cpu_time": C.spread(ratios_cpu),
                "meets_target_0_95": C.median(ratios_wall) >= 0.95,
                "first_epoch": {
                    "decode_and_cache_seconds": sw_prep.seconds,
                    "cache_to_tensors_seconds": sw_tensors.seconds,
                    "epoch1_seconds": first["train_seconds"][0] + first["eval_seconds"][0],
                    "first_epoch_total_seconds": sw_prep.seconds + sw_tensors.seconds + first["train_seconds"][0]
                    + first["eval_seconds"][0],
                    "later_epoch_median_seconds": C.median(later) if later else float("nan"),
                },
            }

        rows = []
        for name, r in results.items():
            s = r["summary"]
            rows.append([name, s["automl_vision"]["wall_images_per_second"]["median"],
                         s["plain_loop"]["wall_images_per_second"]["median"], r["ratio_wall"]["median"],
                         f"{r['ratio_wall']['min']:.3f}-{r['ratio_wall']['max']:.3f}", r["ratio_train_phase"]["median"],
                         r["ratio_cpu_time"]["median"],
                         s["automl_vision"]["val_accuracy"]["median"], s["plain_loop"]["val_accuracy"]["median"],
                         s["automl_vision"]["peak_anon_mib"], s["plain_loop"]["peak_anon_mib"]])
        print()
        print(C.table(["model", "automl-vision img/s", "plain loop img/s", "ratio (median)", "ratio range",
                       "ratio (train phase)", "ratio (CPU time)", "val acc (av)", "val acc (plain)", "peak MiB (av)", "peak MiB (plain)"], rows))
        rows2 = [[name, r["first_epoch"]["decode_and_cache_seconds"], r["first_epoch"]["cache_to_tensors_seconds"],
                  r["first_epoch"]["epoch1_seconds"], r["first_epoch"]["first_epoch_total_seconds"],
                  r["first_epoch"]["later_epoch_median_seconds"]] for name, r in results.items()]
        print()
        print(C.table(["model", "scan+decode+cache s", "cache->tensors s", "epoch 1 s", "first epoch total s",
                       "later epoch s (median)"], rows2))
        payload = {
            "benchmark": "engine",
            "machine": info,
            "load_average_at_end": C.load_average(),
            "quick": args.quick,
            "settings": {"data": args.data or "sklearn digits (PNG)", "image_size": image_size, "epochs": args.epochs,
                         "reps": args.reps, "batch_size": args.batch_size, "max_per_class": args.max_per_class,
                         "n_train": n_train, "n_val": n_val, "exec_path": path.as_dict(), "warmup": not args.no_warmup},
            "prepare_memory": mem_prep.result(),
            "process_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "models": results,
        }
        out = C.write_results("engine", payload, args.out)
        print(f"\nresults: {out}")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
