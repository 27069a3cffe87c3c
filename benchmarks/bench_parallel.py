"""3. Parallel workers: trials per hour with 1 vs 2 workers, and the storage's share of a trial.

Two measurements:

1. **Scaling.** The same search (same seed, trial sizes fixed: no pruning, a fixed number
   of epochs, the custom CNN family) runs with ``--workers 1`` and then ``--workers 2`` on the
   default journal-file storage; trials per hour are counted from the study's own timestamps
   (first trial start to last trial end), so start-up and the final step are left out. On CPU
   each of two workers gets half the cores (``--workers`` divides the threads).
2. **Storage overhead.** The Optuna calls a trial makes (ask with the sampler, the user
   attributes the objective sets, one report and pruning check per epoch, tell) are replayed
   against each storage -- the journal file, and a real PostgreSQL server when one can be
   started (``tests/pgserver.py``) -- and timed; their mean per trial divided by the mean
   trial time of the scaling run is the storage's share of a trial.

The machine (cores, load average) is recorded with the figures: on a machine shared with
other work the scaling figure says little. ``--quick`` is the smoke setting (seconds per
trial; figures mean nothing). Results: ``results/parallel.json`` (``--quick``:
``results/quick/parallel.json``) or ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as C  # noqa: E402  (also puts the checkout on sys.path)


def write_digits(out: Path, per_class: int | None) -> Path:
    sys.path.insert(0, str(C.ROOT / "examples"))
    from make_digits import write_digits as _write

    return _write(out, per_class)


def run_search(data: Path, out: Path, workers: int, n_trials: int, epochs: int, image_size: int, seed: int,
               threads: int | None = None) -> dict[str, Any]:
    """One real search as a user runs it; figures from the study's timestamps.

    ``threads`` limits a one-worker search to that many CPU threads (the issue's baseline:
    one worker on one "device", i.e. its share of the cores).
    """

    import optuna
    from optuna.storages.journal import JournalFileBackend

    cmd = [sys.executable, "-m", "automl_vision.cli", "search", str(data), "--out", str(out), "--study-name", "bench",
           "--n-trials", str(n_trials), "--max-epochs", str(epochs), "--image-size", str(image_size),
           "--models", "cnn", "--pruner", "none", "--seed", str(seed), "--plain", "--workers", str(workers)]
    env = dict(os.environ)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=C.ROOT, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"workers": workers, "error": (proc.stdout + proc.stderr)[-2000:]}
    study = optuna.load_study(study_name="bench", storage=optuna.storages.JournalStorage(JournalFileBackend(str(out / "study.journal"))))
    trials = [t for t in study.get_trials() if t.state.is_finished()]
    starts = [t.datetime_start.timestamp() for t in trials]
    ends = [t.datetime_complete.timestamp() for t in trials]
    span = max(ends) - min(starts)
    trial_seconds = [e - s for s, e in zip(starts, ends)]
    objective_seconds = []
    for t in trials:
        status = json.loads((out / "trials" / f"{t.number:05d}" / "status.json").read_text())
        objective_seconds.append(float(status["seconds"]))
    return {
        "workers": workers,
        "arm": f"{workers} worker(s)" + (f", {threads} thread(s)" if threads else ""),
        "trials": len(trials),
        "complete": sum(t.state.name == "COMPLETE" for t in trials),
        "span_seconds": span,
        "wall_seconds": wall,
        "trials_per_hour": 3600.0 * len(trials) / span if span > 0 else float("nan"),
        "trial_seconds": C.spread(trial_seconds),
        "objective_seconds": C.spread(objective_seconds),
        # what Optuna's bookkeeping around the objective adds (ask/sampler, tell), per trial
        "outside_objective_seconds": C.spread([a - b for a, b in zip(trial_seconds, objective_seconds)]),
    }


def replay_storage_calls(storage, trials: int, epochs: int) -> dict[str, Any]:
    """Time the Optuna calls of ``trials`` trials against ``storage`` (no training)."""
    import warnings

    import optuna

    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    sampler = optuna.samplers.TPESampler(seed=0, multivariate=True, group=True, constant_liar=True, n_startup_trials=5)
    study = optuna.create_study(storage=storage, sampler=sampler, study_name=f"replay-{time.time_ns()}", direction="maximize",
                                pruner=optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs))
    per_trial = []
    for i in range(trials):
        t0 = time.perf_counter()
        trial = study.ask()
        # the space of a small CNN trial: the same number of suggestions as a real one
        trial.suggest_categorical("family", ["cnn"])
        for name, choices in (("cnn.block", ["plain", "residual"]), ("cnn.width", [16, 24, 32, 48, 64]),
                              ("cnn.kernel", [3, 5]), ("cnn.norm", ["batch", "group"]), ("cnn.act", ["relu", "silu", "gelu"]),
                              ("batch_size", [32, 64, 128]), ("optimizer", ["adamw", "sgd"]), ("aug", ["light", "medium"])):
            trial.suggest_categorical(name, choices)
        trial.suggest_int("cnn.stages", 2, 4)
        trial.suggest_float("lr_mult", 0.3, 3.0, log=True)
        trial.suggest_float("weight_decay", 1e-5, 0.1, log=True)
        for attr in ("model", "worker", "params_count"):
            trial.set_user_attr(attr, f"{attr}-{i}")
        for epoch in range(1, epochs + 1):
            trial.report(0.5 + 0.01 * epoch + 0.001 * i, epoch)
            trial.should_prune()
        for attr in ("val_accuracy", "val_f1_macro", "val_log_loss"):
            trial.set_user_attr(attr, 0.5)
        study.tell(trial, 0.5 + 0.001 * i)
        per_trial.append(time.perf_counter() - t0)
    return C.spread(per_trial)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--quick", action="store_true", help="tiny smoke setting (figures mean nothing)")
    ap.add_argument("--trials", type=int, help="trials per search (default: 12; --quick: 4)")
    ap.add_argument("--epochs", type=int, help="epochs per trial (default: 3; --quick: 1)")
    ap.add_argument("--image-size", type=int, help="pixels (default: 32; --quick: 16)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=None, help="alternating 1-worker/2-worker runs (default: 2; --quick: 1)")
    ap.add_argument("--no-postgres", action="store_true", help="skip the PostgreSQL storage measurement")
    ap.add_argument("--out", help="results JSON (default: benchmarks/results/parallel.json; --quick: results/quick/parallel.json)")
    args = ap.parse_args(argv)
    n_trials = args.trials or (4 if args.quick else 12)
    epochs = args.epochs or (1 if args.quick else 3)
    size = args.image_size or (16 if args.quick else 32)
    args.repeats = args.repeats or (1 if args.quick else 2)

    import warnings

    import optuna
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # the replay drives trials with ask/tell on purpose: no heartbeat thread to warn about
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
    machine = C.machine()
    runs = []
    storage_rows = []
    with tempfile.TemporaryDirectory(prefix="bench-parallel-") as tmp:
        work = Path(tmp)
        data = write_digits(work / "digits", 30 if args.quick else None)
        # arms alternate (1, 2, 1, 2, ...) so that a change in the machine's load hits both
        for rep in range(args.repeats):
            half = max(1, (os.cpu_count() or 2) // 2)
            for workers, threads in ((1, half), (1, None), (2, None)):
                res = run_search(data, work / f"run-{workers}-{threads}-{rep}", workers, n_trials, epochs, size, args.seed,
                                 threads)
                res["repeat"] = rep
                runs.append(res)
                print(f"{workers} worker(s): {json.dumps({k: v for k, v in res.items() if not isinstance(v, dict)})}",
                      flush=True)
        replay_trials = 10 if args.quick else 40
        journal = optuna.storages.JournalStorage(JournalFileBackend(str(work / "replay.journal")))
        storage_rows.append({"storage": "journal file", **replay_storage_calls(journal, replay_trials, epochs)})
        if not args.no_postgres:
            sys.path.insert(0, str(C.ROOT / "tests"))
            try:
                import pgserver

                server = pgserver.start()
            except Exception as exc:  # noqa: BLE001 - reported, not fatal
                storage_rows.append({"storage": "postgresql", "error": f"not measured: {exc}"})
            else:
                try:
                    from automl_vision.search.study import driver_url

                    url = driver_url(server.create_database("bench"))
                    rdb = optuna.storages.RDBStorage(url, heartbeat_interval=10, grace_period=40)
                    storage_rows.append({"storage": "postgresql (local, heartbeat on)", **replay_storage_calls(rdb, replay_trials, epochs)})
                finally:
                    server.stop()

    def arm(name: str) -> dict[str, Any] | None:
        ok = [r for r in runs if r.get("arm") == name and "error" not in r]
        return {"trials_per_hour": C.median([r["trials_per_hour"] for r in ok])} if ok else None

    half = max(1, (os.cpu_count() or 2) // 2)
    # the comparison: two workers vs one worker on one worker's share of the cores
    one, two, one_all = arm(f"1 worker(s), {half} thread(s)"), arm("2 worker(s)"), arm("1 worker(s)")
    speedup = two["trials_per_hour"] / one["trials_per_hour"] if one and two else float("nan")
    speedup_all = two["trials_per_hour"] / one_all["trials_per_hour"] if one_all and two else float("nan")
    mean_trial = C.median([r["trial_seconds"]["median"] for r in runs if "error" not in r]) if runs else float("nan")
    for row in storage_rows:
        if "median" in row:
            row["share_of_trial"] = row["median"] / mean_trial if mean_trial == mean_trial and mean_trial > 0 else float("nan")

    scaling = C.table(
        ["arm", "repeat", "trials", "span s", "trials/hour", "median trial s", "outside objective s", "vs 1 worker, half the cores"],
        [[r.get("arm", r["workers"]), r.get("repeat"), r.get("trials"), r.get("span_seconds"), r.get("trials_per_hour"),
          r.get("trial_seconds", {}).get("median"), r.get("outside_objective_seconds", {}).get("median"),
          (r["trials_per_hour"] / one["trials_per_hour"]) if one and "error" not in r else None] for r in runs],
    )
    storage_table = C.table(
        ["storage", "Optuna calls per trial (median s)", "share of a trial"],
        [[r["storage"], r.get("median"), (f"{100 * r['share_of_trial']:.2f}%" if "share_of_trial" in r else r.get("error"))]
         for r in storage_rows],
    )
    markdown = (f"{n_trials} trials of the custom CNN, {epochs} epoch(s) at {size} px, no pruning, {args.repeats} "
                f"alternating repeat(s); 2 workers vs 1 worker with half the cores: {speedup:.2f}x trials/hour, "
                f"vs 1 worker with all cores: {speedup_all:.2f}x (medians); "
                f"{machine['cores']} core(s), load average at start {machine['load_average_at_start']}.\n\n"
                f"{scaling}\n\n{storage_table}")
    print()
    print(markdown)
    for r in runs:
        if "error" in r:
            print(f"\n{r['workers']} worker(s) failed:\n{r['error']}", file=sys.stderr)
    path = C.write_results("parallel", {
        "quick": args.quick,
        "machine": machine,
        "settings": {"trials": n_trials, "epochs": epochs, "image_size": size, "seed": args.seed, "repeats": args.repeats,
                     "models": "cnn",
                     "pruner": "none", "storage": "journal file (default)"},
        "runs": runs,
        "speedup_2_vs_1": speedup,
        "speedup_2_vs_1_all_cores": speedup_all,
        "storage": storage_rows,
        "load_average_at_end": C.load_average(),
        "markdown": markdown,
    }, args.out)
    print(f"\nresults: {path}")
    return 0 if all("error" not in r for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
