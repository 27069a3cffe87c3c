"""Evaluation resolution: would finished searches score more if they saw larger eval photos?

The question behind it (issue 18, "resolution as part of the search"): a network trained on
random-resized crops of S px (a crop keeps 35-100% of the photo's area with the search's
medium augmentation) sees objects about 1.23x larger in training than in a whole photo
resized to S. "FixRes" (Touvron et al., 2019) evaluates at a higher resolution to undo that
discrepancy. This script measures it on finished runs, without training anything: each run
directory's deliverable (``automl_vision.predict.load_deliverable``, exactly what ``predict``
uses), its members given their training side S (whatever sides the search chose for
prediction, ``eval_size``/``eval_sizes``, are set aside), scores the evaluation folder plainly
("plain"), as delivered ("delivered"), and then, for each factor k:

* ``decode``: every eval photo decoded at round(k x S / 8) x 8 px from the original file
  (the network gets more real detail as well as larger objects);
* ``upsample``: decoded at S, then upsampled bilinearly to the same size in front of each
  network (what a model could do inside its own graph);
* ``average``: the probabilities at S and at every factor's decoded side, averaged (a
  multi-scale test-time augmentation: ``eval_sizes`` in model.json).

An ensemble whose members take several sizes scales each size by the same factor.

``--held-out`` asks the same of each run's two best trial networks (trained on the run's
training split only), scored on the run's own validation and test photos: evidence that no
evaluation folder, and so no choice made on one, has seen.

Run directories named as ``bench_small_data.py --workdir`` names them
(``<set>-<budget>-s<seed>-<arm>``) find their eval folder under ``--data-root``; ``--eval``
gives one folder for every run instead.

Examples::

    .venv/bin/python benchmarks/bench_eval_resolution.py --data-root /work/bench-data /tmp/bench/runs/*-default
    .venv/bin/python benchmarks/bench_eval_resolution.py --eval SET/eval --factors 1.125,1.25 RUN_DIR
    .venv/bin/python benchmarks/bench_eval_resolution.py --held-out /tmp/bench/runs/*-default
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


def at_training_side(specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The members' descriptions without the sides a search chose for prediction."""
    return [{k: v for k, v in s.items() if k not in ("eval_size", "eval_sizes")} for s in specs]


def score_module(module, delivered, paths: list[str], labels: np.ndarray, factors: list[float]) -> dict[str, Any]:
    """Accuracy of ``module`` (its members at their training sides) at each factor and mode."""
    import torch.nn.functional as F

    from automl_vision.predict import decode_batch

    upsample_by: dict[str, float] = {}

    def pre(member, args):  # upsample in front of each network (mode "upsample"), by its own side
        k = upsample_by.get("k", 1.0)
        x = args[0]
        s = side(x.shape[-1], k)
        return (F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False),) if s > x.shape[-1] else None

    decoded_at: dict[int, np.ndarray] = {}  # each side decoded once, whichever modes use it

    def probs(mod, sizes: list[int]) -> np.ndarray:
        todo = [s for s in dict.fromkeys(sizes) if s not in decoded_at]
        if todo:
            arrays, _ok, bad = decode_batch(paths, todo, mod.in_chans)
            if bad:
                raise SystemExit(f"{len(bad)} photo(s) could not be decoded, e.g. {bad[0]}")
            decoded_at.update(zip(todo, arrays))
        return mod.probs([decoded_at[s] for s in sizes])

    def accuracy(p: np.ndarray) -> float:
        return float((p.argmax(1) == labels).mean())

    # an ensemble whose members take several sizes scales every size by the same factor
    plain = probs(module, module.sizes)
    out: dict[str, float] = {"plain": accuracy(plain)}
    if delivered is not None:
        out["delivered"] = accuracy(probs(delivered, delivered.sizes))
    hooks = [m.register_forward_pre_hook(pre) for m in module.members]
    try:
        decoded = []
        for k in factors:
            decoded.append(probs(module, [side(s, k) for s in module.sizes]))
            out[f"decode@{k:g}"] = accuracy(decoded[-1])
            upsample_by["k"] = k
            out[f"upsample@{k:g}"] = accuracy(probs(module, module.sizes))
            upsample_by.clear()
    finally:
        for h in hooks:
            h.remove()
    # the probabilities at the training side and at every factor, averaged
    out[average_key(factors)] = accuracy((plain + sum(decoded)) / (1 + len(decoded)))
    return {"sizes": module.sizes, "eval_images": len(paths), "accuracy": out}


def average_key(factors: list[float]) -> str:
    return "average@" + ",".join(f"{k:g}" for k in [1.0, *factors])


def score(rd: Path, eval_dir: Path, factors: list[float]) -> dict[str, Any]:
    """The run's deliverable on an evaluation folder."""
    from automl_vision.predict import ProbabilityModel, load_deliverable

    d = load_deliverable(rd)
    files = image_files(eval_dir)
    labels = np.array([d.classes.index(c) if c in d.classes else -1 for _f, c in files])
    m = d.module
    module = ProbabilityModel(list(m.members), at_training_side(d.specs), m.weights, temperature=m.temperature, tta=m.tta)
    return {"deliverable": d.describe(), **score_module(module, m, [f for f, _c in files], labels, factors)}


def held_out_networks(rd: Path, top: int = 2):
    """The run's ``top`` trial networks by validation accuracy (each trained on the run's training
    split only), with the run's own validation and test photos: (trial, network, model.json,
    photo paths, labels) for each."""
    import json

    from automl_vision.predict import load_member
    from automl_vision.rundir import METRICS, open_run

    r = open_run(rd)
    run = r.read_run() or {}
    splits = r.read_splits()["splits"]
    keys = list(splits["val"]) + list(splits["test"])
    root = Path(r.read_data_report()["root"])
    ranked = []
    for t in r.usable_trials():
        metrics = r.trial_dir(int(t["number"])) / METRICS  # rundir spells the run directory's names
        if metrics.is_file():
            ranked.append((json.loads(metrics.read_text())["val"]["accuracy"], int(t["number"])))
    for _acc, n in sorted(ranked, reverse=True)[:top]:
        net, spec = load_member(r.trial_dir(n), None, run)
        classes = list(spec["classes"])
        labels = np.array([classes.index(k.split("/")[0]) for k in keys])
        yield n, net, spec, [str(root / k) for k in keys], labels


def score_held_out(rd: Path, factors: list[float], top: int = 2) -> list[dict[str, Any]]:
    """The run's ``top`` trial networks on the run's own validation and test photos, which no
    choice of sides saw."""
    from automl_vision.predict import ProbabilityModel

    return [{"trial": n, **score_module(ProbabilityModel([net], at_training_side([spec]), [1.0], tta=True), None,
                                        paths, labels, factors)}
            for n, net, spec, paths, labels in held_out_networks(rd, top)]


def summarise(runs: list[dict[str, Any]], factors: list[float]) -> dict[str, Any]:
    """Each way of feeding the photos against the training side: mean change, runs up/down, per set."""
    summary: dict[str, Any] = {}
    for key in [f"{mode}@{k:g}" for mode in MODES for k in factors] + [average_key(factors)]:
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
    ap.add_argument("--held-out", action="store_true",
                    help="score each run's two best trial networks on the run's own validation and test photos "
                         "instead of the deliverable on an eval folder")
    ap.add_argument("--out", help="results JSON (default results/eval_resolution.json, "
                                  "results/eval_resolution_held_out.json with --held-out)")
    args = ap.parse_args(argv)
    try:
        factors = [float(f) for f in args.factors.split(",") if f.strip()]
    except ValueError:
        ap.error(f"--factors {args.factors!r}: give numbers such as 1.125,1.25")
    if not factors or any(not 1.0 < k <= 2.0 for k in factors):
        ap.error(f"--factors {args.factors!r}: each factor must be above 1 and at most 2")
    if not args.eval and not args.data_root and not args.held_out:
        ap.error("give --data-root (runs named <set>-<budget>-s<seed>-<arm>), --eval FOLDER or --held-out")

    runs: list[dict[str, Any]] = []
    for text in args.runs:
        rd = Path(text)
        m = NAME.match(rd.name)
        info = m.groupdict() if m else {"set": rd.name, "budget": "", "seed": "", "arm": ""}
        if args.held_out:
            rows = [{**info, "run": rd.name, "path": str(rd), **r} for r in score_held_out(rd, factors)]
        else:
            eval_dir = Path(args.eval) if args.eval else Path(args.data_root) / info["set"] / "eval"
            if not eval_dir.is_dir():
                ap.error(f"{rd}: no eval folder {eval_dir}; give --eval or name the run <set>-<budget>-s<seed>-<arm>")
            rows = [{**info, "run": rd.name, "path": str(rd), **score(rd, eval_dir, factors)}]
        for row in rows:
            runs.append(row)
            print(rd.name, row.get("trial", ""), row["sizes"], " ".join(f"{k} {v:.3f}" for k, v in row["accuracy"].items()),
                  flush=True)
    summary = summarise(runs, factors)
    table = markdown(summary)
    print(table)
    payload = {"benchmark": "eval_resolution", "machine": C.machine(), "quick": False,
               "settings": {"factors": factors, "modes": [*MODES, "average"], "held_out": args.held_out},
               "runs": runs, "summary": summary, "markdown": table}
    path = C.write_results("eval_resolution_held_out" if args.held_out else "eval_resolution", payload, args.out)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
