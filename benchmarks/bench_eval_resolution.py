"""Evaluation resolution: would finished searches score more if they saw larger eval photos?

The question behind it (issue 18, "resolution as part of the search"): a network trained on
random-resized crops of S px (a crop keeps 35-100% of the photo's area with the search's
medium augmentation) sees objects about 1.23x larger in training than in a whole photo
resized to S. "FixRes" (Touvron et al., 2019) evaluates at a higher resolution to undo that
discrepancy. This script measures it on finished runs, without training anything: each run
directory's deliverable (``automl_vision.predict.load_deliverable``, exactly what ``predict``
uses) scores the evaluation folder plainly and then, for each factor k, in two ways:

* ``decode``: every eval photo decoded at round(k x S / 8) x 8 px from the original file
  (the network gets more real detail as well as larger objects);
* ``upsample``: decoded at S as ``predict`` does, then upsampled bilinearly to the same size
  in front of each network (what a model could do inside its own graph, keeping the run
  directory's contract: images are decoded at the model's ``image_size``).

An ensemble whose members take several sizes (say one member with an ``eval_size`` and one
without) scales each size by the same factor.

Run directories named as ``bench_small_data.py --workdir`` names them
(``<set>-<budget>-s<seed>-<arm>``) find their eval folder under ``--data-root``; ``--eval``
gives one folder for every run instead.

Examples::

    .venv/bin/python benchmarks/bench_eval_resolution.py --data-root /work/bench-data /tmp/bench/runs/*-default
    .venv/bin/python benchmarks/bench_eval_resolution.py --eval SET/eval --factors 1.125,1.25 RUN_DIR
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
from bench_small_data import image_files  # noqa: E402

import numpy as np  # noqa: E402

NAME = re.compile(r"^(?P<set>.+)-(?P<budget>\d+[smh])-s(?P<seed>\d+)-(?P<arm>[a-z]+)$")
MODES = ("decode", "upsample")


def side(size: int, k: float) -> int:
    return size if k == 1.0 else max(size, int(round(size * k / 8.0)) * 8)


def score(rd: Path, eval_dir: Path, factors: list[float]) -> dict[str, Any]:
    import torch.nn.functional as F

    from automl_vision.predict import decode_batch, load_deliverable

    d = load_deliverable(rd)
    files = image_files(eval_dir)
    labels = np.array([d.classes.index(c) if c in d.classes else -1 for _f, c in files])
    paths = [f for f, _c in files]
    module = d.module
    upsample_by: dict[str, float] = {}

    def pre(member, args):  # upsample in front of each network (mode "upsample"), by its own side
        k = upsample_by.get("k", 1.0)
        x = args[0]
        s = side(x.shape[-1], k)
        return (F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False),) if s > x.shape[-1] else None

    hooks = [m.register_forward_pre_hook(pre) for m in module.members]

    def accuracy(sizes: list[int]) -> float:
        arrays, ok, _bad = decode_batch(paths, sizes, module.in_chans)
        correct = np.zeros(len(paths), dtype=bool)
        if ok:
            correct[ok] = module.probs(arrays).argmax(1) == labels[ok]
        return float(correct.mean())

    # an ensemble whose members take several sizes scales every size by the same factor
    out: dict[str, float] = {"plain": accuracy(module.sizes)}
    try:
        for k in factors:
            out[f"decode@{k:g}"] = accuracy([side(s, k) for s in module.sizes])
            upsample_by["k"] = k
            out[f"upsample@{k:g}"] = accuracy(module.sizes)
            upsample_by.clear()
    finally:
        for h in hooks:
            h.remove()
    return {"sizes": module.sizes, "deliverable": d.describe(), "eval_images": len(paths), "accuracy": out}


def summarise(runs: list[dict[str, Any]], factors: list[float]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for mode in MODES:
        for k in factors:
            key = f"{mode}@{k:g}"
            deltas = [(r["set"], 100 * (r["accuracy"][key] - r["accuracy"]["plain"])) for r in runs]
            per_set: dict[str, list[float]] = {}
            for s, v in deltas:
                per_set.setdefault(s, []).append(v)
            summary[key] = {
                "mean_points": float(np.mean([v for _s, v in deltas])) if deltas else float("nan"),
                "runs_up": sum(v > 1e-9 for _s, v in deltas), "runs_down": sum(v < -1e-9 for _s, v in deltas),
                "runs": len(deltas),
                "per_set_mean_points": {s: float(np.mean(v)) for s, v in sorted(per_set.items())},
            }
    return summary


def markdown(summary: dict[str, Any]) -> str:
    sets = sorted({s for v in summary.values() for s in v["per_set_mean_points"]})
    rows = [[key, v["mean_points"], f"{v['runs_up']}/{v['runs_down']}/{v['runs']}",
             *[v["per_set_mean_points"].get(s, float("nan")) for s in sets]] for key, v in summary.items()]
    return C.table(["eval input", "mean change (points)", "runs up/down/all", *sets], rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="finished run directories")
    ap.add_argument("--data-root", help="folder of sets <set>/eval, for runs named <set>-<budget>-s<seed>-<arm>")
    ap.add_argument("--eval", help="one eval folder (class-per-folder) for every run")
    ap.add_argument("--factors", default="1.125,1.25", help="resolution factors, comma-separated (default 1.125,1.25)")
    ap.add_argument("--out", help="results JSON (default results/eval_resolution.json)")
    args = ap.parse_args(argv)
    try:
        factors = [float(f) for f in args.factors.split(",") if f.strip()]
    except ValueError:
        ap.error(f"--factors {args.factors!r}: give numbers such as 1.125,1.25")
    if not factors or any(not 1.0 < k <= 2.0 for k in factors):
        ap.error(f"--factors {args.factors!r}: each factor must be above 1 and at most 2")
    if not args.eval and not args.data_root:
        ap.error("give --data-root (runs named <set>-<budget>-s<seed>-<arm>) or --eval FOLDER")

    runs: list[dict[str, Any]] = []
    for text in args.runs:
        rd = Path(text)
        m = NAME.match(rd.name)
        info = m.groupdict() if m else {"set": rd.name, "budget": "", "seed": "", "arm": ""}
        eval_dir = Path(args.eval) if args.eval else Path(args.data_root) / info["set"] / "eval"
        if not eval_dir.is_dir():
            ap.error(f"{rd}: no eval folder {eval_dir}; give --eval or name the run <set>-<budget>-s<seed>-<arm>")
        row = {**info, "run": rd.name, **score(rd, eval_dir, factors)}
        runs.append(row)
        print(rd.name, row["sizes"], " ".join(f"{k} {v:.3f}" for k, v in row["accuracy"].items()), flush=True)
    summary = summarise(runs, factors)
    table = markdown(summary)
    print(table)
    payload = {"benchmark": "eval_resolution", "machine": C.machine(), "quick": False,
               "settings": {"factors": factors, "modes": list(MODES)}, "runs": runs, "summary": summary,
               "markdown": table}
    path = C.write_results("eval_resolution", payload, args.out)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
