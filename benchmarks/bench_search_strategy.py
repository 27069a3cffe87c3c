"""Search strategy on the same budget: TPE vs random search vs TPE with the warm-start portfolio.

Every arm runs the real ``automl-vision search`` with the same data, the same time
budget, the same split (seed 0 of the data) and the same search seeds:

* ``portfolio``: the default, the portfolio's configurations first, then TPE;
* ``tpe``: TPE from its random start-up trials (``--no-portfolio``);
* ``random``: Optuna's random sampler (``--sampler random``, no portfolio).

Reported per arm: best validation accuracy of any trial, the deliverable's test
accuracy, trials run, and the *anytime* curve: the best validation accuracy reached by
25 %, 50 %, 75 % and 100 % of the search time (from the trials' ``status.json`` finish
times), which is where a warm start shows. Median over seeds.

    python benchmarks/bench_search_strategy.py --quick          # seconds: a smoke run
    python benchmarks/bench_search_strategy.py --data ../shared/data/cats-vs-dogs --budget 5m --seeds 0,1,2

Without ``--data``, scikit-learn's digits are written as PNG folders and used (easy:
all arms end near the same accuracy, the anytime curve still differs). Results go to
``benchmarks/results/search_strategy.json`` (``results/quick/`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

ARMS = {
    "portfolio": [],
    "tpe": ["--no-portfolio"],
    "random": ["--sampler", "random"],
}
FRACTIONS = (0.25, 0.5, 0.75, 1.0)


def write_digits(out: Path) -> Path:
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    for i, (img, label) in enumerate(zip(d.images, d.target)):
        folder = out / str(int(label))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((np.asarray(img) * (255 / 16)).clip(0, 255).astype("uint8"), "L").save(folder / f"{i:04d}.png")
    return out


def anytime(run_dir: Path, start: float, end: float) -> dict[str, float | None]:
    """Best validation accuracy reached by each fraction of the search time."""
    done = []
    for status in (run_dir / "trials").glob("*/status.json"):
        rec = json.loads(status.read_text())
        if rec.get("state") == "COMPLETE" and rec.get("value") is not None:
            done.append((rec["finished"], float(rec["value"])))
    out: dict[str, float | None] = {}
    for f in FRACTIONS:
        t = start + f * (end - start)
        vals = [v for fin, v in done if fin <= t]
        out[f"{int(f * 100)}%"] = max(vals) if vals else None
    return out


def run_arm(data: Path, out: Path, arm: str, seed: int, budget: list[str], extra: list[str]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "automl_vision.cli", "search", str(data), "--out", str(out), *budget,
           "--seed", str(seed), "--plain", *ARMS[arm], *extra]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=C.ROOT)
    t1 = time.time()
    if proc.returncode != 0:
        raise SystemExit(f"{arm} seed {seed} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    report = json.loads((out / "final" / "report.json").read_text())
    statuses = [json.loads(p.read_text()) for p in (out / "trials").glob("*/status.json")]
    complete = [s for s in statuses if s.get("state") == "COMPLETE"]
    return {
        "arm": arm,
        "seed": seed,
        "trials": len(statuses),
        "complete": len(complete),
        "best_val": max((s["value"] for s in complete), default=None),
        "test_accuracy": ((report.get("ensemble") or {}).get("test") if report.get("deliverable") == "ensemble"
                          else report.get("best_test") or {}).get("accuracy"),
        "anytime_val": anytime(out, t0, t1),
        "seconds": round(t1 - t0, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", help="class-per-folder tree (default: scikit-learn's digits written as PNGs)")
    ap.add_argument("--budget", default="3m", help="time budget per search (default: 3m)")
    ap.add_argument("--seeds", default="0,1,2", help="search seeds (default: 0,1,2)")
    ap.add_argument("--arms", default=",".join(ARMS), help=f"arms to run (default: {','.join(ARMS)})")
    ap.add_argument("--quick", action="store_true",
                    help="tiny smoke setting: 5 trials of small CNNs at 16 px per arm (a minute or two; figures mean nothing)")
    ap.add_argument("--out", help="results JSON (default: benchmarks/results/search_strategy.json)")
    args = ap.parse_args()
    extra: list[str] = []
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    budget = ["--time-budget", args.budget]
    if args.quick:  # a fixed number of trials: on a busy machine a tiny time budget fits no trial
        budget, seeds = ["--n-trials", "5"], [0]
        extra = ["--image-size", "16", "--models", "cnn", "--max-epochs", "2"]
    arms = [a for a in args.arms.split(",") if a]
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-strategy-") as tmp:
        data = Path(args.data) if args.data else write_digits(Path(tmp) / "digits")
        for seed in seeds:
            for arm in arms:  # interleaved, so a change in machine load hits every arm alike
                res = run_arm(data, Path(tmp) / f"{arm}-{seed}", arm, seed, budget, extra)
                print(f"{arm:9s} seed {seed}: best val {res['best_val']}, test {res['test_accuracy']}, "
                      f"{res['trials']} trials, anytime {res['anytime_val']}", flush=True)
                results.append(res)
    summary = {}
    for arm in arms:
        rows = [r for r in results if r["arm"] == arm]
        summary[arm] = {
            "best_val": C.spread([r["best_val"] for r in rows if r["best_val"] is not None] or [0.0]),
            "test_accuracy": C.spread([r["test_accuracy"] for r in rows if r["test_accuracy"] is not None] or [0.0]),
            "trials": C.median([r["trials"] for r in rows]),
            "anytime_val": {f"{int(f * 100)}%": C.median([r["anytime_val"][f"{int(f * 100)}%"] or 0.0 for r in rows])
                            for f in FRACTIONS},
        }
    print(C.table(["arm", "best val (median)", "test (median)", "trials", *[f"val@{int(f * 100)}%" for f in FRACTIONS]],
                  [[a, f"{s['best_val']['median']:.4f}", f"{s['test_accuracy']['median']:.4f}", s["trials"],
                    *[f"{s['anytime_val'][f'{int(f * 100)}%']:.4f}" for f in FRACTIONS]] for a, s in summary.items()]))
    payload = {"benchmark": "search_strategy", "machine": C.machine(), "quick": args.quick,
               "settings": {"data": args.data or "sklearn digits", "budget": budget, "seeds": seeds, "extra": extra},
               "summary": summary, "runs": results}
    path = C.write_results("search_strategy", payload, args.out or C.default_path("search_strategy", args.quick))
    print(f"results: {path}")


if __name__ == "__main__":
    main()
