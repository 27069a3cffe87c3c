"""Reading and writing the run directory, the one contract between the parts.

The layout is documented in ``docs/run-directory.md``. Every file is written
atomically: the content goes to a temporary file in the same directory, is flushed to
disk, then renamed over the final name, so a reader (the dashboard, a resumed search,
``predict``) sees either the old complete file or the new complete file, never a
half-written one. Readers tolerate a run still in progress: a missing file reads as
``None``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from automl_vision.types import UsageError

LAYOUT_VERSION = 1

RUN_JSON = "run.json"
DATA_REPORT = "data_report.json"
SPLITS = "splits.json"
LEADERBOARD = "leaderboard.csv"
TRIALS = "trials"
BEST = "best"
FINAL = "final"
FINAL_FIT = "final_fit"  # small-data regime: the delivered configuration trained on every labelled image
JOURNAL = "study.journal"


# ------------------------------------------------------------------ atomic writes
def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that no reader ever sees a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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


def read_json(path: str | os.PathLike) -> Any:
    """The JSON content of ``path``, or ``None`` when it does not exist (yet)."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
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

    def cache_dir(self, image_size: int, in_chans: int) -> Path:
        return self.path / "cache" / f"{image_size}px_{in_chans}ch"

    def trial_dir(self, number: int) -> Path:
        return self.path / TRIALS / f"{number:05d}"

    # readers
    def exists(self) -> bool:
        return self.run_json.exists()

    def read_run(self) -> dict[str, Any] | None:
        return read_json(self.run_json)

    def read_data_report(self) -> dict[str, Any] | None:
        return read_json(self.data_report)

    def read_splits(self) -> dict[str, Any] | None:
        return read_json(self.splits)

    def trial_numbers(self) -> list[int]:
        root = self.path / TRIALS
        if not root.is_dir():
            return []
        return sorted(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit())

    def read_trial(self, number: int) -> dict[str, Any] | None:
        """The trial's ``status.json`` (its summary), or ``None``."""
        return read_json(self.trial_dir(number) / "status.json")

    def iter_trials(self) -> Iterator[dict[str, Any]]:
        for n in self.trial_numbers():
            rec = self.read_trial(n)
            if rec is not None:
                yield rec

    def read_history(self, number: int) -> list[dict[str, Any]]:
        return read_json(self.trial_dir(number) / "history.json") or []

    def read_val_probs(self, number: int) -> np.ndarray | None:
        return read_npy(self.trial_dir(number) / "val_probs.npy")

    def read_leaderboard(self):
        import pandas as pd

        try:
            return pd.read_csv(self.leaderboard)
        except FileNotFoundError:
            return None

    def read_final(self) -> dict[str, Any] | None:
        return read_json(self.final_dir / "report.json")

    def read_ensemble(self) -> dict[str, Any] | None:
        return read_json(self.path / "ensemble.json")
