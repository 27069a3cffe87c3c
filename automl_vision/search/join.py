"""``automl-vision worker``: join a running search's study from another process or machine.

Kept apart from :mod:`automl_vision.search.workers` (which plans, spawns and watches worker
processes, and is imported by :mod:`automl_vision.search.run`): joining reads the search's
settings and then runs the same trial loop as the search, so it depends on ``run`` and
nothing depends on it (issue #19: the ``run`` <-> ``workers`` import cycle).
"""

from __future__ import annotations

import os
import time

import optuna

from automl_vision.rundir import RunDir
from automl_vision.types import UsageError


def join_study(storage_url: str, study_name: str | None, device: str = "auto", run_dir: str | None = None,
               data: str | None = None, threads: int | None = None, name: str | None = None,
               n_trials: int | None = None, time_budget: float | None = None, plain: bool | None = None,
               precision: str | None = None, channels_last: str | None = None) -> int:
    """``automl-vision worker``: join an existing study and run its trials until it is done.

    Everything but the storage and the study name comes from the study's user attributes
    (settings, data location, run directory, the search's time limit). Refuses (UsageError)
    when this installation's automl-vision version or plugins differ from the study's.
    Returns the number of trials this worker ran.
    """
    from automl_vision import __version__
    from automl_vision.plugins import get_plugin_manager
    from automl_vision.progress import make_progress
    from automl_vision.search.objective import Budget, Objective, worker_id
    from automl_vision.data.prepare import reload_prepared
    from automl_vision.search.run import check_settings, directions_for, run_worker
    from automl_vision.search.study import make_storage, open_study
    from automl_vision.settings import PRESETS, SearchSettings, redact
    from automl_vision.training.device import choose

    if threads:
        import torch

        torch.set_num_threads(threads)
    shown = redact(storage_url)
    if storage_url.endswith(".journal") and "://" not in storage_url and not os.path.exists(storage_url):
        raise UsageError(f"--storage {storage_url}: no such journal file; give the study.journal of the search's run "
                         "directory or a database URL")
    probe = SearchSettings(data="", run_dir=run_dir or ".", study_name=study_name or "", storage=storage_url)
    storage = make_storage(probe)
    names = optuna.get_all_study_names(storage)
    if study_name is None:
        if len(names) != 1:
            raise UsageError(f"--study-name: {shown} holds {len(names)} studies ({', '.join(names) or 'none'}); name one")
        study_name = names[0]
    if study_name not in names:
        raise UsageError(f"no study named {study_name!r} in {shown}; it holds: {', '.join(names) or 'no study'}. "
                         "Start the search first (automl-vision search ... --storage URL), then the workers.")
    attrs = optuna.load_study(study_name=study_name, storage=storage).user_attrs
    if "settings" not in attrs:
        raise UsageError(f"study {study_name!r} in {shown} was not created by 'automl-vision search' (no settings stored)")
    theirs = attrs.get("automl_vision_version")
    if theirs != __version__:
        raise UsageError(
            f"this worker runs automl-vision {__version__} but study {study_name!r} was created with automl-vision "
            f"{theirs}; install the same version on this machine (pip install 'automl-vision=={theirs}')"
        )
    settings = SearchSettings.from_dict(attrs["settings"])
    settings.storage = storage_url  # the stored URL has its password redacted
    settings.study_name = study_name
    settings.run_dir = run_dir or attrs.get("run_dir") or settings.run_dir
    settings.device = device
    settings.workers = 1
    settings.precision = precision or settings.precision
    settings.channels_last = channels_last or settings.channels_last
    if data:
        settings.data = data
    pm = get_plugin_manager(settings.plugins, prefer=getattr(settings, "prefer", None) or None)
    ours, study_plugins = pm.fingerprint(), attrs.get("plugins") or {}
    if ours != study_plugins:
        diff = []
        for plugin in sorted(set(ours) | set(study_plugins)):
            if ours.get(plugin) != study_plugins.get(plugin):
                diff.append(f"{plugin}: study {study_plugins.get(plugin, 'not loaded')}, here {ours.get(plugin, 'not loaded')}")
        raise UsageError(
            f"the plugins here differ from study {study_name!r}'s: " + "; ".join(diff)
            + ". Install the same plugin versions on this machine (see 'automl-vision plugins')."
        )
    rd = RunDir(settings.run_dir)
    if not rd.run_json.exists():
        raise UsageError(f"run directory {rd.path} not found on this machine (no run.json): mount the search's shared "
                         "run directory there or pass its path here with --run-dir")
    objectives = check_settings(settings, pm)
    directions = directions_for(objectives, pm)
    max_epochs = settings.max_epochs or PRESETS[settings.preset]["max_epochs"]
    path = choose(settings.device, settings.precision, settings.channels_last)
    from automl_vision.training.device import apply_gpu_options

    apply_gpu_options(path, settings.options)
    session = attrs.get("session") or {}
    deadline = session.get("deadline")
    reserve = float(session.get("reserve") or 0.0)
    if time_budget:
        deadline, reserve = time.time() + time_budget, 0.0
    label = f"{name} {worker_id()}" if name else worker_id()
    progress = make_progress(deadline, worker=label, n_trials=n_trials or settings.n_trials, plain=plain)
    log = progress.log
    if deadline is not None and deadline - reserve <= time.time():
        log(f"study {study_name!r}: the search's time budget has ended; nothing to do (give --time-budget to go on)")
        return 0
    log(f"joined study {study_name!r} in {shown}; run directory {rd.path}; execution path: {path.describe()}")
    data_ = reload_prepared(rd, pm, location=data)  # --data: where the data is on this machine
    study = open_study(settings, directions, max_epochs, create=False)
    budget = Budget(deadline=deadline, reserve=reserve, search_seconds=session.get("search_seconds"),
                    grace=session.get("grace") if not time_budget else None)
    objective = Objective(settings, data_, pm, path, budget, progress, objectives, max_epochs)
    pm.on_search_start(str(rd.path), dict(attrs["settings"]))  # the hook's contract: a joining worker starts too
    with progress:
        ran = run_worker(study, objective, budget, n_trials or settings.n_trials, pm, progress, directions[0])
    log(f"worker done: ran {ran} trial(s)")
    return ran
