"""Data pipeline: decode-and-cache throughput, epochs from the cache, memory beyond a budget.

Generates photo-like JPEGs of a realistic size (500x375 by default, smooth colour fields,
shapes and sensor-like noise; about 35 KB each at quality 85, close to real photos of
that size) and measures:

1. the first-epoch step, images per second against the number of files: decoding into
   the cache alone (``automl_vision.data.cache.load_or_build``) and the whole data
   preparation (header scan, hashing for duplicates, decode, split: ``prepare``);
2. a later epoch: batches from the cache (the memory-mapped array, and the in-memory
   tensor a trial holds) against decoding every JPEG again each epoch, as a plain
   folder-of-JPEGs loader does (same decoder, same number of threads);
3. peak memory while caching a dataset larger than a memory budget (``--budget-mb``):
   the cache is a memory map written page by page, so the process's own (anonymous)
   memory stays small while file-backed pages, which the kernel may drop, grow; and
   what a trial then holds: a training split over the trial's memory limit (here the
   budget) is written once as its own memory-mapped file and read batch by batch, one
   under it is copied into memory.

``--data DIR`` measures a real class-per-folder tree as well. ``--quick`` is the smoke
setting.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import report  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402


def make_jpegs(out: Path, n: int, width: int, height: int, seed: int = 0) -> list[Path]:
    """``n`` photo-like JPEGs in two class folders (kept and reused when already there)."""
    from PIL import Image, ImageDraw

    paths = [out / ("a" if i % 2 == 0 else "b") / f"img_{i:05d}.jpg" for i in range(n)]

    def one(i: int) -> None:
        p = paths[i]
        if p.exists():
            return
        rng = np.random.default_rng(seed * 1_000_003 + i)
        base = Image.fromarray(rng.integers(0, 256, (9, 12, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
        draw = ImageDraw.Draw(base)
        for _ in range(6):
            x, y, r = int(rng.integers(0, width)), int(rng.integers(0, height)), int(rng.integers(10, 80))
            fill = tuple(int(v) for v in rng.integers(0, 256, 3))
            if rng.random() < 0.5:
                draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
            else:
                draw.rectangle([x - r, y - r // 2, x + r, y + r // 2], fill=fill)
        noisy = np.asarray(base, dtype=np.int16) + rng.normal(0, 6, (height, width, 3)).astype(np.int16)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(".tmp")
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(tmp, "JPEG", quality=85)
        os.replace(tmp, p)

    for cls in ("a", "b"):
        (out / cls).mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(one, range(n)))
    return paths


def samples_of(paths: list[Path]):
    from automl_vision.types import Sample

    return [Sample(key=f"{p.parent.name}/{p.name}", label=0 if p.parent.name == "a" else 1, path=p) for p in paths]


def cache_threads() -> int:
    # the same default as automl_vision.data.cache.load_or_build
    return max(1, min(8, os.cpu_count() or 1))


def epoch_from_jpeg(samples, image_size: int, batch_size: int, mean: torch.Tensor, std: torch.Tensor, seed: int) -> int:
    """One epoch decoding every file again (threads decode a batch, then it is normalised)."""
    from automl_vision.data.images import decode

    order = np.random.default_rng(seed).permutation(len(samples))
    n = 0
    with ThreadPoolExecutor(max_workers=cache_threads()) as pool:
        for b in range(0, len(order), batch_size):
            imgs = list(pool.map(lambda i: decode(samples[i].path, image_size, 3), order[b : b + batch_size]))
            x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2)
            xb = (x.float().div_(255.0) - mean) / std
            n += xb.shape[0]
    return n


def epoch_from_array(arr, batch_size: int, mean: torch.Tensor, std: torch.Tensor, seed: int) -> int:
    """One epoch of batches gathered from the cache (memory map or in-memory array)."""
    order = np.random.default_rng(seed).permutation(arr.shape[0])
    n = 0
    for b in range(0, len(order), batch_size):
        idx = np.sort(order[b : b + batch_size])  # sorted: sequential reads from the map
        x = torch.from_numpy(np.asarray(arr[idx])).permute(0, 3, 1, 2)
        xb = (x.float().div_(255.0) - mean) / std
        n += xb.shape[0]
    return n


def epoch_from_tensor(x: torch.Tensor, batch_size: int, mean: torch.Tensor, std: torch.Tensor, seed: int) -> int:
    """One epoch as the trainer runs it: index the in-memory uint8 tensor, normalise."""
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    n = 0
    for b in range(0, x.shape[0], batch_size):
        xb = (x[perm[b : b + batch_size]].float().div_(255.0) - mean) / std
        n += xb.shape[0]
    return n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--counts", default="250,500,1000,2000", help="numbers of files to cache (comma-separated)")
    ap.add_argument("--jpeg-size", default="500x375", help="generated JPEG size WxH")
    ap.add_argument("--image-size", type=int, default=64, help="cache resolution (the CPU default for photos)")
    ap.add_argument("--epochs", type=int, default=2, help="epochs timed for each later-epoch source (median)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--budget-mb", type=float, default=256.0, help="memory budget the big cache must exceed")
    ap.add_argument("--data", help="also measure a real class-per-folder tree (e.g. cats-vs-dogs)")
    ap.add_argument("--quick", action="store_true", help="tiny smoke setting (seconds; figures mean nothing)")
    ap.add_argument("--workdir", help="keeps the generated JPEGs for the next run (default: temporary, removed)")
    ap.add_argument("--out", help="results JSON (default: benchmarks/results/data_pipeline.json; with --quick results/quick/data_pipeline.json)")
    args = ap.parse_args(argv)
    if args.quick:
        args.counts, args.epochs, args.budget_mb = "6,12", 1, 0.5
        args.image_size = min(args.image_size, 32)
    try:
        counts = sorted({int(c) for c in args.counts.split(",") if c.strip()})
        width, height = (int(v) for v in args.jpeg_size.lower().split("x"))
    except ValueError:
        ap.error("--counts takes numbers like 250,500; --jpeg-size takes WxH like 500x375")
    if not counts or min(counts) < 2:
        ap.error("--counts: give numbers of at least 2")

    from automl_vision.data import cache as cache_mod
    from automl_vision.data.prepare import prepare
    from automl_vision.data.sources import load_dataset
    from automl_vision.plugins import get_plugin_manager
    from automl_vision.rundir import RunDir
    from automl_vision.training.inference import channel_stats, nhwc_to_tensor

    info = C.machine()
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-data-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        with C.Stopwatch() as sw_gen:
            paths = make_jpegs(work / "jpegs", max(counts), width, height)
        sizes_kb = [p.stat().st_size / 1024 for p in paths]
        print(f"{len(paths)} JPEGs {width}x{height}, mean {np.mean(sizes_kb):.1f} KB "
              f"(generated or found in {sw_gen.seconds:.1f}s); {cache_threads()} decode threads", flush=True)
        pm = get_plugin_manager()

        # 1. decode + cache against the number of files
        scaling = []
        for n in counts:
            samples = samples_of(paths[:n])
            cdir = work / "cache" / f"n{n}"
            shutil.rmtree(cdir, ignore_errors=True)
            with C.Stopwatch() as sw:
                cache_mod.load_or_build(samples, cdir, args.image_size, 3)
            # the whole preparation of a folder with n files: scan, hash, decode, split
            tree = work / "trees" / f"n{n}"
            if not tree.exists():
                for p in paths[:n]:
                    (tree / p.parent.name).mkdir(parents=True, exist_ok=True)
                    os.link(p, tree / p.parent.name / p.name)
            rd = RunDir(work / "runs" / f"n{n}")
            shutil.rmtree(rd.path, ignore_errors=True)
            rd.path.mkdir(parents=True)
            ds = load_dataset(str(tree), pm)
            with C.Stopwatch() as sw_prep:
                prepare(ds, rd, args.image_size, seed=0)
            row = {"files": n, "cache_seconds": sw.seconds, "cache_images_per_second": n / sw.seconds,
                   "prepare_seconds": sw_prep.seconds, "prepare_images_per_second": n / sw_prep.seconds,
                   "load_average": C.load_average()}
            scaling.append(row)
            print(f"  {n:6d} files: decode+cache {row['cache_images_per_second']:7.1f} img/s, "
                  f"whole preparation {row['prepare_images_per_second']:7.1f} img/s", flush=True)

        # 2. later epochs: cache vs decoding every JPEG again
        n = max(counts)
        samples = samples_of(paths[:n])
        arr, _ = cache_mod.load_or_build(samples, work / "cache" / f"n{n}", args.image_size, 3)
        m, s = channel_stats(arr)
        mean = torch.tensor(m).view(1, -1, 1, 1)
        std = torch.tensor(s).view(1, -1, 1, 1)
        x_mem = nhwc_to_tensor(np.array(arr))  # a copy: np.asarray of a memory map is still the map
        epochs: dict[str, list[float]] = {"decode JPEG every epoch": [], "cache (memory map)": [],
                                          "cache (in-memory tensor, as a trial)": []}
        for e in range(args.epochs):
            with C.Stopwatch() as sw:
                k = epoch_from_jpeg(samples, args.image_size, args.batch_size, mean, std, e)
            epochs["decode JPEG every epoch"].append(k / sw.seconds)
            with C.Stopwatch() as sw:
                k = epoch_from_array(arr, args.batch_size, mean, std, e)
            epochs["cache (memory map)"].append(k / sw.seconds)
            with C.Stopwatch() as sw:
                k = epoch_from_tensor(x_mem, args.batch_size, mean, std, e)
            epochs["cache (in-memory tensor, as a trial)"].append(k / sw.seconds)
        later = {k: C.spread(v) for k, v in epochs.items()}
        decode_ips = later["decode JPEG every epoch"]["median"]
        for k, v in later.items():
            v["speedup_vs_decoding"] = v["median"] / decode_ips
            print(f"  later epoch, {k:38s} {v['median']:10.1f} img/s ({v['speedup_vs_decoding']:.1f}x)", flush=True)
        del x_mem, arr

        # 3. a cache larger than the memory budget
        budget = args.budget_mb * 1024 * 1024
        big_size = None
        for size in (32, 48, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448):
            if n * size * size * 3 > 1.15 * budget:
                big_size = size
                break
        big: dict[str, Any] = {"budget_mib": args.budget_mb, "files": n}
        if big_size is None:
            big["note"] = f"{n} files cannot make a cache larger than the budget at up to 448 px; raise --counts"
        else:
            cdir = work / "cache" / f"big{big_size}"
            shutil.rmtree(cdir, ignore_errors=True)
            with C.MemoryWatch() as mem_build, C.Stopwatch() as sw:
                arr, _ = cache_mod.load_or_build(samples, cdir, big_size, 3)
            with C.MemoryWatch() as mem_stream:
                epoch_from_array(arr, args.batch_size, torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1), 0)
            split = np.arange(0, n, 10 / 7).astype(int)  # a 70% "training split"
            zero, one = torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1)
            # a trial whose split is over its memory limit (here the budget) reads it from a
            # memory-mapped subset file (cache.gather); one under it holds a copy
            with C.MemoryWatch() as mem_trial, C.Stopwatch() as sw_gather:
                x_split = cache_mod.gather(arr, split, cdir, int(budget))
            with C.MemoryWatch() as mem_trial_epoch, C.Stopwatch() as sw_epoch:
                k = epoch_from_tensor(nhwc_to_tensor(x_split), args.batch_size, zero, one, 0)
            streamed = isinstance(x_split, np.memmap)
            del x_split
            with C.MemoryWatch() as mem_held:
                x_held = nhwc_to_tensor(np.asarray(arr[split]))
            big.update(
                image_size=big_size,
                cache_mib=round(arr.nbytes / 2**20, 1),
                build_seconds=sw.seconds,
                build_memory=mem_build.result(),
                stream_epoch_memory=mem_stream.result(),
                trial_train_split_mib=round(x_held.numel() / 2**20, 1),
                trial_split_streamed=streamed,
                trial_subset_seconds=sw_gather.seconds,
                trial_subset_memory=mem_trial.result(),
                trial_epoch_memory=mem_trial_epoch.result(),
                trial_epoch_images_per_second=k / sw_epoch.seconds,
                trial_load_memory=mem_held.result(),
            )
            del x_held, arr
            print(f"  cache of {n} images at {big_size}px = {big['cache_mib']} MiB (budget {args.budget_mb} MiB): "
                  f"peak anonymous memory while building +{big['build_memory'].get('peak_anon_mib_above_start')} MiB, "
                  f"file-backed +{big['build_memory'].get('peak_file_mib_above_start')} MiB", flush=True)

        real = None
        if args.data:
            ds = load_dataset(args.data, pm)
            rd = RunDir(work / "runs" / "real")
            shutil.rmtree(rd.path, ignore_errors=True)
            rd.path.mkdir(parents=True)
            with C.Stopwatch() as sw_prep:
                prepare(ds, rd, args.image_size, seed=0)
            real = {"data": args.data, "files": len(ds.samples), "prepare_seconds": sw_prep.seconds,
                    "prepare_images_per_second": len(ds.samples) / sw_prep.seconds}
            print(f"  real data {args.data}: {len(ds.samples)} files, whole preparation "
                  f"{real['prepare_images_per_second']:.1f} img/s", flush=True)

        print()
        print(C.table(["files", "decode+cache img/s", "whole preparation img/s", "decode+cache s", "preparation s"],
                      [[r["files"], r["cache_images_per_second"], r["prepare_images_per_second"], r["cache_seconds"],
                        r["prepare_seconds"]] for r in scaling]))
        print()
        print(C.table(["later epoch from", "img/s (median)", "x decoding"],
                      [[k, v["median"], v["speedup_vs_decoding"]] for k, v in later.items()]))
        if big_size is not None:
            print()
            print(C.table(["step", "peak anonymous MiB", "peak file-backed MiB"], report.memory_rows(big)))
        payload = {
            "benchmark": "data_pipeline",
            "machine": info,
            "load_average_at_end": C.load_average(),
            "quick": args.quick,
            "settings": {"jpeg_size": [width, height], "jpeg_mean_kb": float(np.mean(sizes_kb)), "image_size": args.image_size,
                         "counts": counts, "epochs": args.epochs, "batch_size": args.batch_size,
                         "decode_threads": cache_threads()},
            "decode_and_cache": scaling,
            "later_epochs": later,
            "beyond_budget": big,
            "real_data": real,
        }
        out = C.write_results("data_pipeline", payload, args.out)
        print(f"\nresults: {out}")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
