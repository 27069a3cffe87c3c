"""Creating and opening the Optuna study: storage, sampler, pruner."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import optuna

from automl_vision.rundir import DamagedRunFileError, RunDir, damaged_journal_record, repair_journal
from automl_vision.settings import SearchSettings, redact
from automl_vision.types import UsageError

PRUNERS = ("hyperband", "sha", "median", "none")


@dataclass(frozen=True)
class Heartbeat:
    """How often a worker says it is alive, and after how long without a sign it is dead.

    Set with ``AUTOML_VISION_HEARTBEAT=INTERVAL[,GRACE]`` (seconds; the grace period defaults
    to four intervals). Every worker of a study should use the same values. The defaults
    (10 s, 40 s) cost a database a few writes a minute per worker; tests use 1 s.
    """

    interval: float = 10.0
    grace: float = 40.0


def heartbeat_config() -> Heartbeat:
    text = os.environ.get("AUTOML_VISION_HEARTBEAT", "").strip()
    if not text:
        return Heartbeat()
    try:
        parts = [float(x) for x in text.split(",")]
        interval = parts[0]
        grace = parts[1] if len(parts) > 1 else 4 * interval
        if interval <= 0 or grace <= interval:
            raise ValueError
    except (ValueError, IndexError):
        raise UsageError(
            f"AUTOML_VISION_HEARTBEAT={text!r}: expected INTERVAL[,GRACE] in seconds with GRACE > INTERVAL, e.g. 10,40"
        ) from None
    return Heartbeat(interval, grace)


def is_rdb(storage: optuna.storages.BaseStorage) -> bool:
    """Whether ``storage`` is a database (a study wraps it in Optuna's cache layer)."""
    from optuna.storages import BaseStorage

    backend = getattr(storage, "_backend", None)
    if isinstance(backend, BaseStorage):
        storage = backend
    return isinstance(storage, optuna.storages.RDBStorage)


def retried_numbers(trials: list[optuna.trial.FrozenTrial]) -> set[int]:
    """Numbers of failed trials that another trial retries (journal: ``retry_of``; RDB: Optuna's
    ``RetryFailedTrialCallback`` system attribute)."""
    out = set()
    for t in trials:
        n = t.user_attrs.get("retry_of")
        if n is None:
            n = t.system_attrs.get("failed_trial")
        if n is not None:
            out.add(int(n))
    return out


def count_finished(trials: list[optuna.trial.FrozenTrial]) -> int:
    """Finished trials that count towards ``--n-trials``.

    A trial failed because its worker died and re-queued does not count: its retry does,
    so a killed worker never costs the search a trial.
    """
    retried = retried_numbers(trials)
    n = 0
    for t in trials:
        if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED):
            n += 1
        elif t.state == optuna.trial.TrialState.FAIL and t.number not in retried:
            n += 1
    return n


def driver_url(url: str) -> str:
    """``postgresql://`` with the PostgreSQL driver that is installed.

    SQLAlchemy 2.1 reads a bare ``postgresql://`` as psycopg 3; automl-vision's
    ``[postgres]`` extra installs psycopg2, so the URL names it when psycopg 3 is absent.
    """
    import importlib.util

    if url.startswith(("postgresql://", "postgres://")) and importlib.util.find_spec("psycopg") is None \
            and importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + url.split("://", 1)[1]
    return url


def journal_storage(path: str | os.PathLike) -> optuna.storages.JournalStorage:
    """The journal file's study storage; a damaged journal is one line (DamagedRunFileError), not a traceback."""
    from optuna.storages.journal import JournalFileBackend

    repair_journal(path)  # a record cut short by a kill or a full disk would break the study
    try:
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    except ValueError:  # json.JSONDecodeError, or Optuna's "Invalid log format."
        line = damaged_journal_record(path)
        raise DamagedRunFileError(path, f"record {line or '?'} of the study journal is not valid JSON") from None


def local_storage_file(url: str | None) -> Path | None:
    """The local file a ``--storage`` value names (a journal file or SQLite), else None: the one
    reading of such a value, for opening the storage and for checking its folder first."""
    if not url:
        return None
    if url.startswith("journal:"):
        return Path(url.split(":", 1)[1])
    if url.endswith(".journal"):
        return Path(url)
    if url.startswith("sqlite:///"):
        name = url[len("sqlite:///"):].split("?", 1)[0]
        return Path(name) if name and name != ":memory:" else None
    return None


def make_storage(settings: SearchSettings) -> optuna.storages.BaseStorage:
    """The study's storage: the URL given, or the embedded journal file in the run directory.

    The journal file is what Optuna recommends for several processes on one machine; a
    database URL (``postgresql://``, ``mysql://``, ``sqlite:///``) gives an RDB storage with
    heartbeats, for several machines.
    """
    url = settings.storage
    if not url:
        path = RunDir(settings.run_dir).journal
        path.parent.mkdir(parents=True, exist_ok=True)
        return journal_storage(path)
    if url.endswith(".journal") or url.startswith("journal:"):
        return journal_storage(local_storage_file(url))
    if "://" not in url:
        raise UsageError(
            f"--storage {redact(url)!r}: expected a database URL (postgresql://user@host/db, sqlite:///file.db) "
            "or a journal file path ending in .journal"
        )
    beat = heartbeat_config()
    try:
        import warnings

        from optuna.storages import RDBStorage

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            # a dead worker's RUNNING trial is failed after the grace period and re-queued once
            if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback"):  # optuna >= 4.9
                retry = {"heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)}
            else:
                retry = {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback(max_retry=1)}
            return RDBStorage(
                driver_url(url),
                heartbeat_interval=max(1, round(beat.interval)),
                grace_period=max(2, round(beat.grace)),
                engine_kwargs={"pool_pre_ping": True},
                **retry,
            )
    except ImportError as exc:
        raise UsageError(f"--storage {redact(url)}: a database driver is missing ({exc}); for PostgreSQL: pip install 'automl-vision[postgres]'") from exc
    except Exception as exc:
        raise UsageError(f"--storage {redact(url)}: cannot open the storage: {type(exc).__name__}: {redact(str(exc))}") from exc


def first_rung(max_epochs: int) -> int:
    """Epochs before the first pruning decision: after one epoch (with warmup still
    running) many good configurations are at chance level, and the benchmark on digits
    pruned them; from 10 epochs on, the first decision waits for two."""
    return 2 if max_epochs >= 10 else 1


# Trials report their validation score at the share of their own schedule they have
# run, in percent (objective.schedule_step), not at their epoch: with a time budget a
# cheap model's schedule is stretched to more epochs than a costly one's, and at equal
# epochs a longer schedule is still at a higher learning rate, so comparing epochs
# would prune the cheap models that end up best. The pruners' resources are percent.
SCHEDULE_STEPS = 100


class AfterStartup(optuna.pruners.BasePruner):
    """Lets ``pruner`` decide only once ``n_startup`` trials have completed.

    Successive halving promotes the top third of a rung, but while a rung holds fewer
    than three trials it keeps only the best one: the second trial of a search is pruned
    unless it leads the first at its first rung, where a few epochs of noise decide. In
    a short budget the first trials are most of the search (the warm-start portfolio),
    so they run to the end and become the pruner's yardstick.
    """

    def __init__(self, pruner: optuna.pruners.BasePruner, n_startup: int = 3):
        self.pruner = pruner
        self.n_startup = n_startup

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        # always asked: successive halving records each trial's score at its rungs as it
        # goes, and the startup trials must be there for later ones to be compared with
        decision = self.pruner.prune(study, trial)
        done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        return decision and len(done) >= self.n_startup


def make_pruner(name: str, max_epochs: int) -> optuna.pruners.BasePruner:
    rung = max(1, SCHEDULE_STEPS * first_rung(max_epochs) // max(1, max_epochs))
    if name == "hyperband":
        return AfterStartup(optuna.pruners.HyperbandPruner(min_resource=rung, max_resource=SCHEDULE_STEPS,
                                                           reduction_factor=3))
    if name == "sha":
        return AfterStartup(optuna.pruners.SuccessiveHalvingPruner(min_resource=rung, reduction_factor=3))
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=rung)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise UsageError(f"--pruner {name!r}: expected one of {', '.join(PRUNERS)}")


def make_sampler(settings: SearchSettings, directions: list[str]) -> optuna.samplers.BaseSampler:
    import warnings

    kind = settings.options.sampler
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
            n_startup_trials=5,
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


