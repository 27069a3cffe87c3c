"""Reading and writing the run directory, the one contract between the parts.

The layout is documented in ``docs/run-directory.md``. Every file is written
atomically: the content goes to a temporary file in the same directory, is flushed to
disk, then renamed over the final name, so a reader (the dashboard, a resumed search,
``predict``) sees either the old complete file or the new complete file, never a
half-written one. Readers tolerate a run still in progress: a missing file reads as
``None``. A run directory may come from someone else, so it is read as data: every file
is checked against what readers rely on (:func:`read_json` with a schema), and a path
read from one is resolved inside the run directory (:func:`path_inside`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import secrets
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from automl_vision.types import UsageError

LAYOUT_VERSION = 1

# Every file name of the layout is spelled here and nowhere else (docs/run-directory.md
# describes them); other modules join these names or call RunDir's paths and readers.
RUN_JSON = "run.json"
DATA_REPORT = "data_report.json"
SPLITS = "splits.json"
LEADERBOARD = "leaderboard.csv"
ENSEMBLE = "ensemble.json"
PARETO = "pareto.json"
TRIALS = "trials"
BEST = "best"
FINAL = "final"
FINAL_FIT = "final_fit"  # small-data regime: the delivered configuration trained on every labelled image
REFIT = "refit"
CACHE = "cache"
DECODE_FAILURES = "decode_failures.json"  # in cache/: files that failed to decode, by fingerprint
WORKERS = "workers"  # heartbeat files, one per worker
TRIAL_START_LOCK = ".trial-start.lock"
JOURNAL = "study.journal"
# inside a model's folder (trials/<n>/, best/, final_fit/, final_fit_2/, refit/<n>/)
MODEL_JSON = "model.json"
WEIGHTS = "weights.safetensors"
VAL_PROBS = "val_probs.npy"
CONFIG = "config.json"
METRICS = "metrics.json"
PREPROCESSING = "preprocessing.json"  # best/: what a service must do to an image before the network
# inside a trial's folder only
STATUS = "status.json"
HISTORY = "history.json"
# inside final/
REPORT = "report.json"
VAL_LABELS = "val_labels.npy"
TEST_LABELS = "test_labels.npy"


def final_fit_folder(rank: int) -> str:
    """The folder of the small-data regime's final fit of the ``rank``-th delivered network
    (0: the best model, ``final_fit/``; 1: the second network, the runner-up of a final-fit pair or
    a fresh network of the best configuration, ``final_fit_2/``; and so on: ``final_fit_3/``, ...)."""
    return FINAL_FIT if rank == 0 else f"{FINAL_FIT}_{rank + 1}"


def final_probs(split: str, which: str) -> str:
    """The name in final/ of the probabilities of ``which`` ("best" or "ensemble") on ``split``."""
    return f"{split}_probs_{which}.npy"


# ------------------------------------------------------------------ atomic writes
def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that no reader ever sees a partial file.

    The file gets the mode the umask gives a new file (0644 under umask 022), like the
    journal, the cache and exports: a run directory shared with workers on other accounts,
    or read by a dashboard run as another user, must be readable by them.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temporary(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError) and exc.filename is None:
            # a failed write names no file; say which one, e.g. for "disk full while writing ..."
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise


def _create_temporary(path: Path) -> tuple[int, Path]:
    """A new ``.NAME.XXXXXXXXXXXX.tmp`` beside ``path``, opened for writing.

    Not ``tempfile.mkstemp``: it creates files 0600 whatever the umask. Mode 0666 here is
    reduced by the umask, as for any file the user creates; ``O_EXCL`` keeps the name ours.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:  # 48 random bits: practically never
            continue


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default, allow_nan=True) + "\n")


def final_fit_networks(final_fit: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The networks a report's ``final_fit`` delivered when more than one (``networks``; ``pair``
    in run directories written before fresh networks joined the final fit), else []."""
    return list((final_fit or {}).get("networks") or (final_fit or {}).get("pair") or [])


def tta_rules(tta: dict) -> list[str]:
    """The rules that decided flip test-time augmentation for the best model and the ensemble
    (``report.json``'s ``tta.<best|ensemble>.rule``), each once; [] for a run from before they were recorded."""
    return sorted({info["rule"] for info in (tta.get("best") or {}, tta.get("ensemble") or {}) if info.get("rule")})


def read_json(path: str | os.PathLike, schema: Any = None) -> Any:
    """The JSON content of ``path``, or ``None`` when it does not exist (yet).

    Every run file is read through here, so a damaged one is reported in one place and
    in one way: :class:`DamagedRunFileError`, naming the file, what is wrong and what to
    do, never a traceback (files are written atomically, so damage means the file was
    cut short or edited outside automl-vision).

    Args:
        schema: what the content must look like (see :func:`check_schema`), e.g.
            :data:`MODEL_SCHEMA`; ``None`` checks only that it is JSON.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise DamagedRunFileError(path, "is a folder, not a file") from None
    try:
        content = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise DamagedRunFileError(path, f"is not UTF-8 text (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        raise DamagedRunFileError(path, f"is not valid JSON ({exc.msg} at {where})") from None
    if schema is not None:
        problem = check_schema(content, schema)
        if problem:
            raise DamagedRunFileError(path, problem)
    return content


# ------------------------------------------------------------------ run file schemas
# A schema is a type (or tuple of types), [item schema] for a list, or {key: schema}
# for an object; a key ending in "?" is optional (absent or null). Only what readers
# rely on is listed: extra keys are allowed, so newer writers stay readable.
NUMBER = (int, float)
RUN_SCHEMA = {
    "settings": {"data?": str, "plugins?": [str], "prefer?": dict, "options?": dict, "metric?": str},
    "objectives?": [str],
    "data?": dict,
    "plugins?": dict,
}
SPLITS_SCHEMA = {"keys": [str], "splits": {"train": [str], "val": [str], "test": [str]}}
STATUS_SCHEMA = {"number": int, "state": str}
MODEL_SCHEMA = {
    "family": str, "params": dict, "classes": [str], "num_classes": int, "image_size": int, "in_chans": int,
    "mean": [NUMBER], "std": [NUMBER], "weights_sha256?": str, "temperature?": NUMBER, "tta?": bool,
    "eval_size?": int,
    "eval_sizes?": [int],
    "eval_crops?": int,
}
ENSEMBLE_SCHEMA = {
    "members": [{"trial": int, "weight": NUMBER, "dir?": str, "copy?": int}], "temperature?": NUMBER, "tta?": bool,
    "selected?": bool,
}
DATA_REPORT_SCHEMA = {"root?": str}
# a trial's config.json: what a refit or a final fit trains again from
CONFIG_SCHEMA = {"family": str, "model_params": dict, "image_size": int, "batch_size": int, "lr": NUMBER,
                 "epochs": int, "seed": int, "aug?": dict}
REPORT_SCHEMA = {"test_evaluations?": int, "best_trial?": int}

# what to do about a damaged file, by file name
_REMEDIES = {
    RUN_JSON: "restore it from a copy, or run the search again with a new --out folder",
    SPLITS: "restore it from a copy: the run's trials were scored on that split (or search again with a new --out)",
    STATUS: "restore it, or delete that trial's folder so that the trial is ignored",
    MODEL_JSON: "restore it, rebuild best/ with 'automl-vision ensemble RUN_DIR', or pick another model with "
                  "--model trial:N",
    ENSEMBLE: "rebuild it with 'automl-vision ensemble RUN_DIR'",
    JOURNAL: "restore it from a copy, or search again with a new --out folder (this run's trials stay in trials/)",
}


def _type_name(t: Any) -> str:
    if isinstance(t, tuple):
        return "a number" if t == NUMBER else " or ".join(_type_name(x) for x in t)
    return {dict: "an object", list: "a list", str: "a string", int: "a whole number", bool: "true or false",
            float: "a number"}.get(t, t.__name__)


def check_schema(value: Any, schema: Any, where: str = "") -> str | None:
    """What is wrong with ``value`` against ``schema`` (see above), or ``None``."""
    label = where or "the content"
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            return f"{label} is {_type_name(type(value))}, expected {_type_name(dict)}"
        for key, sub in schema.items():
            optional, name = key.endswith("?"), key.rstrip("?")
            if value.get(name) is None:
                if optional:
                    continue
                return f"{where + '.' if where else ''}{name} is missing"
            problem = check_schema(value[name], sub, f"{where + '.' if where else ''}{name}")
            if problem:
                return problem
        return None
    if isinstance(schema, list):
        if not isinstance(value, list):
            return f"{label} is {_type_name(type(value))}, expected {_type_name(list)}"
        for i, item in enumerate(value):
            problem = check_schema(item, schema[0], f"{label}[{i}]")
            if problem:
                return problem
        return None
    types = schema if isinstance(schema, tuple) else (schema,)
    # bool is an int to Python, never to a reader of these files
    if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
        return f"{label} is {_type_name(type(value))} ({json.dumps(value)[:40]}), expected {_type_name(schema)}"
    return None


def read_model_spec(directory: str | os.PathLike) -> dict[str, Any] | None:
    """A model folder's ``model.json``, checked (``None`` when absent)."""
    path = Path(directory) / MODEL_JSON
    spec = read_json(path, MODEL_SCHEMA)
    if spec is not None and len(spec["classes"]) != spec["num_classes"]:
        problem = f"lists {len(spec['classes'])} classes but num_classes is {spec['num_classes']}"
        raise DamagedRunFileError(path, problem)
    return spec


def damaged_journal_record(path: str | os.PathLike) -> int | None:
    """The line number of the first record of a journal that is not valid JSON, or ``None``.

    A record cut short at the end is cut off by :func:`repair_journal`; one in the middle
    (the file edited, or glued to the next record) makes the study unreadable past it.
    """
    with open(path, "rb") as fh:
        for number, line in enumerate(fh, start=1):
            try:
                json.loads(line)
            except ValueError:
                return number
    return None


def write_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def read_npy(path: str | os.PathLike) -> np.ndarray | None:
    """A plain numeric array, or ``None`` when the file does not exist (yet).

    Raises TamperedFileError for anything else (a pickled object array, a broken file):
    an ``.npy`` holding objects would run code when unpickled, so it is never loaded.
    """
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        return None
    except (ValueError, OSError, EOFError) as exc:
        raise TamperedFileError(
            f"{path}: not a plain numeric .npy file ({exc}); it may be truncated or tampered with. "
            "automl-vision never unpickles run-directory files; delete it and re-run to recreate it."
        ) from exc


def save_weights(path: str | os.PathLike, state_dict: dict[str, Any], metadata: dict[str, str] | None = None) -> str:
    """Save a state dict as safetensors, atomically. Nothing pickled, nothing executable.

    Returns:
        The SHA-256 of the file written; store it beside the weights (``model.json``) and
        pass it to :func:`load_weights` to detect a file changed since.
    """
    from safetensors.torch import save

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    # tied/shared storage is not allowed by safetensors: clone what shares memory
    seen: dict[int, str] = {}
    for k, v in list(tensors.items()):
        ptr = v.untyped_storage().data_ptr() if v.numel() else -1
        if ptr in seen and ptr != -1:
            tensors[k] = v.clone()
        seen[ptr] = k
    data = save(tensors, metadata=metadata)
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


class TamperedFileError(UsageError):
    """A run-directory file is not what automl-vision wrote: refused, never unpickled."""


class DamagedRunFileError(TamperedFileError):
    """A run file cut short, edited or of the wrong shape: one line naming it and what to do."""

    def __init__(self, path: str | os.PathLike, problem: str, remedy: str | None = None):
        self.path = Path(path)
        remedy = remedy or _REMEDIES.get(self.path.name, "restore it from a copy, or re-run the command that wrote it")
        super().__init__(f"{self.path}: {problem}; the file was cut short or edited. {remedy[0].upper()}{remedy[1:]}.")


class TamperedCheckpointError(TamperedFileError):
    """A weights file is not valid safetensors, or differs from the one that was saved."""


def load_weights(path: str | os.PathLike, sha256: str | None = None) -> dict[str, Any]:
    """Load a safetensors state dict. A file that is not valid safetensors is refused.

    Args:
        path: the ``.safetensors`` file.
        sha256: the digest :func:`save_weights` returned; when given, a file whose bytes
            differ (edited, swapped, bit rot) is refused too.
    """
    from safetensors.torch import load

    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise TamperedCheckpointError(f"{path}: cannot read the weights file: {exc}") from exc
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise TamperedCheckpointError(
            f"{path}: the weights file changed since it was saved (SHA-256 differs from model.json); it may be "
            "corrupt or tampered with, so it is refused. Re-run the trial or the search to recreate it."
        )
    try:
        return load(data)
    except Exception as exc:
        raise TamperedCheckpointError(
            f"{path}: not a valid safetensors weights file ({exc}); it may be truncated or tampered with. "
            "automl-vision never unpickles checkpoints; re-run the trial or the search to recreate it."
        ) from exc


def repair_journal(path: str | os.PathLike) -> bool:
    """Cut a half-written last record off an Optuna journal file; returns whether it did.

    A process killed, or stopped by a full disk, in the middle of appending to the
    journal leaves a last line without its newline. Optuna reads past it, but the next
    record appended would be glued onto it and make the whole study unreadable. The cut
    is made under Optuna's own journal lock, so no live writer is mid-append.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return False
    if size == 0:
        return False
    from optuna.storages.journal import JournalFileSymlinkLock

    lock = JournalFileSymlinkLock(str(path))
    lock.acquire()
    try:
        with open(path, "r+b") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - 1))
            if fh.read(1) == b"\n":
                return False
            # find the end of the last complete record
            pos, block = size, 1 << 16
            keep = 0
            while pos > 0:
                start = max(0, pos - block)
                fh.seek(start)
                chunk = fh.read(pos - start)
                i = chunk.rfind(b"\n")
                if i >= 0:
                    keep = start + i + 1
                    break
                pos = start
            fh.truncate(keep)
            fh.flush()
            os.fsync(fh.fileno())
        return True
    finally:
        lock.release()


def path_inside(root: str | os.PathLike, relative: str, source: str | os.PathLike, what: str = "the run directory",
                follow_symlinks: bool = True) -> Path:
    """``root / relative``, where ``relative`` was read from the run file ``source``.

    A run file only refers to files under its run directory (or, for images, the data
    folder it recorded): an absolute path or one that leaves ``root`` (``..``; with
    ``follow_symlinks``, a symlink out) was put there by someone else and is refused
    with DamagedRunFileError, never opened. ``follow_symlinks=False`` is for the user's
    own data folder, whose symlinks the scanner has already vetted.
    """
    candidate = Path(relative)
    normal = os.path.normpath(relative)
    escapes = candidate.is_absolute() or normal == os.pardir or normal.startswith(os.pardir + os.sep)
    if not escapes and follow_symlinks:
        base = Path(root).resolve()
        escapes = not (base / candidate).resolve().is_relative_to(base)
    if escapes:
        raise DamagedRunFileError(source, f"names {relative!r}, which is outside {what}; it is refused")
    return Path(root) / candidate


# ------------------------------------------------------------------ layout
class RunDir:
    """Paths and readers of one run directory."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # paths
    @property
    def run_json(self) -> Path:
        return self.path / RUN_JSON

    @property
    def data_report(self) -> Path:
        return self.path / DATA_REPORT

    @property
    def splits(self) -> Path:
        return self.path / SPLITS

    @property
    def leaderboard(self) -> Path:
        return self.path / LEADERBOARD

    @property
    def journal(self) -> Path:
        return self.path / JOURNAL

    @property
    def best_dir(self) -> Path:
        return self.path / BEST

    @property
    def final_dir(self) -> Path:
        return self.path / FINAL

    @property
    def report(self) -> Path:
        return self.final_dir / REPORT

    @property
    def ensemble(self) -> Path:
        return self.path / ENSEMBLE

    @property
    def workers_dir(self) -> Path:
        return self.path / WORKERS

    def worker_file(self, worker: str) -> Path:
        """The heartbeat file of ``worker`` (its host and process, device, trial, last beat)."""
        return self.workers_dir / f"{worker}.json"

    def worker_temporaries(self) -> list[tuple[str, Path]]:
        """``(worker, file)`` of each temporary an unfinished write of a heartbeat file left
        (see :func:`atomic_write_bytes`): a worker killed while writing leaves one."""
        return [(tmp.name[1:].split(".json.", 1)[0], tmp) for tmp in sorted(self.workers_dir.glob(".*.json.*.tmp"))]

    @property
    def cache_root(self) -> Path:
        return self.path / CACHE

    def best_leftover(self, pid: int, kind: str) -> Path:
        """Where process ``pid`` builds the next best/ (``kind`` "tmp") or parks the last one
        (``kind`` "old") while it swaps them; a dead process's are removed on the next start."""
        return self.path / f".{BEST}.{pid}.{kind}"

    def best_leftovers(self) -> list[tuple[Path, int, str]]:
        """``(folder, pid, kind)`` of every :meth:`best_leftover` in the run directory."""
        out = []
        for p in sorted(self.path.glob(f".{BEST}.*.*")):
            match = re.fullmatch(rf"\.{BEST}\.(\d+)\.(tmp|old)", p.name)
            if match:
                out.append((p, int(match.group(1)), match.group(2)))
        return out

    def cache_dir(self, image_size: int, in_chans: int) -> Path:
        return self.cache_root / f"{image_size}px_{in_chans}ch"

    def split_cache_dir(self, image_size: int, in_chans: int, split: str) -> Path:
        """One split's images at a side no trial trained at (a model's ``eval_size``)."""
        return self.cache_root / f"{image_size}px_{in_chans}ch_{split}"

    def trial_dir(self, number: int) -> Path:
        return self.path / TRIALS / f"{number:05d}"

    # readers
    def exists(self) -> bool:
        return self.run_json.exists()

    def read_run(self) -> dict[str, Any] | None:
        return read_json(self.run_json, RUN_SCHEMA)

    def read_data_report(self) -> dict[str, Any] | None:
        return read_json(self.data_report, DATA_REPORT_SCHEMA)

    def read_splits(self) -> dict[str, Any] | None:
        splits = read_json(self.splits, SPLITS_SCHEMA)
        if splits is not None:
            known = set(splits["keys"])
            stray = next((k for keys in splits["splits"].values() for k in keys if k not in known), None)
            if stray is not None:
                raise DamagedRunFileError(self.splits, f"splits name {stray!r}, which is not in its keys")
        return splits

    def trial_numbers(self) -> list[int]:
        root = self.path / TRIALS
        if not root.is_dir():
            return []
        return sorted(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit())

    def read_trial(self, number: int) -> dict[str, Any] | None:
        """The trial's ``status.json`` (its summary), or ``None``."""
        return read_json(self.trial_dir(number) / STATUS, STATUS_SCHEMA)

    def iter_trials(self) -> Iterator[dict[str, Any]]:
        for n in self.trial_numbers():
            rec = self.read_trial(n)
            if rec is not None:
                yield rec

    def usable_trials(self) -> list[dict[str, Any]]:
        """The ``status.json`` of every trial that finished with a finite score and saved its
        model (``model.json``, weights and validation probabilities): the only trials the final
        steps may choose, ``predict --model trial:N`` may open and the dashboard may explain."""
        import math

        out = []
        for rec in self.iter_trials():
            tdir = self.trial_dir(rec["number"])
            value = rec.get("value")
            scored = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if (rec.get("state") == "COMPLETE" and scored and (tdir / MODEL_JSON).is_file()
                    and (tdir / WEIGHTS).is_file() and (tdir / VAL_PROBS).is_file()):
                out.append(rec)
        return out

    def read_history(self, number: int) -> list[dict[str, Any]]:
        return read_json(self.trial_dir(number) / HISTORY) or []

    def read_val_probs(self, number: int) -> np.ndarray | None:
        return read_npy(self.trial_dir(number) / VAL_PROBS)

    def read_final(self) -> dict[str, Any] | None:
        return read_json(self.report)

    def read_ensemble(self) -> dict[str, Any] | None:
        return read_json(self.ensemble, ENSEMBLE_SCHEMA)


def open_run(run_dir: str | os.PathLike) -> RunDir:
    """The run directory, or a UsageError that says what is wrong with the path (cheap: commands
    call it before importing torch, so a mistyped path is refused at once)."""
    rd = RunDir(run_dir)
    if not rd.path.exists():
        raise UsageError(f"{rd.path}: no such run directory. Give the --out folder of an automl-vision search.")
    if not rd.path.is_dir():
        raise UsageError(f"{rd.path}: not a directory. Give the --out folder of an automl-vision search.")
    if not rd.exists():
        raise UsageError(f"{rd.path}: not an automl-vision run directory (no run.json). "
                         "Give the --out folder of an automl-vision search.")
    return rd
