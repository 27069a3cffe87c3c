"""automl-vision plugin: track a search in MLflow, one MLflow run per trial.

What goes where:

* one MLflow **experiment** per run directory: ``$AUTOML_VISION_MLFLOW_EXPERIMENT``, or the
  run directory's name;
* one **search run** (the parent, ``automl_vision.role=search``) with the search settings as
  params; at the end it gets the best model's files (``best/``), ``final/report.json``
  and ``leaderboard.csv`` as artifacts, and the best trial's validation and test metrics as
  ``best_val_<metric>`` / ``best_test_<metric>``;
* one **trial run** per trial, nested under the search run (``mlflow.parentRunId``): every
  epoch's numbers from ``trials/<n>/history.json`` as metrics with ``step = epoch``
  (``train_loss``, ``lr``, ``val_<metric>``, ...), and when the trial ends its sampled
  hyperparameters as params, ``value`` (the objective), ``seconds`` and ``params_count`` as
  metrics, its state and reason as tags, its ``config.json`` / ``status.json`` as artifacts,
  and the run status (``COMPLETE`` -> ``FINISHED``, ``PRUNED`` -> ``KILLED``, ``FAIL`` ->
  ``FAILED``).

The tracking URI is MLflow's own ``$MLFLOW_TRACKING_URI``; without it, a SQLite store in the
run directory (``sqlite:///<run_dir>/mlflow.db``, artifacts in ``<run_dir>/mlartifacts``),
which is MLflow's recommended local backend (its file store ``./mlruns`` is in maintenance
mode and refused by default since MLflow 3.7).

Tracking never stops a search: the first exception inside any hook of this plugin is
reported as one warning line (logger ``automl_vision.plugins.mlflow``) and tracking is then
off for the rest of the search in that process. ``mlflow`` is imported only when a search
starts, so ``automl-vision plugins`` and ``--help`` stay fast.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

from automl_vision import hookimpl

__version__ = "0.1.0"

ENV_EXPERIMENT = "AUTOML_VISION_MLFLOW_EXPERIMENT"
ENV_TRACKING_URI = "MLFLOW_TRACKING_URI"  # MLflow's own variable
DB_NAME = "mlflow.db"
ARTIFACTS_NAME = "mlartifacts"

TAG_ROLE = "automl_vision.role"  # "search" (the parent run) or "trial"
TAG_RUN_KEY = "automl_vision.run_key"  # a digest of the run directory's path, for search filters
TAG_RUN_DIR = "automl_vision.run_dir"
TAG_TRIAL = "automl_vision.trial"
TAG_STATE = "automl_vision.state"
TAG_PARENT = "mlflow.parentRunId"  # MLflow's nesting tag

STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}

log = logging.getLogger("automl_vision.plugins.mlflow")


# --------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------


def tracking_uri(run_dir: str) -> str:
    """``$MLFLOW_TRACKING_URI``, or a SQLite store in the run directory."""
    return os.environ.get(ENV_TRACKING_URI) or f"sqlite:///{Path(run_dir).resolve() / DB_NAME}"


def experiment_name(run_dir: str) -> str:
    """``$AUTOML_VISION_MLFLOW_EXPERIMENT``, or the run directory's name."""
    return os.environ.get(ENV_EXPERIMENT) or Path(run_dir).resolve().name


def artifact_location(uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: next to a SQLite database, in
    ``mlartifacts/`` (MLflow would otherwise use ``./mlruns`` of the current directory);
    for any other store, whatever the store decides."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):].split("?", 1)[0])
        return (db.parent.resolve() / ARTIFACTS_NAME).as_uri()
    return None


# --------------------------------------------------------------------------------------
# The tracker: one per run directory and process
# --------------------------------------------------------------------------------------


def _key(name: str) -> str:
    # MLflow keys: alphanumerics, _ - . space / and :
    return "".join(c if c.isalnum() or c in "_-. /:" else "_" for c in str(name))[:250]


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def _text(value: Any, limit: int = 500) -> str:
    if isinstance(value, (dict, list, tuple)):
        import json

        value = json.dumps(value, default=str, sort_keys=True)
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _flatten(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in settings.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


class Tracker:
    """The MLflow client, experiment and parent run of one run directory."""

    def __init__(self, run_dir: str) -> None:
        from filelock import FileLock
        from mlflow.tracking import MlflowClient

        self.run_dir = str(Path(run_dir).resolve())
        self.key = hashlib.sha256(self.run_dir.encode()).hexdigest()[:16]
        self.uri = tracking_uri(run_dir)
        self.trials: dict[int, str] = {}
        # several workers of one search start together: one creates the database, experiment and parent run
        with FileLock(str(Path(self.run_dir) / ".mlflow.lock"), timeout=300):
            self.client = MlflowClient(tracking_uri=self.uri)
            self.experiment_id = self._experiment(experiment_name(run_dir))
            self.parent_id, self.new_parent = self._parent()

    def _experiment(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            try:
                return self.client.create_experiment(name, artifact_location=artifact_location(self.uri),
                                                     tags={"created_by": f"automl-vision-mlflow {__version__}"})
            except MlflowException:  # created meanwhile by another process
                exp = self.client.get_experiment_by_name(name)
                if exp is None:
                    raise
        if exp.lifecycle_stage == "deleted":
            self.client.restore_experiment(exp.experiment_id)
        return exp.experiment_id

    def find(self, role: str, trial: int | None = None) -> str | None:
        """The id of this run directory's search run, or of one trial's run, if it exists."""
        where = f"tags.`{TAG_RUN_KEY}` = '{self.key}' and tags.`{TAG_ROLE}` = '{role}'"
        if trial is not None:
            where += f" and tags.`{TAG_TRIAL}` = '{trial}'"
        runs = self.client.search_runs([self.experiment_id], filter_string=where, max_results=1)
        return runs[0].info.run_id if runs else None

    def _tags(self, role: str) -> dict[str, str]:
        return {TAG_ROLE: role, TAG_RUN_KEY: self.key, TAG_RUN_DIR: self.run_dir}

    def _parent(self) -> tuple[str, bool]:
        found = self.find("search")
        if found:  # a resumed search, or another worker of it
            self.client.update_run(found, status="RUNNING")
            return found, False
        run = self.client.create_run(self.experiment_id, run_name=f"search {Path(self.run_dir).name}",
                                     tags=self._tags("search"))
        return run.info.run_id, True

    def trial_run(self, number: int) -> str:
        """The MLflow run of trial ``number``, created on first use."""
        if number not in self.trials:
            found = self.find("trial", number)
            if found is None:
                tags = {**self._tags("trial"), TAG_TRIAL: str(number), TAG_PARENT: self.parent_id}
                found = self.client.create_run(self.experiment_id, run_name=f"trial {number}", tags=tags).info.run_id
            self.trials[number] = found
        return self.trials[number]

    def log(self, run_id: str, metrics: dict[str, Any] | None = None, params: dict[str, Any] | None = None,
            tags: dict[str, Any] | None = None, step: int = 0) -> None:
        """Numbers as metrics at ``step``, params and tags, in batches MLflow accepts."""
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        m = [Metric(_key(k), x, now, step) for k, v in (metrics or {}).items() if (x := _number(v)) is not None]
        p = [Param(_key(k), _text(v)) for k, v in (params or {}).items() if v is not None]
        t = [RunTag(_key(k), _text(v, 5000)) for k, v in (tags or {}).items() if v is not None]
        for i in range(0, len(m), 1000):
            self.client.log_batch(run_id, metrics=m[i:i + 1000])
        for i in range(0, len(p), 100):
            self.client.log_batch(run_id, params=p[i:i + 100])
        for i in range(0, len(t), 100):
            self.client.log_batch(run_id, tags=t[i:i + 100])


class _State:
    tracker: Tracker | None = None
    disabled: str | None = None  # the run directory whose tracking failed

    def get(self, run_dir: str) -> Tracker:
        if self.tracker is None or self.tracker.run_dir != str(Path(run_dir).resolve()):
            self.tracker = Tracker(run_dir)
        return self.tracker


STATE = _State()


def _safely(hook: str, run_dir: str, fn: Callable[[Tracker], None]) -> None:
    """Run ``fn`` with the run directory's tracker; the first failure turns tracking off."""
    if STATE.disabled == str(Path(run_dir).resolve()):
        return
    try:
        fn(STATE.get(run_dir))
    except Exception as exc:  # tracking never stops a search
        STATE.disabled, STATE.tracker = str(Path(run_dir).resolve()), None
        why = " ".join(f"{type(exc).__name__}: {exc}".split())
        log.warning("automl-vision-mlflow: MLflow tracking is off for the rest of this search (the search goes on): "
                    "%s failed with %s (tracking URI %s)", hook, _text(why, 400), tracking_uri(run_dir))


# --------------------------------------------------------------------------------------
# Hooks
# --------------------------------------------------------------------------------------


@hookimpl
def on_search_start(run_dir, settings):
    """Open (or, on resume, reopen) the experiment and the search's parent run; log the
    search settings as params of a new parent run. Turns tracking back on if a previous
    search in this process had it turned off."""
    STATE.disabled, STATE.tracker = None, None

    def start(tr: Tracker) -> None:
        if tr.new_parent:
            tr.log(tr.parent_id, params=_flatten(dict(settings)))

    _safely("on_search_start", run_dir, start)


@hookimpl
def on_epoch_end(run_dir, trial_number, epoch, record):
    """Log the epoch's numbers (``train_loss``, ``lr``, ``val_<metric>``, timings) as
    metrics of the trial's run, with ``step = epoch``; the trial's run is created by
    the first epoch."""

    def epoch_end(tr: Tracker) -> None:
        metrics = {k: v for k, v in record.items() if k != "epoch"}
        tr.log(tr.trial_run(int(trial_number)), metrics=metrics, step=int(epoch))

    _safely("on_epoch_end", run_dir, epoch_end)


@hookimpl
def on_trial_end(run_dir, trial, record):
    """Log the trial's sampled hyperparameters (plus ``model``) as params, ``value``,
    ``seconds``, ``epochs`` and ``params_count`` as metrics, state / reason / worker as tags,
    ``config.json`` and ``status.json`` as artifacts, and end the run with the status of
    the trial's state."""

    def trial_end(tr: Tracker) -> None:
        number = int(record.get("number", trial.number))
        run_id = tr.trial_run(number)
        state = str(record.get("state") or trial.state.name)
        params: dict[str, Any] = dict(trial.params)
        for k in ("model", "family"):
            params.setdefault(k, record.get(k))
        tr.log(run_id, params=params,
               metrics={k: record.get(k) for k in ("value", "seconds", "epochs", "params_count")},
               tags={TAG_STATE: state, "automl_vision.reason": record.get("reason") or None,
                     "automl_vision.model": record.get("model"), "automl_vision.worker": record.get("worker")})
        tdir = Path(tr.run_dir) / "trials" / f"{number:05d}"
        for name in ("config.json", "status.json"):
            if (tdir / name).is_file():
                tr.client.log_artifact(run_id, str(tdir / name))
        tr.client.set_terminated(run_id, status=STATUS.get(state, "FINISHED"))

    _safely("on_trial_end", run_dir, trial_end)


@hookimpl
def on_search_end(run_dir, summary):
    """Log the final report on the search run: ``best_val_<metric>`` and
    ``best_test_<metric>`` metrics, best trial / model / deliverable tags, the artifacts
    ``best/`` (the delivered single model's files), ``final/report.json`` and
    ``leaderboard.csv``; tag the best trial's run ``automl_vision.best=true``; end the
    search run (``FAILED`` when the search delivered nothing)."""

    def search_end(tr: Tracker) -> None:
        root = Path(tr.run_dir)
        metrics: dict[str, Any] = {}
        for part in ("val", "test"):
            for k, v in (summary.get(f"best_{part}") or {}).items():
                metrics[f"best_{part}_{k}"] = v
        tr.log(tr.parent_id, metrics=metrics,
               tags={f"automl_vision.{k}": summary.get(k) for k in ("metric", "best_trial", "best_model", "deliverable",
                                                                    "error")})
        if (root / "best").is_dir():
            tr.client.log_artifacts(tr.parent_id, str(root / "best"), artifact_path="best")
        if (root / "final" / "report.json").is_file():
            tr.client.log_artifact(tr.parent_id, str(root / "final" / "report.json"), artifact_path="final")
        if (root / "leaderboard.csv").is_file():
            tr.client.log_artifact(tr.parent_id, str(root / "leaderboard.csv"))
        best = summary.get("best_trial")
        best_run = (tr.trials.get(best) or tr.find("trial", best)) if isinstance(best, int) else None
        if best_run:
            tr.client.set_tag(best_run, "automl_vision.best", "true")
        tr.client.set_terminated(tr.parent_id, status="FAILED" if "error" in summary else "FINISHED")

    _safely("on_search_end", run_dir, search_end)
