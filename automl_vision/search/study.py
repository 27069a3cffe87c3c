"""Creating and opening the Optuna study: storage, sampler, pruner."""

from __future__ import annotations

import re
from pathlib import Path

import optuna

from automl_vision.rundir import RunDir
from automl_vision.settings import SearchSettings
from automl_vision.types import UsageError

PRUNERS = ("hyperband", "sha", "median", "none")


def redact(url: str | None) -> str | None:
    """A storage URL with its password replaced, safe to print or store."""
    if not url:
        return url
    return re.sub(r"(://[^:/@]+:)[^@]+@", r"\1***@", url)


def make_storage(settings: SearchSettings) -> optuna.storages.BaseStorage:
    """The study's storage: the URL given, or the embedded journal file in the run directory.

    The journal file is what Optuna recommends for several processes on one machine; a
    database URL (``postgresql://``, ``mysql://``, ``sqlite:///``) gives an RDB storage with
    heartbeats, for several machines.
    """
    url = settings.storage
    if not url:
        from optuna.storages.journal import JournalFileBackend

        path = RunDir(settings.run_dir).journal
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    if url.endswith(".journal") or url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        path = url.split(":", 1)[1] if url.startswith("journal:") else url
        return optuna.storages.JournalStorage(JournalFileBackend(path))
    if "://" not in url:
        raise UsageError(
            f"--storage {redact(url)!r}: expected a database URL (postgresql://user@host/db, sqlite:///file.db) "
            "or a journal file path ending in .journal"
        )
    try:
        from optuna.storages import RDBStorage, RetryFailedTrialCallback

        return RDBStorage(
            url,
            heartbeat_interval=10,
            grace_period=40,
            failed_trial_callback=RetryFailedTrialCallback(max_retry=1),
            engine_kwargs={"pool_pre_ping": True},
        )
    except ImportError as exc:
        raise UsageError(f"--storage {redact(url)}: a database driver is missing ({exc}); for PostgreSQL: pip install 'automl-vision[postgres]'") from exc
    except Exception as exc:
        raise UsageError(f"--storage {redact(url)}: cannot open the storage: {type(exc).__name__}: {redact(str(exc))}") from exc


def make_pruner(name: str, max_epochs: int) -> optuna.pruners.BasePruner:
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max_epochs, reduction_factor=3)
    if name == "sha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise UsageError(f"--pruner {name!r}: expected one of {', '.join(PRUNERS)}")


def make_sampler(settings: SearchSettings, directions: list[str]) -> optuna.samplers.BaseSampler:
    import warnings

    kind = settings.options.get("sampler", "tpe")
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=settings.seed)
    if len(directions) > 1 and kind == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=settings.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=settings.seed,
            multivariate=True,
            group=True,
            constant_liar=True,
            n_startup_trials=int(settings.options.get("n_startup_trials", 5)),
        )


def open_study(settings: SearchSettings, directions: list[str], max_epochs: int, create: bool = True) -> optuna.Study:
    storage = make_storage(settings)
    sampler = make_sampler(settings, directions)
    pruner = make_pruner(settings.pruner, max_epochs) if len(directions) == 1 else optuna.pruners.NopPruner()
    if create:
        study = optuna.create_study(
            storage=storage,
            study_name=settings.study_name,
            directions=directions,
            sampler=sampler,
            pruner=pruner,
            load_if_exists=True,
        )
        if [d.name.lower() for d in study.directions] != directions:
            raise UsageError(
                f"study {settings.study_name!r} already exists with direction(s) "
                f"{[d.name.lower() for d in study.directions]}, not {directions}; use another --study-name or --out"
            )
        return study
    try:
        return optuna.load_study(study_name=settings.study_name, storage=storage, sampler=sampler, pruner=pruner)
    except KeyError as exc:
        raise UsageError(f"no study named {settings.study_name!r} in {redact(settings.storage) or 'the run directory'}") from exc


def journal_path(settings: SearchSettings) -> Path:
    return RunDir(settings.run_dir).journal
