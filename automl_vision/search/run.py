"""The search from start to end: data, study, trials, leaderboard, final report.

:func:`run_search` is what ``automl-vision search`` and :func:`automl_vision.search`
call. The trial loop itself is :func:`run_worker`, which a worker joining a study from
another process or machine runs too.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import platform
import re
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import optuna

from automl_vision import __version__
from automl_vision import leaderboard as lb
from automl_vision.data.images import ImageDecodeError, probe
from automl_vision.data.prepare import prepare
from automl_vision.data.sources import load_dataset, reloadable
from automl_vision.plugins import PluginManager, get_plugin_manager
from automl_vision.progress import make_progress
from automl_vision.rundir import RUN_SCHEMA, DamagedRunFileError, RunDir, check_schema, read_json, write_json
from automl_vision.search.interrupts import check_interrupt
from automl_vision.search.objective import DISK_FULL, Budget, Objective
from automl_vision.search.study import local_storage_file, open_study
# dead workers' trials (recover_stale_trials, journal file and database storages), the trial loop
# and worker processes: see automl_vision/search/workers.py
from automl_vision.search.loop import trial_loop
from automl_vision.search.workers import pid_alive, recover_stale_trials, run_parallel
from automl_vision.settings import PRESETS, SearchSettings, check_seed, format_duration, redact
from automl_vision.training.device import apply_gpu_options, choose
from automl_vision.types import Dataset, UsageError

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _not_an_interrupt(record) -> bool:
    """Optuna's warning for a failed trial, with its traceback, is dropped: the search's own
    line says the trial failed and why, the leaderboard's note keeps the reason and the
    trial's status.json the traceback. So are Ctrl-C (the trial's status says
    "interrupted" and the search prints a summary) and a full disk (one clear message,
    cli.main)."""
    message = record.getMessage()
    if message.startswith("Trial ") and " failed with " in message:
        return False
    exc = record.exc_info[1] if record.exc_info else None
    return not isinstance(exc, KeyboardInterrupt) and not (isinstance(exc, OSError) and exc.errno in DISK_FULL)


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


def auto_image_sizes(dataset: Dataset, path, requested_regime: str,
                     time_budget: float | None) -> tuple[list[int], str]:
    """(sizes, why): the resolution from the images, the budget and this machine. Small
    images are upsampled a little; photos are trained at 96 px on a GPU; on CPU at 64 px
    unless the final fit of a small folder can afford more (:func:`budget.choose_image_size`)."""
    from automl_vision.search.budget import choose_image_size, resolve_regime

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
        return [32], f"32 px (the images' median side is {median:.0f} px)"
    if path.device.startswith("cuda"):
        return [96], "96 px (photos on a GPU)"
    regime = resolve_regime(requested_regime, len(dataset.samples), time_budget)[0]
    speed = (path.measured or {}).get(path.precision + ("+cl" if path.channels_last else ""))
    side, why = choose_image_size(median, len(dataset.samples), time_budget, regime, speed)
    return [side], why


# what a search writes before run.json: a start interrupted that early resumes like any run
_START_FILES = re.compile(r"\.?(cache|data_report\.json|splits\.json)(\.[0-9a-f]+\.tmp)?")


# what a resumed search reads from its run.json (the settings may be absent in a run started by an older
# version or by hand; present, they must be what the search wrote)
RESUME_SCHEMA = {**{k: v for k, v in RUN_SCHEMA.items() if k != "settings"}, "settings?": RUN_SCHEMA["settings"],
                 "sessions?": [dict], "study_name?": str, "started?": (int, float)}


def previous_run(run_dir: RunDir, overwrite: bool = False) -> dict[str, Any] | None:
    """This tool's ``run.json`` in ``run_dir``; None when there is none, or (with
    ``overwrite``) when the file there is someone else's or damaged."""
    try:
        info = read_json(run_dir.run_json)
        if not (isinstance(info, dict) and "layout_version" in info):
            return None  # someone else's file: check_out says so
        problem = check_schema(info, RESUME_SCHEMA)
        if problem:  # ours, but edited: what a resumed search would read from it must be there
            raise DamagedRunFileError(run_dir.run_json, problem)
    except DamagedRunFileError:
        if overwrite:
            return None
        raise
    return info


def check_out(run_dir: RunDir, study_name: str, overwrite: bool) -> None:
    """Refuse an ``--out`` that is a file, or a folder of other files that the search would
    overwrite (its run.json, leaderboard.csv, best/ ...), unless ``overwrite``."""
    path = run_dir.path
    existing = next(p for p in (path, *path.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise UsageError(f"--out {path}: {existing} is a file, not a folder; give a new folder, or an earlier run's "
                         "folder to resume it")
    if overwrite or existing != path or not any(path.iterdir()):
        return
    info = previous_run(run_dir)
    if info is None and not all(_START_FILES.fullmatch(p.name) for p in path.iterdir()):
        raise UsageError(f"--out {path}: the folder holds files that are not an automl-vision run, and the search "
                         "would overwrite some of them; give a new or empty folder, or add --overwrite to use it anyway")
    if info is not None and info.get("study_name", study_name) != study_name:
        raise UsageError(f"--out {path}: the folder holds the run of study {info['study_name']!r}, not "
                         f"{study_name!r}; give --study-name {info['study_name']} to resume it, or another --out")


def _plugin_missing(name: str) -> str | None:
    """Why a ``--plugin`` the user named cannot even be found (None: it can be imported)."""
    if name.endswith(".py") or os.sep in name:
        return None if Path(name).expanduser().is_file() else "no such file"
    top = name.split(".")[0]
    try:
        found = importlib.util.find_spec(top) or importlib.machinery.PathFinder.find_spec(top, [os.getcwd()])
    except (ImportError, ValueError):
        found = None
    return None if found else f"no module named {top!r} is installed or in the current folder"


def check_start(settings: SearchSettings, overwrite: bool = False) -> None:
    """Usage errors found before any work: nothing is created, imported or trained for them."""
    check_seed(settings.seed)
    check_out(RunDir(settings.run_dir), settings.study_name, overwrite)
    journal = local_storage_file(settings.storage)
    if journal is not None and not journal.absolute().parent.is_dir():
        raise UsageError(f"--storage {redact(settings.storage)}: the folder {journal.absolute().parent} does not "
                         "exist; create it first, or name a file in an existing folder")
    for name in settings.plugins:
        why = _plugin_missing(name)
        if why:
            raise UsageError(f"--plugin {name}: {why}; give the path of a plugin's .py file, or the name of an "
                             "installed plugin module")


def remove_dead_leftovers(run_dir: RunDir) -> None:
    """Remove the ``.best.<pid>.tmp``/``.old`` folders of processes that died while replacing
    best/; when best/ itself is missing then, the ``.old`` one is the last complete best/."""
    for leftover, pid, kind in run_dir.best_leftovers():
        if pid != os.getpid() and pid_alive(pid):
            continue
        if kind == "old" and not run_dir.best_dir.exists():
            leftover.rename(run_dir.best_dir)
        else:
            shutil.rmtree(leftover, ignore_errors=True)


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
    from automl_vision.search.init_plan import configure as configure_weights

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
        record = run_dir.read_trial(trial.number) or {"number": trial.number}
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

    # several workers may share the study: see loop.trial_loop (exact --n-trials, dead workers)
    return trial_loop(study, objective, budget, n_trials, [after_trial], progress.log)


def run_search(settings: SearchSettings, argv: list[str] | None = None, plain: bool | None = None,
               overwrite: bool = False, started: float | None = None) -> dict[str, Any]:
    """Run a whole search; returns the final report. Raises UsageError for bad input.

    ``overwrite``: use an ``--out`` folder that holds other files (see :func:`check_out`).
    ``started``: when ``--time-budget`` began (the command line passes its process start, so that
    its imports count); by default, now.
    """
    check_start(settings, overwrite)
    t_start = time.time() if started is None else started
    deadline = t_start + settings.time_budget if settings.time_budget else None
    pm = get_plugin_manager(settings.plugins, prefer=settings.prefer)
    objectives = check_settings(settings, pm)
    directions = directions_for(objectives, pm)
    dataset = load_dataset(settings.data, pm)
    path = choose(settings.device, settings.precision, settings.channels_last)
    apply_gpu_options(path, settings.options)
    size_why = None
    if not settings.image_sizes:
        # a resumed run keeps the resolution it chose: its trials and its cache are at that size
        earlier = ((previous_run(RunDir(settings.run_dir), overwrite) or {}).get("settings") or {}).get("image_sizes")
        if earlier:
            settings.image_sizes = [int(x) for x in earlier]
        else:
            settings.image_sizes, size_why = auto_image_sizes(dataset, path, settings.regime, settings.time_budget)
    max_epochs = settings.max_epochs or PRESETS[settings.preset]["max_epochs"]
    run_dir = RunDir(settings.run_dir)
    run_dir.path.mkdir(parents=True, exist_ok=True)
    remove_dead_leftovers(run_dir)
    # worker processes print their own lines: no live panel over them
    progress = make_progress(deadline, n_trials=settings.n_trials, plain=True if settings.workers > 1 else plain)
    log = progress.log
    log(f"automl-vision {__version__}: searching {settings.data} -> {run_dir.path}")
    log(f"execution path: {path.describe()}")
    if size_why:
        log(f"image size: {size_why}")
    data = prepare(dataset, run_dir, settings.image_sizes[0], seed=settings.seed, log=log)
    counts = {k: int(sum(v.values())) for k, v in data.report["counts"].items()}
    log(
        f"data: {len(data.classes)} classes, {counts['train']} train / {counts['val']} val / {counts['test']} test"
        f" images, {data.report['num_skipped']} skipped (see data_report.json)"
    )
    for w in data.report.get("warnings", []):
        log(f"warning: {w}")
    from automl_vision.search.budget import plan_budget

    plan = plan_budget(settings.regime, sum(counts.values()), settings.time_budget, started=t_start,
                       now=time.time())
    log(f"regime: {plan.regime} ({plan.why})")
    if plan.time_budget:
        fit = f", final fit {format_duration(plan.final_fit)}" if plan.final_fit else ""
        log(f"budget: {format_duration(plan.time_budget)} from the command's start: {format_duration(plan.spent)} "
            f"spent starting (imports, device probe, photos), trials {format_duration(plan.search_seconds)}, "
            f"final steps {format_duration(plan.final_steps)}{fit}")

    run_info = previous_run(run_dir, overwrite) or {}
    derived_batches = not settings.batch_sizes
    if derived_batches:  # a resumed run keeps the batch sizes it chose, as it keeps its resolution
        from automl_vision.search.space import batch_choices

        settings.batch_sizes = [int(b) for b in (run_info.get("settings") or {}).get("batch_sizes")
                                or batch_choices(len(data.split_index["train"]))]
    stored = settings.as_stored()
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
        # location: how later commands list the data again (data.prepare.reload_prepared)
        data={"root": data.report["root"], "location": reloadable(settings.data, pm), "classes": data.classes,
              "in_chans": data.in_chans, "counts": counts, "skipped": data.report["num_skipped"]},
        plugins=pm.fingerprint(),
        started=run_info.get("started", t_start),
        sessions=run_info.get("sessions", []) + [{"started": t_start, "time_budget": settings.time_budget,
                                                  "n_trials": settings.n_trials}],
    )
    write_json(run_dir.run_json, run_info)  # before the storage opens: a run that cannot reach it is still recorded

    study = open_study(settings, directions, max_epochs)
    if derived_batches:
        # a study an older version started keeps the batch sizes it searched (Optuna cannot change a
        # parameter's choices within a study; its run.json did not record them)
        from automl_vision.search.portfolio import study_choices

        searched = study_choices(study, "batch_size")
        if searched and searched != settings.batch_sizes:
            settings.batch_sizes = [int(b) for b in searched]
            stored = run_info["settings"] = settings.as_stored()
            write_json(run_dir.run_json, run_info)
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

    warm_start(study, settings, pm, objective.families, objective.named_models, len(data.classes), data.in_chans,
               len(data.split_index["train"]), path.device, log)
    check_interrupt()  # a Ctrl-C swallowed during start-up (e.g. inside a library's import) stops before any trial
    interrupted: KeyboardInterrupt | None = None
    with progress:
        try:
            parallel_ok = False
            if settings.workers > 1:
                parallel_ok = run_parallel(settings, study, log)
            if not parallel_ok:  # one worker, or finish what workers that died left
                run_worker(study, objective, budget, settings.n_trials, pm, progress, directions[0])
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (interrupts.Terminated)
            interrupted = exc
            requeue_interrupted(study, log)
    df = lb.write(run_dir, study)
    lb.render(df, objectives[0], directions[0])
    if len(directions) > 1:  # multi-objective: pareto.json and the front in the terminal
        from automl_vision.search.pareto import report_pareto

        report_pareto(run_dir, study, objectives, directions)
    if interrupted:
        progress.log("interrupted: the running trial is marked failed (reason: interrupted); finished trials are kept. "
                     "Run the same command again to resume.")
        raise interrupted
    from automl_vision.search.final import finalize, print_summary

    report = finalize(run_dir, data, pm, path, objectives[0], log=log)
    report["search_seconds"] = time.time() - t_start
    report["time_budget"] = settings.time_budget
    write_json(run_dir.report, report)
    print_summary(report)
    run_info["finished"] = time.time()
    write_json(run_dir.run_json, run_info)
    pm.on_search_end(str(run_dir.path), study, report)
    log(f"run directory: {run_dir.path}  (total {format_duration(time.time() - t_start)})")
    return report
