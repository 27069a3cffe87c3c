"""Everything the dashboard shows, read from a run directory and the Optuna storage.

This module is the dashboard's only way to the data. It reads files through
:class:`automl_vision.rundir.RunDir` and the study through Optuna, never writes, and
never imports the trainer, so it works for a finished run, a search still running (every
file is written atomically, a missing one reads as "not yet") and a distributed study
whose trials live in a database.

Nothing here imports Streamlit: the pages call these functions, and the tests can too.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from automl_vision.rundir import (CONFIG, DATA_REPORT, ENSEMBLE, FINAL, HISTORY, JOURNAL, LAYOUT_VERSION, LEADERBOARD, METRICS,
                                  MODEL_JSON, REPORT, RUN_JSON, STATUS, TEST_LABELS, TRIALS, VAL_LABELS, DamagedRunFileError,
                                  RunDir, final_probs, path_inside, read_json, read_npy)
from automl_vision.settings import redact

ENV_RUNS = "AUTOML_VISION_DASHBOARD_RUNS"
ENV_STORAGE = "AUTOML_VISION_DASHBOARD_STORAGE"
ENV_STUDY = "AUTOML_VISION_DASHBOARD_STUDY"
ENV_REFRESH = "AUTOML_VISION_DASHBOARD_REFRESH"

# The states the dashboard shows. Optuna's, plus two it derives from the run files (the
# run directory format does not change): SKIPPED, a trial the search did not train because
# the time left could not pay for its first epochs (stored as PRUNED with the reason
# search/costs.py writes, "not started: ..."), and NOT_RUN, a configuration queued
# (portfolio, re-queued) that a finished search never started (stored as WAITING).
STATES = ("COMPLETE", "PRUNED", "SKIPPED", "RUNNING", "FAIL", "WAITING", "NOT_RUN")
STATE_LABELS = {"COMPLETE": "complete", "PRUNED": "pruned", "SKIPPED": "skipped (no time)", "RUNNING": "running",
                "FAIL": "failed", "WAITING": "waiting", "NOT_RUN": "not run", "UNKNOWN": "unknown"}
STATE_COLOURS = {"complete": "#2e7d32", "pruned": "#f9a825", "skipped (no time)": "#8d6e63", "running": "#1565c0",
                 "failed": "#c62828", "waiting": "#9e9e9e", "not run": "#cfd8dc", "unknown": "#9e9e9e",
                 "final steps": "#6a1b9a", "outside trials": "#e0e0e0"}
SKIPPED_REASON = "not started:"  # how search/costs.py's check_affordable begins the reason of a trial it skips
MISSING = "—"  # how a missing value reads on every page


def state_label(state: Any) -> str:
    """The words a state is shown with ("skipped (no time)" for SKIPPED)."""
    return STATE_LABELS.get(str(state), str(state).lower())


def derive_states(df: pd.DataFrame, running: bool) -> pd.Series:
    """The state of each leaderboard row as the dashboard shows it (see STATES)."""
    state = df["state"].fillna("UNKNOWN").astype(str)
    reason = df["reason"].fillna("").astype(str) if "reason" in df else pd.Series("", index=df.index)
    epochs = pd.to_numeric(df["epochs"], errors="coerce").fillna(0) if "epochs" in df else pd.Series(0, index=df.index)
    state = state.mask((state == "PRUNED") & reason.str.startswith(SKIPPED_REASON) & (epochs == 0), "SKIPPED")
    if not running:
        state = state.mask(state == "WAITING", "NOT_RUN")
    return state


class NotAvailable(Exception):
    """Something a section needs is not in the run (yet); the message says what and what to do."""


# ------------------------------------------------------------------ configuration
@dataclass
class Config:
    """What the dashboard was started on (``automl-vision dashboard`` passes it in the environment).

    The storage URL travels in the environment rather than on the command line, so a
    database password does not show in the process list.
    """

    runs: list[str] = field(default_factory=list)
    storage: str | None = None
    study_name: str | None = None
    refresh_seconds: float = 5.0


def config_from_env(environ: dict[str, str] | None = None) -> Config:
    env = os.environ if environ is None else environ
    runs = [p for p in env.get(ENV_RUNS, "").split(os.pathsep) if p.strip()]
    try:
        refresh = float(env.get(ENV_REFRESH, "5") or 5)
    except ValueError:
        refresh = 5.0
    return Config(runs=runs, storage=env.get(ENV_STORAGE) or None, study_name=env.get(ENV_STUDY) or None,
                  refresh_seconds=max(1.0, refresh))


# ------------------------------------------------------------------ change detection
def signature(path: str | os.PathLike | None) -> tuple:
    """A cheap fingerprint of a run directory that changes whenever a writer updates it.

    Used as a cache key: the dashboard re-reads a run only when this changes, so a
    refresh of an idle run costs a few ``stat`` calls.
    """
    if path is None:
        return ()
    root = Path(path)
    out: list[Any] = []
    names = [RUN_JSON, DATA_REPORT, LEADERBOARD, JOURNAL, ENSEMBLE, f"{FINAL}/{REPORT}"]
    for name in names:
        try:
            st = (root / name).stat()
            out.append((name, st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((name, None))
    trials = root / TRIALS
    try:
        for d in sorted(trials.iterdir()):
            for name in (STATUS, HISTORY):
                try:
                    st = (d / name).stat()
                    out.append((d.name, name, st.st_mtime_ns, st.st_size))
                except OSError:
                    pass
    except OSError:
        pass
    return tuple(out)


# ------------------------------------------------------------------ the study
def open_storage(url: str):
    """A read-only view of an Optuna storage URL (database or journal file)."""
    import optuna

    if url.endswith(".journal") or url.startswith("journal:"):
        path = url.split(":", 1)[1] if url.startswith("journal:") else url
        return _journal(Path(path))
    if "://" not in url:
        raise NotAvailable(f"storage {redact(url)!r} is not a database URL (postgresql://…, sqlite:///…) or a .journal file")
    from automl_vision.search.study import driver_url

    # skip_table_creation: the dashboard only reads and must never create tables in someone's database
    return optuna.storages.RDBStorage(driver_url(url), skip_table_creation=True)


def _journal(path: Path):
    import optuna
    from optuna.storages.journal import JournalFileBackend

    if not path.is_file():
        # JournalFileBackend would create an empty file: the dashboard never writes
        raise NotAvailable(f"no study journal at {path}")
    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def load_study(storage_url: str | None, study_name: str | None, run_dir: Path | None, run: dict | None):
    """The study of a run, read-only; raises NotAvailable with the reason when it cannot be opened."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if storage_url:
        storage = open_storage(storage_url)
        where = redact(storage_url)
    elif run_dir is not None and (run_dir / JOURNAL).is_file():
        storage = _journal(run_dir / JOURNAL)
        where = str(run_dir / JOURNAL)
    elif run and run.get("settings", {}).get("storage"):
        raise NotAvailable(
            f"the study is in {run['settings']['storage']}; start the dashboard with --storage URL "
            f"--study-name {run.get('study_name', 'NAME')} to show the search insight"
        )
    else:
        raise NotAvailable("this run directory has no study journal (study.journal); the search has not started yet "
                           "or the run directory was copied without it")
    name = study_name or (run or {}).get("study_name")
    try:
        names = optuna.get_all_study_names(storage)
    except Exception as exc:  # a database that is down or has no tables
        raise NotAvailable(f"cannot read studies from {where}: {type(exc).__name__}: {redact(str(exc))}") from exc
    if name is None and len(names) == 1:
        name = names[0]
    if name not in names:
        raise NotAvailable(f"no study named {name!r} in {where}; studies there: {', '.join(names) or 'none'}")
    return optuna.load_study(study_name=name, storage=storage)


# ------------------------------------------------------------------ one run
class RunData:
    """One run as the dashboard sees it: a run directory, its study, or both.

    Args:
        path: the run directory, or ``None`` for a study known only by its storage.
        storage: an Optuna storage URL; default the run directory's journal.
        study_name: the study in that storage; default the run's.
    """

    def __init__(self, path: str | os.PathLike | None, storage: str | None = None, study_name: str | None = None):
        self.study = None
        self.study_error: str | None = None
        self.loaded_at = time.time()
        self.storage = storage
        self.path = Path(path).expanduser().resolve() if path else None
        if self.path is None and storage:
            self._open_study(study_name)
            attr_dir = (self.study.user_attrs.get("run_dir") if self.study is not None else None)
            if attr_dir and Path(attr_dir, RUN_JSON).is_file():
                self.path = Path(attr_dir)
        self.rd = RunDir(self.path) if self.path else None
        self.run: dict[str, Any] = (self.rd.read_run() if self.rd else None) or {}
        self.data_report: dict[str, Any] = (self.rd.read_data_report() if self.rd else None) or {}
        self.final: dict[str, Any] | None = self.rd.read_final() if self.rd else None
        self.ensemble: dict[str, Any] | None = self.rd.read_ensemble() if self.rd else None
        self.records: dict[int, dict[str, Any]] = {int(r["number"]): r for r in self.rd.iter_trials()} if self.rd else {}
        if self.study is None and self.study_error is None:
            self._open_study(study_name)
        self.leaderboard = self._leaderboard()

    # -------------------------------------------------------------- basics
    def _open_study(self, study_name: str | None) -> None:
        try:
            self.study = load_study(self.storage, study_name, self.path, getattr(self, "run", None))
        except NotAvailable as exc:
            self.study_error = str(exc)
        except Exception as exc:  # a storage from another Optuna version, a corrupt journal
            self.study_error = f"cannot open the study: {type(exc).__name__}: {redact(str(exc))}"

    @property
    def label(self) -> str:
        if self.path is not None:
            return self.path.name
        return self.study.study_name if self.study is not None else "study"

    def exists(self) -> bool:
        """True when there is anything to show: a run directory with run.json, or a study."""
        return bool(self.run) or self.study is not None

    def problem(self) -> str | None:
        """Why there is nothing to show, for the top of every page; None when all is well."""
        if self.path is not None and not self.path.exists():
            return f"{self.path} does not exist. Check the path, or start a search with --out {self.path}."
        if self.path is not None and not self.path.is_dir():
            return f"{self.path} is not a directory; give the run directory that `automl-vision search --out` wrote."
        if not self.exists():
            hint = f" ({self.study_error})" if self.study_error and self.storage else ""
            return (f"{self.path or redact(self.storage)} is not a run directory yet: no run.json{hint}. A search writes it "
                    "once the data is prepared; this page refreshes on its own.")
        return None

    def layout_warning(self) -> str | None:
        version = self.run.get("layout_version") if self.run else None
        if self.run and version is None:
            return "this run directory has no layout_version: it was written by an older automl-vision; some sections may be empty"
        if isinstance(version, int) and version > LAYOUT_VERSION:
            return (f"this run directory has layout version {version}, newer than this dashboard's {LAYOUT_VERSION}; "
                    "upgrade automl-vision to see everything")
        return None

    @property
    def metric(self) -> str:
        objectives = self.run.get("objectives") or []
        if objectives:
            return objectives[0]
        if self.final and self.final.get("metric"):
            return self.final["metric"]
        return "accuracy"

    @property
    def objectives(self) -> list[str]:
        return list(self.run.get("objectives") or [self.metric])

    @property
    def directions(self) -> list[str]:
        if self.run.get("directions"):
            return list(self.run["directions"])
        if self.study is not None:
            return [d.name.lower() for d in self.study.directions]
        return ["maximize"]

    @property
    def direction(self) -> str:
        return self.directions[0]

    @property
    def classes(self) -> list[str]:
        return list(self.data_report.get("classes") or self.run.get("data", {}).get("classes") or [])

    def is_running(self) -> bool:
        """A search is (probably) still writing to this run: started and not finished since."""
        if self.study is not None and any(t.state.name == "RUNNING" for t in self.study.get_trials(deepcopy=False)):
            return True
        if not self.run:
            return self.path is not None and self.path.is_dir()
        sessions = self.run.get("sessions") or []
        last_start = max([s.get("started", 0) for s in sessions] + [self.run.get("started", 0) or 0])
        finished = self.run.get("finished")
        return finished is None or finished < last_start

    # -------------------------------------------------------------- overview
    def split_counts(self) -> pd.DataFrame:
        """Images per class and split (rows: classes, columns: splits)."""
        counts = self.data_report.get("counts") or {}
        if not counts:
            totals = self.run.get("data", {}).get("counts") or {}
            return pd.DataFrame({k: [v] for k, v in totals.items()}, index=["all classes"])
        df = pd.DataFrame(counts).fillna(0).astype(int)
        classes = self.classes
        if classes:
            df = df.reindex([c for c in classes if c in df.index] + [c for c in df.index if c not in classes])
        df.loc["total"] = df.sum()
        return df

    def skipped(self) -> pd.DataFrame:
        rows = self.data_report.get("skipped") or []
        return pd.DataFrame(rows) if rows else pd.DataFrame(columns=["file", "reason"])

    def trials_by_state(self) -> dict[str, int]:
        df = self.leaderboard
        if df.empty or "state" not in df:
            return {}
        counts = df["state"].fillna("UNKNOWN").value_counts()
        return {s: int(counts.get(s, 0)) for s in list(STATES) + [s for s in counts.index if s not in STATES] if counts.get(s, 0)}

    def best(self) -> dict[str, Any] | None:
        """The best finished trial by the objective: number, value, model."""
        df = self.leaderboard
        if df.empty or "value" not in df:
            return None
        done = df[(df["state"] == "COMPLETE") & pd.to_numeric(df["value"], errors="coerce").notna()]
        if done.empty:
            return None
        values = pd.to_numeric(done["value"])
        idx = values.idxmax() if self.direction == "maximize" else values.idxmin()
        row = done.loc[idx]
        return {"number": int(row["number"]), "value": float(row["value"]), "model": str(row.get("model", ""))}

    def budget(self) -> dict[str, Any]:
        """Time and trials used against the budget of the latest search session."""
        settings = self.run.get("settings") or {}
        sessions = self.run.get("sessions") or []
        last = sessions[-1] if sessions else {}
        started = last.get("started") or self.run.get("started")
        finished = self.run.get("finished")
        end = finished if (finished and started and finished >= started) else time.time()
        elapsed = (end - started) if started else None
        time_budget = last.get("time_budget", settings.get("time_budget"))
        n_trials = last.get("n_trials", settings.get("n_trials"))
        finished_trials = sum(v for k, v in self.trials_by_state().items() if k in ("COMPLETE", "PRUNED", "SKIPPED", "FAIL"))
        return {
            "elapsed": elapsed,
            "time_budget": time_budget,
            "time_fraction": (min(1.0, elapsed / time_budget) if elapsed is not None and time_budget else None),
            "n_trials": n_trials,
            "finished_trials": finished_trials,
            "trial_fraction": (min(1.0, finished_trials / n_trials) if n_trials else None),
            "sessions": len(sessions),
            "started": self.run.get("started"),
            "finished": finished,
        }

    # -------------------------------------------------------------- timeline
    def timeline(self) -> pd.DataFrame:
        """One row a trial that started: trial, state, worker, model, start, end (Unix seconds), seconds.

        From each trial's status.json (started, finished, worker); a trial without one yet
        (running) from the study, else from when its config.json was written, ending now.
        """
        cols = ["trial", "state", "worker", "model", "start", "end", "seconds"]
        if self.leaderboard.empty:
            return pd.DataFrame(columns=cols)
        study_trials = {t.number: t for t in self.study.get_trials(deepcopy=False)} if self.study is not None else {}
        rows = []
        for _, row in self.leaderboard.iterrows():
            n = int(row["number"])
            rec = self.records.get(n) or {}
            t = study_trials.get(n)
            start, end = rec.get("started"), rec.get("finished")
            worker = rec.get("worker") or (t.user_attrs.get("worker") if t is not None else None)
            if start is None and t is not None and t.datetime_start is not None:
                start = t.datetime_start.timestamp()
                end = t.datetime_complete.timestamp() if t.datetime_complete is not None else None
            if start is None and self.rd is not None:
                config = self.rd.trial_dir(n) / CONFIG
                try:
                    start = config.stat().st_mtime if row["state"] == "RUNNING" else None
                except OSError:
                    start = None
                if start is not None and not worker:
                    worker = (read_json(config) or {}).get("worker")
            if start is None:
                continue  # never started: waiting or not run
            if end is None:
                end = self.loaded_at if row["state"] == "RUNNING" else start
            rows.append({"trial": n, "state": row["state"], "worker": str(worker or "unknown"),
                         "model": str(row.get("model") or ""), "start": float(start), "end": float(end),
                         "seconds": max(0.0, float(end) - float(start))})
        return pd.DataFrame(rows, columns=cols).sort_values("start").reset_index(drop=True)

    def final_span(self) -> tuple[float, float] | None:
        """When the final steps (selection, TTA, calibration, test evaluation) ran, from final/report.json."""
        f = self.final or {}
        start, seconds = f.get("finished"), f.get("seconds")
        if not isinstance(start, (int, float)) or not isinstance(seconds, (int, float)):
            return None
        return float(start), float(start) + float(seconds)

    def budget_marks(self) -> dict[str, float]:
        """The latest session's time limits: ``deadline`` (start + --time-budget) and ``trials_stop``
        (the deadline less the reserve kept for the final steps), from run.json's budget."""
        plan = self.run.get("budget") or {}
        try:
            started, budget = float(plan["started"]), float(plan["time_budget"])
        except (KeyError, TypeError, ValueError):
            return {}
        reserve = float(plan.get("reserve") or 0.0)
        return {"deadline": started + budget, "trials_stop": started + budget - reserve, "started": started}

    def time_by_state(self) -> pd.DataFrame:
        """Seconds spent per state (worker-seconds: workers in parallel add up), the final steps,
        and, for a single session, the wall-clock time outside any trial (data preparation,
        start-up, waiting)."""
        tl = self.timeline()
        rows = []
        if not tl.empty:
            spent = tl.groupby("state")["seconds"].agg(["sum", "count"])
            for state in list(STATES) + [s for s in spent.index if s not in STATES]:
                if state in spent.index:
                    rows.append({"what": state_label(state), "seconds": float(spent.loc[state, "sum"]),
                                 "trials": int(spent.loc[state, "count"])})
        span = self.final_span()
        if span:
            rows.append({"what": "final steps", "seconds": span[1] - span[0], "trials": None})
        sessions = self.run.get("sessions") or []
        start = self.run.get("started")
        end = self.run.get("finished") if not self.is_running() else self.loaded_at
        if len(sessions) <= 1 and isinstance(start, (int, float)) and isinstance(end, (int, float)) and end > start:
            spans = [(s, e) for s, e in zip(tl["start"], tl["end"])] + ([span] if span else [])
            covered = _union_length([(max(s, start), min(e, end)) for s, e in spans])
            rows.append({"what": "outside trials", "seconds": max(0.0, end - start - covered), "trials": None})
        return pd.DataFrame(rows, columns=["what", "seconds", "trials"])

    # -------------------------------------------------------------- leaderboard
    def _leaderboard(self) -> pd.DataFrame:
        from automl_vision import leaderboard as lb

        if self.rd is not None and self.rd.path.is_dir():
            df = lb.build(self.rd, self.study)
        elif self.study is not None:
            df = lb.build(RunDir(Path(os.devnull)), self.study)
        else:
            df = pd.DataFrame(columns=lb.FIRST_COLUMNS)
        if self.study is None and self.rd is not None:
            # no study to say which trials are running: a trial directory with a config but no status yet
            known = set(df["number"].astype(int)) if not df.empty else set()
            extra = []
            for n in self.rd.trial_numbers():
                cfg = read_json(self.rd.trial_dir(n) / CONFIG)
                if n not in known and cfg is not None:
                    extra.append({"number": n, "state": "RUNNING", "family": cfg.get("family"),
                                  "image_size": cfg.get("image_size"), "aug": cfg.get("aug_preset"),
                                  "epochs": len(self.rd.read_history(n))})
            if extra:
                df = pd.concat([df, pd.DataFrame(extra)], ignore_index=True).sort_values("number")
        if self.rd is not None and not df.empty:
            # a trial still running has no status.json yet: its config and history say what it is
            for i, row in df.iterrows():
                if row.get("state") == "RUNNING":
                    cfg = read_json(self.rd.trial_dir(int(row["number"])) / CONFIG) or {}
                    for col, key in (("family", "family"), ("image_size", "image_size"), ("aug", "aug_preset")):
                        if (col not in df or pd.isna(row.get(col))) and cfg.get(key) is not None:
                            df.loc[i, col] = cfg[key]
                    df.loc[i, "epochs"] = len(self.rd.read_history(int(row["number"])))
        for col in ("number", "state", "model", "family", "value", "epochs", "seconds", "params_count", "aug"):
            if col not in df:
                df[col] = np.nan if col not in ("state", "model", "family", "aug") else ""
        df["state"] = derive_states(df, self.is_running())
        df = lb.ranked(df.reset_index(drop=True), self.direction) if not df.empty else df
        return df.reset_index(drop=True)

    def filtered(self, families=None, states=None, augs=None) -> pd.DataFrame:
        df = self.leaderboard
        if families:
            df = df[df["family"].astype(str).isin(families)]
        if states:
            df = df[df["state"].isin(states)]
        if augs:
            df = df[df["aug"].astype(str).isin(augs)]
        return df

    def options(self, column: str) -> list[str]:
        df = self.leaderboard
        if df.empty or column not in df:
            return []
        return sorted({str(v) for v in df[column].dropna() if str(v) not in ("", "nan")})

    # -------------------------------------------------------------- one trial
    def trial_numbers(self) -> list[int]:
        return [int(n) for n in self.leaderboard["number"].dropna()] if not self.leaderboard.empty else []

    def trial(self, number: int) -> dict[str, Any]:
        """Everything about one trial: status, config (params), history, model spec, per-class metrics."""
        out: dict[str, Any] = {"number": number, "record": self.records.get(number) or {}}
        row = self.leaderboard[self.leaderboard["number"] == number]
        out["row"] = row.iloc[0].dropna().to_dict() if not row.empty else {}
        if self.rd is not None:
            tdir = self.rd.trial_dir(number)
            out["config"] = read_json(tdir / CONFIG)
            out["history"] = self.rd.read_history(number)
            out["model"] = read_json(tdir / MODEL_JSON)
            out["metrics"] = read_json(tdir / METRICS)
        else:
            out.update(config=None, history=[], model=None, metrics=None)
        params: dict[str, Any] = {}
        if self.study is not None:
            for t in self.study.get_trials(deepcopy=False):
                if t.number == number:
                    params = dict(t.params)
                    out["intermediate"] = dict(t.intermediate_values)
                    break
        if not params:
            params = {k[6:]: v for k, v in out["row"].items() if k.startswith("param_")}
        if not params and out["config"]:
            # no study: the trial's config.json holds what was sampled
            cfg = out["config"]
            params = {**(cfg.get("model_params") or {}),
                      **{k: v for k, v in cfg.items() if not isinstance(v, (dict, list)) and k != "worker"}}
        out["params"] = params
        return out

    def histories(self, numbers: list[int]) -> pd.DataFrame:
        """Long-format learning curves (trial, epoch, state, columns of history.json)."""
        frames = []
        states = dict(zip(self.leaderboard["number"], self.leaderboard["state"])) if not self.leaderboard.empty else {}
        for n in numbers:
            hist = self.rd.read_history(n) if self.rd is not None else []
            if not hist and self.study is not None:
                t = next((t for t in self.study.get_trials(deepcopy=False) if t.number == n), None)
                if t is not None:
                    hist = [{"epoch": e, f"val_{self.metric}": v} for e, v in sorted(t.intermediate_values.items())]
            if hist:
                f = pd.DataFrame(hist)
                f["trial"] = n
                f["state"] = states.get(n, "UNKNOWN")
                frames.append(f)
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["trial", "epoch", "state"])

    def model_trials(self) -> list[int]:
        """Trials with saved weights, which can be explained."""
        if self.rd is None:
            return []
        return [int(rec["number"]) for rec in self.rd.usable_trials()]

    # -------------------------------------------------------------- final evaluation and ensemble
    def final_or_raise(self) -> dict[str, Any]:
        if self.final is None:
            raise NotAvailable("no final evaluation yet (final/report.json): it is written when the search ends. "
                               + ("The search is still running." if self.is_running() else
                                  "The search was interrupted before the end; run the same search command again to finish it."))
        if self.final.get("error"):
            raise NotAvailable(f"the final evaluation found nothing to evaluate: {self.final['error']}")
        return self.final

    def val_labels(self) -> np.ndarray | None:
        return read_npy(self.rd.final_dir / VAL_LABELS) if self.rd else None

    def test_arrays(self, which: str = "best") -> tuple[np.ndarray, np.ndarray]:
        """Test probabilities of the best model or the ensemble, and the test labels."""
        if self.rd is None:
            raise NotAvailable("no run directory: the test results live in final/ of the run directory")
        final = self.final_or_raise()
        if not final.get("has_test"):
            raise NotAvailable(final.get("note") or "this run has no test split")
        probs = read_npy(self.rd.final_dir / final_probs("test", which))
        labels = read_npy(self.rd.final_dir / TEST_LABELS)
        if probs is None or labels is None:
            raise NotAvailable(f"{FINAL}/{final_probs('test', which)} or {FINAL}/{TEST_LABELS} is missing from the run directory")
        return probs.astype(np.float64), labels.astype(np.int64)

    def ensemble_val_probs(self) -> dict[str, np.ndarray] | None:
        """Validation probabilities of the best single model and the ensemble.

        As delivered (``final/val_probs_*.npy``, after test-time augmentation when it was
        kept); for older runs, rebuilt from the members' ``val_probs.npy`` and weights.
        """
        final = self.final_or_raise()
        if self.rd is not None:
            stored = {w: read_npy(self.rd.final_dir / final_probs("val", w)) for w in ("best", "ensemble")}
            if all(p is not None for p in stored.values()):
                return {w: p.astype(np.float64) for w, p in stored.items()}
        members = (final.get("ensemble") or {}).get("members") or []
        best = final.get("best_trial")
        probs = {}
        if best is not None and self.rd is not None:
            p = self.rd.read_val_probs(int(best))
            if p is not None:
                probs["best"] = p.astype(np.float64)
        parts = []
        for m in members:
            p = self.rd.read_val_probs(int(m["trial"])) if self.rd is not None else None
            if p is None:
                return probs or None
            parts.append(float(m["weight"]) * p.astype(np.float64))
        if parts:
            probs["ensemble"] = sum(parts)
        return probs or None

    # -------------------------------------------------------------- images
    def _splits(self) -> dict[str, Any]:
        # read once per RunData (a new one is made when the run changes): splits.json can be large
        if not hasattr(self, "_splits_cache"):
            self._splits_cache = (self.rd.read_splits() if self.rd else None) or {}
            self._key_index = {k: i for i, k in enumerate(self._splits_cache.get("keys") or [])}
        return self._splits_cache

    def split_keys(self, split: str) -> list[str]:
        return list((self._splits().get("splits") or {}).get(split) or [])

    def image(self, key: str, image_size: int | None = None, in_chans: int | None = None) -> np.ndarray:
        """One image as the models saw it, ``uint8 (H, W, C)``.

        From the run's decoded-image cache when it has this resolution (no access to
        the data folder needed); otherwise decoded from the data folder with the same
        decoder as training.
        """
        if self.rd is None:
            raise NotAvailable("no run directory: images are read from its cache")
        in_chans = in_chans or int(self.data_report.get("in_chans") or self.run.get("data", {}).get("in_chans") or 3)
        image_size = image_size or int(self.data_report.get("image_size") or 0) or None
        self._splits()
        cached = self._cache(image_size, in_chans) if image_size else None
        index = self._key_index.get(key)
        if cached is not None and index is not None and index < len(cached):
            return np.asarray(cached[index])
        return self._decode(key, image_size, in_chans)

    def _cache(self, image_size: int, in_chans: int) -> np.ndarray | None:
        from automl_vision.data.cache import read_cached

        return read_cached(self.rd.cache_dir(image_size, in_chans))

    def data_root(self) -> Path | None:
        root = self.data_report.get("root") or self.run.get("data", {}).get("root")
        if not root:
            return None
        candidates = [Path(root)]
        command_cwd = self.run.get("cwd")
        if command_cwd:
            candidates.append(Path(command_cwd) / root)
        if self.path is not None:
            candidates += [self.path.parent / root, self.path.parent.parent / root]
        for c in candidates:
            if c.exists():
                return c
        return None

    def _decode(self, key: str, image_size: int | None, in_chans: int) -> np.ndarray:
        from automl_vision.data.images import ImageDecodeError, decode

        root = self.data_root()
        if root is None:
            raise NotAvailable(
                f"image {key!r} is not in the run's cache at {image_size} px and the data folder "
                f"{self.data_report.get('root')!r} cannot be found from here"
            )
        try:
            # keys come from the run's files: one edited to leave the data folder is refused, not shown
            path = path_inside(root, key, self.rd.splits, f"the data folder {root}", follow_symlinks=False)
        except DamagedRunFileError as exc:
            raise NotAvailable(str(exc)) from None
        if not path.is_file():
            raise NotAvailable(f"image {path} is not there any more")
        try:
            return decode(path, image_size or 64, in_chans)
        except ImageDecodeError as exc:
            raise NotAvailable(f"cannot decode {path}: {exc}") from exc

    def confidently_wrong(self, which: str = "best", top: int = 12) -> pd.DataFrame:
        """Test images the model got wrong, most confident first."""
        probs, labels = self.test_arrays(which)
        keys = list((self.final or {}).get("test_keys") or self.split_keys("test"))
        pred = probs.argmax(axis=1)
        conf = probs.max(axis=1)
        wrong = np.flatnonzero(pred != labels)
        order = wrong[np.argsort(-conf[wrong], kind="stable")][:top]
        classes = self.classes or [str(i) for i in range(probs.shape[1])]
        return pd.DataFrame({
            "index": order,
            "key": [keys[i] if i < len(keys) else "" for i in order],
            "true": [classes[labels[i]] for i in order],
            "predicted": [classes[pred[i]] for i in order],
            "confidence": conf[order],
            "p_true": probs[order, labels[order]],
        })


def _union_length(spans: list[tuple[float, float]]) -> float:
    """Seconds covered by at least one of the (start, end) spans."""
    total, reach = 0.0, -math.inf
    for s, e in sorted(spans):
        s = max(s, reach)
        if e > s:
            total += e - s
            reach = e
    return total


# ------------------------------------------------------------------ metrics helpers
def per_class_table(y: np.ndarray, probs: np.ndarray, classes: list[str]) -> pd.DataFrame:
    from sklearn.metrics import precision_recall_fscore_support

    pred = probs.argmax(axis=1)
    labels = np.arange(probs.shape[1])
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    names = classes if len(classes) == probs.shape[1] else [str(i) for i in labels]
    return pd.DataFrame({"class": names, "precision": p, "recall": r, "f1": f, "support": s.astype(int)})


def confusion(y: np.ndarray, probs: np.ndarray) -> np.ndarray:
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(y, probs.argmax(axis=1), labels=np.arange(probs.shape[1]))


def fmt_seconds(seconds: float | None) -> str:
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return MISSING
    seconds = float(seconds)
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def compare_table(runs: list[RunData]) -> pd.DataFrame:
    """One column a run: the facts a user compares two searches on."""
    rows = {}
    for r in runs:
        best = r.best()
        budget = r.budget()
        states = r.trials_by_state()
        final = r.final if r.final and not r.final.get("error") else {}
        split = "test" if final.get("has_test") else "val"
        single = final.get(f"best_{split}") or {}
        ens = (final.get("ensemble") or {}).get(split) or {}
        rows[r.label] = {
            "path": str(r.path) if r.path else redact(r.storage),
            "classes": len(r.classes),
            "images (train/val/test)": "/".join(str(v) for v in (r.run.get("data", {}).get("counts") or {}).values()) or "-",
            "objective": f"{r.metric} ({r.direction})",
            "trials": int(sum(states.values())),
            "complete/pruned/skipped/failed":
                f"{states.get('COMPLETE', 0)} / {states.get('PRUNED', 0)} / {states.get('SKIPPED', 0)} / {states.get('FAIL', 0)}",
            "best trial": f"#{best['number']} {best['model']}" if best else "-",
            f"best trial's validation {r.metric}": round(best["value"], 4) if best else None,
            f"best single, {split} {r.metric}": round(single[r.metric], 4) if r.metric in single else None,
            f"ensemble, {split} {r.metric}": round(ens[r.metric], 4) if r.metric in ens else None,
            "deliverable": final.get("deliverable", "-"),
            "time used": fmt_seconds(budget["elapsed"]),
            "models searched": ", ".join((r.run.get("settings") or {}).get("models") or []) or "default zoo",
            "classes (names)": ", ".join(r.classes[:12]) + (f", … ({len(r.classes)})" if len(r.classes) > 12 else ""),
            "state": "running" if r.is_running() else "finished",
        }
    table = pd.DataFrame(rows).astype(object)
    return table.where(table.notna(), MISSING).astype(str).replace({"None": MISSING, "nan": MISSING, "-": MISSING,
                                                                    "": MISSING})


def dataset_differences(runs: list[RunData]) -> list[str]:
    """Why the runs' scores are not comparable: different classes or data folders (empty: same data)."""
    out = []
    if len({tuple(r.classes) for r in runs}) > 1:
        listed = "; ".join(f"{r.label}: {len(r.classes)} classes" for r in runs)
        same_count = len({len(r.classes) for r in runs}) == 1
        out.append(f"The runs classify different classes ({listed}{', named differently' if same_count else ''}): "
                   "their scores are not comparable.")
    roots = {r.label: (r.data_report.get("root") or r.run.get("data", {}).get("root")) for r in runs}
    if len({v for v in roots.values() if v}) > 1:
        out.append("The runs read different data folders (" + "; ".join(f"{k}: {v}" for k, v in roots.items() if v)
                   + "): unless one is a copy of the other, their scores are not comparable.")
    counts = {r.label: r.run.get("data", {}).get("counts") for r in runs}
    if len({json_key(v) for v in counts.values() if v}) > 1 and not out:
        out.append("The runs split their images differently (" + "; ".join(
            f"{k}: {'/'.join(str(x) for x in v.values())}" for k, v in counts.items() if v) + " train/val/test).")
    return out


def json_key(value: Any) -> str:
    import json

    return json.dumps(value, sort_keys=True, default=str)


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def run_dir_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be added as a run directory (None: it is one, or a search is starting in it)."""
    p = Path(path)
    if not p.is_dir():
        return f"{p} is not a directory"
    if (p / RUN_JSON).is_file() or (p / TRIALS).is_dir() or (p / JOURNAL).is_file():
        return None
    images = 0
    try:
        for child in list(p.iterdir())[:200]:
            if child.suffix.lower() in IMAGE_SUFFIXES:
                images += 1
            elif child.is_dir():
                images += sum(1 for f in list(child.iterdir())[:50] if f.suffix.lower() in IMAGE_SUFFIXES)
            if images:
                break
    except OSError:
        pass
    what = "it holds images, so it looks like a data folder" if images else "it has no run.json, trials/ or study.journal"
    return (f"{p} is not a run directory: {what}. Give the folder that `automl-vision search --out` wrote "
            "(it holds run.json).")


def probability_kind(final: dict[str, Any] | None, which: str, short: bool = False) -> str:
    """What the final probabilities of ``best`` or ``ensemble`` are, as final/report.json records:
    "calibrated (T=0.52), flip TTA", "flip TTA", or "raw softmax" ("calibrated + TTA", "TTA", "raw" when short)."""
    f = final or {}
    parts = []
    cal = (f.get("calibration") or {})
    info = cal.get(which) or {}
    if cal.get("requested") and isinstance(info.get("temperature"), (int, float)):
        parts.append("calibrated" if short else f"calibrated (T={info['temperature']:.2f})")
    if ((f.get("tta") or {}).get(which) or {}).get("used"):
        parts.append("TTA" if short else "flip TTA")
    return (" + " if short else ", ").join(parts) or ("raw" if short else "raw softmax")


def varying_params(study, states: tuple[str, ...] = ("COMPLETE",)) -> dict[str, int]:
    """Parameters of the study's trials in ``states`` with how many distinct values each takes;
    a parameter with one value carries no information for importances or parallel coordinates."""
    values: dict[str, set] = {}
    for t in study.get_trials(deepcopy=False):
        if t.state.name in states:
            for k, v in t.params.items():
                values.setdefault(k, set()).add(json_key(v))
    return {k: len(v) for k, v in values.items()}
