"""The final fit's second network, replayed: the runner-up, or a fresh network of the best?

In the small-data regime the final fit trains the best model's network further on every
labelled image and, when the time affords it, a second network beside it (and fresh networks
of the best configuration after those). This script asks, on finished searches, what that
second network should be when the runner-up on validation is not the best model's own: each
run directory (a finished ``bench_small_data.py`` default run whose deliverable is a final-fit
pair or average) is copied, and one fresh network of the best configuration (another seed,
``--copy``, from scratch on every labelled image, ``search/final/training.py:final_fit``) is
trained in it for as many epochs as the run's own fresh network ran or, with none, as the
runner-up's share of the time gives the best configuration at its pace in that run. With no
deadline the epochs do not depend on this machine's speed. Every final-fit network and the new
one are then scored alone on the evaluation folder (flip TTA as the run chose, each member's
prediction sides), and the averages compared: ``delivered`` (the run's own networks) against
``fresh_in_place`` (the runner-up's network replaced by the new one). Temperature is left out:
it does not move an average's arg-max.

A network already trained in a copy (``--work``) is reused, so the scoring can be repeated.

Example::

    .venv/bin/python benchmarks/bench_final_fit_partner.py --data-root /work/bench-data --work /tmp/replay \\
        /tmp/bench/runs/*-default
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
from bench_eval_resolution import NAME  # noqa: E402
from bench_small_data import image_files  # noqa: E402

import numpy as np  # noqa: E402


def replay(src: Path, eval_dir: Path, work: Path, copy: int) -> dict[str, Any] | None:
    from automl_vision.data.prepare import reload_prepared
    from automl_vision.plugins import run_plugin_manager
    from automl_vision.predict import ProbabilityModel, decode_batch, load_member
    from automl_vision.rundir import open_run
    from automl_vision.search.final.training import all_labelled, epoch_seconds_on, final_fit, same_network
    from automl_vision.training.device import choose_cpu_path

    ens = json.loads((src / "ensemble.json").read_text())
    members = ens.get("members") or []
    if not ens.get("selected") or not str(ens.get("method", "")).startswith("final-fit") or len(members) < 2 \
            or members[1].get("copy"):
        return None  # no runner-up in this run's final fit
    dst = work / f"{src.parent.parent.name}_{src.name}"
    if not dst.exists():
        shutil.copytree(src, dst)
    rd = open_run(dst)
    run = rd.read_run() or {}
    best_n, runner_up = int(members[0]["trial"]), int(members[1]["trial"])
    fit = {m["dir"]: json.loads((dst / m["dir"] / "model.json").read_text())["final_fit"] for m in members}
    fresh = [m["dir"] for m in members if m.get("copy")]
    if fresh:
        target = int(fit[fresh[0]]["epochs"])
    else:  # the runner-up's seconds at the pace the best configuration ran in this run's final fit
        first = fit[members[0]["dir"]]
        target = round(fit[members[1]["dir"]]["seconds"] * first["epochs"] / first["seconds"])
    pm = run_plugin_manager(run, [])
    data = reload_prepared(rd, pm)
    per_epoch = epoch_seconds_on(rd, best_n, len(all_labelled(data)), len(data.split_index["train"]))
    folder = f"final_fit_replay_{copy}"
    t0 = time.time()
    info = final_fit(rd, best_n, data, pm, choose_cpu_path("auto", "auto"), (target + 0.5) * per_epoch, None,
                     lambda msg: None, folder=folder, copy=copy)
    if "skipped" in info:
        raise SystemExit(f"{src}: {info['skipped']}")
    files = image_files(eval_dir)
    probs: dict[str, np.ndarray] = {}
    classes = labels = None
    for d in [m["dir"] for m in members] + [folder]:
        net, spec = load_member(dst / d, pm, run)
        if classes is None:
            classes = list(spec["classes"])
            labels = np.array([classes.index(c) for _, c in files])
        module = ProbabilityModel([net], [spec], [1.0], tta=bool(ens.get("tta")))
        arrays, ok, errors = decode_batch([f for f, _ in files], module.sizes, module.in_chans)
        if errors:
            raise SystemExit(f"{eval_dir}: {len(errors)} photo(s) could not be decoded")
        probs[d] = module.probs(arrays)

    def right(dirs: list[str]) -> int:
        return int((sum(probs[d] for d in dirs).argmax(1) == labels).sum())

    delivered = [m["dir"] for m in members]
    in_place = [d if d != members[1]["dir"] else folder for d in delivered]
    return {
        "run": str(src), "photos": int(len(labels)), "best_trial": best_n, "runner_up": runner_up,
        "runner_up_same_network": same_network(rd, best_n, runner_up),
        "networks": len(delivered), "new_network_epochs": int(info["epochs"]), "target_epochs": target,
        "new_network_reused": bool(info.get("reused")), "seconds": round(time.time() - t0, 1),
        "right_alone": {d: right([d]) for d in delivered + [folder]},
        "right_delivered": right(delivered), "right_fresh_in_place": right(in_place),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="finished run directories (bench_small_data.py --workdir .../runs/*)")
    ap.add_argument("--data-root", required=True, help="folder of sets <set>/eval, runs named <set>-<budget>-s<seed>-<arm>")
    ap.add_argument("--work", required=True, help="folder for the copies of the runs (reused when run again)")
    ap.add_argument("--copy", type=int, default=7, help="the fresh network's copy number (its seed: the trial's + 1000 x N)")
    ap.add_argument("--out", help="results JSON (default results/final_fit_partner.json)")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for run in args.runs:
        src = Path(run)
        info = NAME.match(src.name)
        if not info:
            ap.error(f"{src}: name the run <set>-<budget>-s<seed>-<arm>, as bench_small_data.py does")
        row = replay(src, Path(args.data_root) / info["set"] / "eval", work, args.copy)
        if row is None:
            print(f"{src.name}: no runner-up in its final fit, skipped", flush=True)
            continue
        rows.append(row)
        print(f"{src.name}: runner-up trial {row['runner_up']} (same network: {row['runner_up_same_network']}), "
              f"right of {row['photos']}: delivered {row['right_delivered']}, fresh in its place "
              f"{row['right_fresh_in_place']}; alone {row['right_alone']}", flush=True)
    same = [r for r in rows if r["runner_up_same_network"]]
    summary = {
        "runs": len(rows), "runs_same_network": len(same),
        "gain_same_network": sum(r["right_fresh_in_place"] - r["right_delivered"] for r in same),
        "gain_other_network": sum(r["right_fresh_in_place"] - r["right_delivered"] for r in rows if r not in same),
    }
    print(json.dumps(summary))
    path = C.write_results("final_fit_partner", {"machine": C.machine(), "copy": args.copy, "rows": rows,
                                                  "summary": summary}, args.out)
    print(f"results: {path}")


if __name__ == "__main__":
    main()
