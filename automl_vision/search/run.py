"""The search from start to end: data, study, trials, leaderboard, final report.

:func:`run_search` is what ``automl-vision search`` and :func:`automl_vision.search`
call. The trial loop itself is :func:`run_worker`, which a worker joining a study from
another process or machine runs too.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from typing import Any

import optuna

from automl_vision import __version__
from automl_vision import leaderboard as lb
from automl_vision.data.images import ImageDecodeError, probe
from automl_vision.data.prepare import PreparedData, prepare
from automl_vision.data.sources import load_dataset
from automl_vision.plugins import PluginManager, get_plugin_manager
from automl_vision.progress import make_progress
from automl_vision.rundir import RunDir, read_json, write_json
from automl_vision.search.objective import DISK_FULL, Budget, Objective, worker_id
from automl_vision.search.study import open_study, redact
from automl_vision.settings import PRESETS, SearchSettings, format_duration
from automl_vision.training.device import ExecPath, apply_gpu_options, choose
from automl_vision.types import Dataset, UsageError

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _not_an_interrupt(record) -> bool:
    """Ctrl-C is not an error: Optuna's warning with the KeyboardInterrupt's traceback is
    dropped (the trial's status says "interrupted" and the search prints a summary); so is
    the traceback of a full disk."""
    exc = record.exc_info[1] if record.exc_info else None
    if isinstance(exc, OSError) and exc.errno in DISK_FULL:
        return False  # a full disk stops the search with one clear message (cli.main)
    return not isinstance(exc, KeyboardInterrupt)


for _handler in optuna.logging._get_library_root_logger().handlers:
    _handler.addFilter(_not_an_interrupt)

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)


def versions() -> dict[str, str]:
    import timm
    import torch

    return {
        "automl_vision": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "optuna": optuna.__version__,
    }


def auto_image_sizes(dataset: Dataset, device: str) -> list[int]:
    """Pick the resolution from the images: small images are upsampled a little, photos
    are trained at 64 px on CPU (where compute is the limit) and 96 px on a GPU."""
    sides = []
    for s in dataset.samples[:: max(1, len(dataset.samples) // 64)][:64]:
        if s.array is not None:
            sides.append(min(s.array.shape[:2]))
            continue
        try:
            _mode, (w, h), _fmt = probe(s.path)
            sides.append(min(w, h))
        except (ImageDecodeError, OSError):
            continue
    median = statistics.median(sides) if sides else 64
    if median <= 40:
        return [32]
    return [96] if device.startswith("cuda") else [64]


def check_settings(settings: SearchSettings, pm: PluginManager) -> list[str]:
    """Validate names against the registries; returns the objectives."""
    objectives = [o.strip() for o in settings.metric.split(",") if o.strip()]
    if not objectives:
        raise UsageError("--metric: give a metric name, e.g. accuracy")
    for name in objectives[:1]:
        if name not in pm.metrics:
            raise UsageError("--metric: " + pm.metrics.unknown_message(name))
    from automl_vision.search.budget import REGIMES

    if settings.regime not in REGIMES:
        raise UsageError(f"--regime {settings.regime!r}: expected one of {', '.join(REGIMES)}")
    if settings.preset not in PRESETS:
        raise UsageError(f"--preset {settings.preset!r}: expected one of {', '.join(PRESETS)}")
    from automl_vision.search.space import families_and_models

    families, _ = families_and_models(settings, pm)
    for family in families:
        pm.model_families.get(family)  # a family two plugins register fails here, naming both
    if not families:
        raise UsageError("no model family is available; check --models and the installed plugins")
    from automl_vision.data.cache import memory_limit
    from automl_vision.search import space_file
    from automl_vision.training.pretrained import configure as configure_weights

    memory_limit()  # a malformed AUTOML_VISION_DATA_MEMORY_MIB stops here, before any work
    configure_weights(settings, pm)  # --pretrained/--weights/--init-from; may fix the searched model
    space_file.apply(settings, pm)  # --space: every key and value checked before anything runs
    return objectives


def directions_for(objectives: list[str], pm: PluginManager) -> list[str]:
    out = []
    for name in objectives:
        if name in pm.metrics:
            out.append(pm.metrics.get(name).direction)
        elif name in ("params", "latency", "macs"):
            out.append("minimize")
        else:
            raise UsageError("--metric/--objectives: " + pm.metrics.unknown_message(name)
                             + " Extra objectives: latency, params, macs.")
    return out


# dead workers' trials: see automl_vision/search/workers.py (journal file and database storages)
from automl_vision.search.workers import recover_stale_trials  # noqa: E402


def requeue_interrupted(study: optuna.Study, log) -> int:
    """Queue again, once, the configuration of each trial stopped by Ctrl-C.

    The trial stays FAIL with reason "interrupted"; its retry (``retry_of``) runs first
    when the same command is run again, and the interrupted trial does not count towards
    ``--n-trials`` (see ``study.count_finished``).
    """
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    n = 0
    for t in trials:
        if (t.state == optuna.trial.TrialState.FAIL and t.user_attrs.get("reason") == "interrupted"
                and t.number not in retried and t.user_attrs.get("retry_of") is None):
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number}, skip_if_exists=False)
            n += 1
    if n:
        log("the interrupted trial's configuration is queued to run first when the search resumes")
    return n


def run_worker(study: optuna.Study, objective: Objective, budget: Budget, n_trials: int | None, pm: PluginManager,
               progress, direction: str) -> int:
    run_dir = objective.run_dir

    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        record = read_json(run_dir.trial_dir(trial.number) / "status.json") or {"number": trial.number}
        record["state"] = trial.state.name
        lb.write(run_dir, study)
        best_v, best_n = None, None
        try:
            if len(study.directions) == 1:
                best = study.best_trial
                best_v, best_n = best.value, best.number
        except ValueError:
            pass
        progress.trial_end(record, best_v, best_n)
        pm.on_trial_end(str(run_dir.path), trial, record)

    # several workers may share the study: see workers.trial_loop (exact --n-trials, dead workers)
    from automl_vision.search.workers import trial_loop

    return trial_loop(study, objective, budget, n_trials, [after_trial], progress.log)


def run_search(settings: SearchSettings, argv: list[str] | None = None, plain: bool | None = None) -> dict[str, Any]:
    """Run a whole search; returns the final report. Raises UsageError for bad input."""
    t_start = time.time()
    deadline = t_start + settings.time_budget if settings.time_budget else None
    pm = get_plugin_manager(settings.plugins, prefer=settings.prefer)
    objectives = check_settings(settings, pm)
    directions = directions_for(objectives, pm)
    dataset = load_dataset(settings.data, pm)
    path = choose(settings.device, settings.precision, settings.channels_last)
    apply_gpu_options(path, settings.options)
    if not settings.image_sizes:
        settings.image_sizes = auto_image_sizes(dataset, path.device)
    max_epochs = settings.max_epochs or PRESETS[settings.preset]["max_epochs"]
    run_dir = RunDir(settings.run_dir)
    run_dir.path.mkdir(parents=True, exist_ok=True)
    # worker processes print their own lines: no live panel over them
    progress = make_progress(deadline, n_trials=settings.n_trials, plain=True if settings.workers > 1 else plain)
    log = progress.log
    log(f"automl-vision {__version__}: searching {settings.data} -> {run_dir.path}")
    log(f"execution path: {path.describe()}")
    data = prepare(dataset, run_dir, settings.image_sizes[0], seed=settings.seed, log=log)
    counts = {k: int(sum(v.values())) for k, v in data.report["counts"].items()}
    log(
        f"data: {len(data.classes)} classes, {counts['train']} train / {counts['val']} val / {counts['test']} test"
        f" images, {data.report['num_skipped']} skipped (see data_report.json)"
    )
    for w in data.report.get("warnings", []):
        log(f"warning: {w}")
    from automl_vision.search.budget import plan_budget

    plan = plan_budget(settings.regime, sum(counts.values()), settings.time_budget, started=t_start)
    log(f"regime: {plan.regime} ({plan.why})")

    stored = dict(settings.as_dict(), storage=redact(settings.storage))
    run_info = read_json(run_dir.run_json) or {}
    run_info.update(
        layout_version=1,
        # the command line may hold a storage URL with its password: store it redacted
        command=[redact(str(a)) for a in (argv if argv is not None else sys.argv)],
        versions=versions(),
        settings=stored,
        objectives=objectives,
        directions=directions,
        max_epochs=max_epochs,
        study_name=settings.study_name,
        storage=redact(settings.storage) or "journal file study.journal in the run directory",
        exec_path=path.as_dict(),
        budget=plan.as_dict(),
        data={"root": data.report["root"], "classes": data.classes, "in_chans": data.in_chans, "counts": counts,
              "skipped": data.report["num_skipped"]},
        plugins=pm.fingerprint(),
        started=run_info.get("started", t_start),
        sessions=run_info.get("sessions", []) + [{"started": t_start, "time_budget": settings.time_budget,
                                                  "n_trials": settings.n_trials}],
    )
    write_json(run_dir.run_json, run_info)

    study = open_study(settings, directions, max_epochs)
    study.set_user_attr("settings", stored)
    study.set_user_attr("automl_vision_version", __version__)
    study.set_user_attr("plugins", pm.fingerprint())
    study.set_user_attr("run_dir", str(run_dir.path.resolve()))
    # workers joining from other machines stop with this session's time budget, before its final steps
    study.set_user_attr("session", {"deadline": deadline, "reserve": plan.reserve, "grace": plan.final_steps * 0.5,
                                    "search_seconds": plan.search_seconds, "n_trials": settings.n_trials})
    recover_stale_trials(study, log)
    pm.on_search_start(str(run_dir.path), stored)

    # trials stop before the final steps (and, in the small-data regime, the final fit): search/budget.py
    budget = Budget(deadline=deadline, reserve=plan.reserve, search_seconds=plan.search_seconds,
                    grace=plan.final_steps * 0.5)
    objective = Objective(settings, data, pm, path, budget, progress, objectives, max_epochs)
    from automl_vision.search.portfolio import warm_start

    warm_start(study, settings, pm, objective.families, objective.timm_models, len(data.classes), data.in_chans,
               len(data.split_index["train"]), path.device, log)
    interrupted = False
    with progress:
        try:
            parallel_ok = False
            if settings.workers > 1:
                from automl_vision.search.workers import run_parallel

                parallel_ok = run_parallel(settings, study, log)
            if not parallel_ok:  # one worker, or finish what workers that died left
                run_worker(study, objective, budget, settings.n_trials, pm, progress, directions[0])
        except KeyboardInterrupt:
            interrupted = True
            requeue_interrupted(study, log)
    df = lb.write(run_dir, study)
    lb.render(df, objectives[0], directions[0])
    if len(directions) > 1:  # multi-objective: pareto.json and the front in the terminal
        from automl_vision.search.pareto import report_pareto

        report_pareto(run_dir, study, objectives, directions)
    if interrupted:
        progress.log("interrupted: the running trial is marked failed (reason: interrupted); finished trials are kept. "
                     "Run the same command again to resume.")
        raise KeyboardInterrupt
    from automl_vision.search.final import finalize, print_summary

    report = finalize(run_dir, data, pm, path, objectives[0], log=log)
    report["search_seconds"] = time.time() - t_start
    report["time_budget"] = settings.time_budget
    write_json(run_dir.final_dir / "report.json", report)
    print_summary(report)
    run_info["finished"] = time.time()
    write_json(run_dir.run_json, run_info)
    pm.on_search_end(str(run_dir.path), study, report)
    log(f"run directory: {run_dir.path}  (total {format_duration(time.time() - t_start)})")
    return report
