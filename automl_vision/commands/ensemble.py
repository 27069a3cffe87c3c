"""``automl-vision ensemble RUN_DIR``: rebuild the ensemble and the final evaluation of a run."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from automl_vision.commands import add_json_option, add_plugin_option, human_text_to_stderr, print_json, report_document
from automl_vision.commands.search import _positive_int
from automl_vision.settings import SearchOptions

# automl_vision.ensemble.METHODS, spelled out: ``--help`` must not import NumPy (tests/test_ensemble.py checks they agree)
METHODS = ("greedy", "greedy-metric", "topk")

HELP = "rebuild the ensemble and the final test evaluation of a finished (or still running) search"


def add_parser(sub) -> None:
    p = sub.add_parser(
        "ensemble", help=HELP,
        description=HELP + ". Selects an ensemble on the validation probabilities of the finished trials, evaluates "
        "it and the best single model once on the test split, and rewrites best/, ensemble.json and "
        "final/report.json. Trials are never changed.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run directory of a search (its --out)")
    p.add_argument("--method", choices=list(METHODS), default="greedy",
                   help="greedy: ensemble selection with replacement (Caruana et al. 2004) climbing validation "
                        "log-loss; greedy-metric: the same climbing the objective itself (overfits small validation "
                        "splits); topk: plain average of the k best trials (default: greedy)")
    p.add_argument("--max-members", type=_positive_int, default=5, metavar="N",
                   help="at most N distinct trials in the ensemble (k for topk; default: 5)")
    p.add_argument("--metric", help="metric to optimise on validation (default: the search's objective)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="try flip test-time augmentation, kept only where it helps on validation "
                        "(default: as the search was run)")
    p.add_argument("--calibrate", action=argparse.BooleanOptionalAction, default=None,
                   help="fit a softmax temperature on validation, used by predict and export "
                        "(default: as the search was run)")
    p.add_argument("--refit", action=argparse.BooleanOptionalAction, default=None,
                   help="retrain the chosen configurations on train + validation with the epochs the search found "
                        "(default: as the search was run)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    p.add_argument("--plain", action="store_true", help="plain output (no colours)")
    add_plugin_option(p)
    add_json_option(p, "the run directory and the rebuilt final report: deliverable, best trial and model, "
                       "validation and test metrics with their intervals, final fit, test_evaluations")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with human_text_to_stderr(args.json):
        report, run_dir = _rebuild(args)
    if args.json:
        print_json(report_document("ensemble", run_dir, report))
    return 0 if not report.get("error") else 1


def _rebuild(args: argparse.Namespace) -> tuple[dict[str, Any], Path]:
    """Rebuild and write the final report, print its summary; (report, run directory)."""
    from automl_vision.rundir import open_run

    open_run(args.run_dir)  # before torch is imported: a mistyped path is refused at once
    from automl_vision.data.prepare import reload_prepared
    from automl_vision.plugins import require_registered, run_plugin_manager
    from automl_vision.rundir import open_run
    from automl_vision.rundir import MODEL_JSON, read_model_spec
    from automl_vision.search.final import finalize, print_summary
    from automl_vision.training.device import choose
    from automl_vision.types import UsageError

    rd = open_run(args.run_dir)
    run = rd.read_run() or {}
    settings = run.get("settings") or {}
    trials = rd.usable_trials()
    if not trials:
        raise UsageError(
            f"{rd.path}: no trial of this run has finished, so there is nothing to ensemble. Run the search again "
            "with more time or trials (--time-budget, --n-trials); finished trials are kept."
        )
    pm = run_plugin_manager(run, args.plugin)
    if args.metric and args.metric not in pm.metrics:
        raise UsageError("--metric: " + pm.metrics.unknown_message(args.metric))
    metric = args.metric or (run.get("objectives") or [settings.get("metric") or "accuracy"])[0]
    require_registered(pm, run, "metrics", metric, str(rd.run_json))
    # every model.json is checked, and every family found, before any work starts
    for rec in trials:
        tdir = rd.trial_dir(rec["number"])
        require_registered(pm, run, "model_families", read_model_spec(tdir)["family"], str(tdir / MODEL_JSON))
    data = reload_prepared(rd, pm)
    refit = args.refit if args.refit is not None else SearchOptions.from_dict(settings.get("options")).refit
    # evaluation is always fp32; only a refit trains, on the fastest measured path
    path = choose(args.device, "auto" if refit else "fp32", "auto" if refit else "off")
    previous = rd.read_final() or {}
    report = finalize(rd, data, pm, path, metric, method=args.method, max_members=args.max_members,
                      log=lambda msg: print(msg, flush=True), tta=args.tta, calibrate=args.calibrate, refit=args.refit,
                      respect_budget=False)
    # keep what the search itself recorded about its run
    for key in ("search_seconds", "time_budget"):
        if key in previous and key not in report:
            report[key] = previous[key]
    report["rebuilt_by"] = "automl-vision ensemble"
    from automl_vision.rundir import write_json

    write_json(rd.report, report)
    console = None
    if args.plain:
        from rich.console import Console

        console = Console(no_color=True, width=140)
    print_summary(report, console)
    return report, rd.path
