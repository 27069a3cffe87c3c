"""``automl-vision leaderboard RUN_DIR``: the trials of a run, best first, for a person or a script."""

from __future__ import annotations

import argparse

from automl_vision.commands.search import _positive_int

HELP = "print the leaderboard of a run directory (finished trials, best first); --json for scripts"


def add_parser(sub) -> None:
    p = sub.add_parser(
        "leaderboard", help=HELP,
        description=HELP + ". Read from the trials' status files, so it works while the search runs and never "
        "writes to the run directory.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run directory of a search (its --out)")
    p.add_argument("--top", type=_positive_int, default=15, metavar="N", help="rows to print (default: 15)")
    p.add_argument("--json", action="store_true",
                   help="every trial as a JSON list, best first: number, state, model, value, val_<metric>..., "
                        "epochs, seconds, reason, param_<name>... (missing values are null); 'running': trials started "
                        "without a result yet")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from automl_vision.rundir import open_run

    rd = open_run(args.run_dir)  # before pandas is imported: a mistyped path is refused at once
    from automl_vision import leaderboard as lb

    info = rd.read_run() or {}
    metric = (info.get("objectives") or [(info.get("settings") or {}).get("metric") or "accuracy"])[0]
    direction = (info.get("directions") or ["maximize"])[0]
    df = lb.ranked(lb.build(rd), direction)
    finished = set(df["number"].astype(int)) if not df.empty else set()
    running = [n for n in rd.trial_numbers() if n not in finished]
    if args.json:
        rows = json.loads(df.to_json(orient="records")) if not df.empty else []
        print(json.dumps({"metric": metric, "direction": direction, "trials": rows, "running": running}, indent=2))
        return 0
    if df.empty:
        print(f"{rd.path}: no trial has finished yet" + (f" ({len(running)} started)" if running else ""))
        return 0
    lb.render(df, metric, direction, top=args.top)
    if running:
        print(f"{len(running)} trial(s) without a result yet (running, or stopped by a kill): "
              f"#{', #'.join(map(str, running))}")
    return 0
