"""Crops at prediction: would finished searches score more if each network also saw crops?

The question behind it (issue 18): a network trained on random-resized crops of S px (35-100% of a
photo's area with the search's medium augmentation) predicts on whole photos decoded at S and a
little larger (``eval_sizes``, section 7 of benchmarks/README.md). Whole photos show objects at the
crops' average size, but never *cut* as the crops cut them. This script re-scores finished runs
without training anything, through predict's own :class:`~automl_vision.predict.ProbabilityModel`:

* ``train_side``: every member at its training side only;
* ``sides``: the sides of its ``eval_sizes`` (what runs before ``eval_crops`` delivered);
* ``sides+crops``: those sides and ``--crops`` crops of S px (the centre, then the four corners) cut
  from the photo decoded at the largest side, every view weighted alike (``eval_crops`` in model.json).

Flip TTA and the ensemble weights as the run chose; temperature left out (it does not move an
average's arg-max). By default each run's deliverable is scored on its evaluation folder; with
``--held-out``, the run's two best trial networks (trained on the run's training split only) on the
run's own validation and test photos, which no evaluation folder and no choice made on one has seen.

Examples::

    .venv/bin/python benchmarks/bench_eval_crops.py --data-root /work/bench-data /tmp/bench/runs/*-default
    .venv/bin/python benchmarks/bench_eval_crops.py --held-out /tmp/bench/runs/*-default
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
from bench_eval_resolution import NAME, at_training_side, held_out_networks  # noqa: E402
from bench_small_data import image_files  # noqa: E402

import numpy as np  # noqa: E402

WAYS = ("train_side", "sides", "sides+crops")


def right_by_way(members, specs, weights, tta: bool, paths: list[str], labels: np.ndarray, crops: int) -> dict[str, int]:
    """Photos right of ``labels`` for each of :data:`WAYS`, every side decoded once."""
    from automl_vision.predict import ProbabilityModel, decode_batch

    plain = at_training_side(specs)
    sides = [{k: v for k, v in s.items() if k != "eval_crops"} for s in specs]
    modules = {"train_side": ProbabilityModel(members, plain, weights, tta=tta),
               "sides": ProbabilityModel(members, sides, weights, tta=tta),
               "sides+crops": ProbabilityModel(members, [{**s, "eval_crops": crops} for s in sides], weights, tta=tta)}
    wanted = sorted({s for m in modules.values() for s in m.sizes})
    arrays, _ok, bad = decode_batch(paths, wanted, modules["sides"].in_chans)
    if bad:
        raise SystemExit(f"{len(bad)} photo(s) could not be decoded, e.g. {next(iter(bad.values()))}")
    at = dict(zip(wanted, arrays))
    return {way: int((m.probs([at[s] for s in m.sizes]).argmax(1) == labels).sum()) for way, m in modules.items()}


def score(rd: Path, eval_dir: Path, crops: int) -> list[dict[str, Any]]:
    """The run's deliverable on an evaluation folder."""
    from automl_vision.predict import load_deliverable

    d = load_deliverable(rd)
    files = image_files(eval_dir)
    labels = np.array([d.classes.index(c) if c in d.classes else -1 for _f, c in files])
    m = d.module
    right = right_by_way(list(m.members), d.specs, m.weights, m.tta, [f for f, _c in files], labels, crops)
    return [{"deliverable": d.describe(), "photos": len(files), "right": right}]


def score_held_out(rd: Path, crops: int, top: int = 2) -> list[dict[str, Any]]:
    """The run's ``top`` trial networks by validation accuracy on the run's validation and test photos."""
    return [{"trial": n, "photos": len(paths), "right": right_by_way([net], [spec], [1.0], True, paths, labels, crops)}
            for n, net, spec, paths, labels in held_out_networks(rd, top)]


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Each way against ``sides``: photos gained, mean change in points, rows up/down, per set."""
    out: dict[str, Any] = {}
    for way in ("train_side", "sides+crops"):
        gain = [(r["set"], r["right"][way] - r["right"]["sides"], r["photos"]) for r in rows]
        per_set: dict[str, list[int]] = {}
        for s, g, _n in gain:
            per_set.setdefault(s, []).append(g)
        out[way] = {"photos_gained": sum(g for _s, g, _n in gain),
                    "mean_points": float(np.mean([100.0 * g / n for _s, g, n in gain])) if gain else float("nan"),
                    "up": sum(g > 0 for _s, g, _n in gain), "down": sum(g < 0 for _s, g, _n in gain), "all": len(gain),
                    "per_set_photos": {s: sum(v) for s, v in sorted(per_set.items())}}
    return out


def markdown(summary: dict[str, Any]) -> str:
    sets = sorted({s for v in summary.values() for s in v["per_set_photos"]})
    rows = [[way, v["photos_gained"], v["mean_points"], f"{v['up']}/{v['down']}/{v['all']}",
             *[v["per_set_photos"].get(s, "") for s in sets]] for way, v in summary.items()]
    return C.table(["against the sides", "photos", "mean change (points)", "up/down/all", *sets], rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="finished run directories")
    ap.add_argument("--data-root", help="folder of sets <set>/eval, for runs named <set>-<budget>-s<seed>-<arm>")
    ap.add_argument("--crops", type=int, default=5, help="crops a network also sees: 1 (the centre) to 5 (default)")
    ap.add_argument("--held-out", action="store_true",
                    help="score each run's two best trial networks on the run's own validation and test photos "
                         "instead of the deliverable on its eval folder")
    ap.add_argument("--out", help="results JSON (default results/eval_crops.json, results/eval_crops_held_out.json "
                                  "with --held-out)")
    args = ap.parse_args(argv)
    if not 1 <= args.crops <= 5:
        ap.error(f"--crops {args.crops}: give 1 (the centre) to 5 (the centre and the four corners)")
    if not args.data_root and not args.held_out:
        ap.error("give --data-root (runs named <set>-<budget>-s<seed>-<arm>) or --held-out")

    rows: list[dict[str, Any]] = []
    for text in args.runs:
        rd = Path(text)
        m = NAME.match(rd.name)
        if not m:
            ap.error(f"{rd}: name the run <set>-<budget>-s<seed>-<arm>, as bench_small_data.py does")
        if args.held_out:
            found = score_held_out(rd, args.crops)
        else:
            eval_dir = Path(args.data_root) / m["set"] / "eval"
            if not eval_dir.is_dir():
                ap.error(f"{rd}: no eval folder {eval_dir}")
            found = score(rd, eval_dir, args.crops)
        for row in found:
            rows.append({**m.groupdict(), "run": rd.name, "path": str(rd), **row})
            print(rd.name, row.get("trial", ""), row["photos"], row["right"], flush=True)
    summary = summarise(rows)
    table = markdown(summary)
    print(table)
    payload = {"benchmark": "eval_crops", "machine": C.machine(), "quick": False,
               "settings": {"crops": args.crops, "held_out": args.held_out, "ways": list(WAYS)},
               "runs": rows, "summary": summary, "markdown": table}
    path = C.write_results("eval_crops_held_out" if args.held_out else "eval_crops", payload, args.out)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
