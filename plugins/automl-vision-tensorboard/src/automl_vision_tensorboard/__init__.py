"""automl-vision plugin: TensorBoard event files, one TensorBoard run per trial.

Files: ``<run_dir>/tensorboard/trial_<nnnnn>/`` (the trial number zero-padded to five
digits, like ``trials/<nnnnn>/``, so TensorBoard lists trials in order). With
``$AUTOML_VISION_TENSORBOARD_DIR`` set, ``$AUTOML_VISION_TENSORBOARD_DIR/<run name>/trial_<nnnnn>/``
instead, so that one ``tensorboard --logdir`` compares several searches.

Scalars, written after every epoch with ``step = epoch`` (and flushed, so TensorBoard shows a
trial while it trains): ``train/loss``, ``train/lr``, ``val/<metric>`` for every metric, and
``time/train_seconds``, ``time/eval_seconds``, ``time/images_per_second``. When a trial ends,
``trial/value`` (the objective) and ``trial/seconds`` at ``step = epochs``, and the trial's
hyperparameters for TensorBoard's HParams dashboard: the sampled parameters plus ``model``,
``family`` and ``state``, against the metrics ``trial/value`` and ``val/<metric>``.

Writing uses ``torch.utils.tensorboard.SummaryWriter`` (which needs the ``tensorboard``
package). Tracking never stops a search: the first exception inside any hook of this plugin
is reported as one warning line (logger ``automl_vision.plugins.tensorboard``) and event
files are then off for the rest of the search in that process.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Callable

from automl_vision import hookimpl

__version__ = "0.1.0"

ENV_DIR = "AUTOML_VISION_TENSORBOARD_DIR"

log = logging.getLogger("automl_vision.plugins.tensorboard")


def log_root(run_dir: str) -> Path:
    """The folder holding one sub-folder per trial."""
    base = os.environ.get(ENV_DIR)
    return Path(base) / Path(run_dir).resolve().name if base else Path(run_dir) / "tensorboard"


def trial_dir(run_dir: str, number: int) -> Path:
    """Where the event files of trial ``number`` go."""
    return log_root(run_dir) / f"trial_{int(number):05d}"


def scalar_tag(key: str) -> str:
    """The TensorBoard tag of a ``history.json`` key: ``val_accuracy`` -> ``val/accuracy``,
    ``train_loss`` -> ``train/loss``, ``lr`` -> ``train/lr``, timings -> ``time/<key>``."""
    if key.startswith("val_"):
        return "val/" + key[4:]
    if key.startswith("train_") and key != "train_seconds":
        return "train/" + key[6:]
    if key == "lr":
        return "train/lr"
    return "time/" + key


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def _hparam(value: Any) -> Any:
    # the HParams dashboard takes numbers, strings and booleans
    if isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


class _State:
    def __init__(self) -> None:
        self.writers: dict[tuple[str, int], Any] = {}
        self.disabled: str | None = None  # the run directory whose event files failed

    def writer(self, run_dir: str, number: int):
        key = (str(Path(run_dir).resolve()), int(number))
        if key not in self.writers:
            from torch.utils.tensorboard import SummaryWriter

            path = trial_dir(run_dir, number)
            path.mkdir(parents=True, exist_ok=True)
            self.writers[key] = SummaryWriter(log_dir=str(path))
        return self.writers[key]

    def close(self, run_dir: str, number: int | None = None) -> None:
        root = str(Path(run_dir).resolve())
        for key in [k for k in self.writers if k[0] == root and (number is None or k[1] == number)]:
            self.writers.pop(key).close()


STATE = _State()


def _safely(hook: str, run_dir: str, fn: Callable[[], None]) -> None:
    """Run ``fn``; the first failure turns event files off for this run directory."""
    root = str(Path(run_dir).resolve())
    if STATE.disabled == root:
        return
    try:
        fn()
    except Exception as exc:  # tracking never stops a search
        STATE.disabled = root
        try:
            STATE.close(run_dir)
        except Exception:
            pass
        why = " ".join(f"{type(exc).__name__}: {exc}".split())
        if len(why) > 400:
            why = why[:397] + "..."
        log.warning("automl-vision-tensorboard: TensorBoard event files are off for the rest of this search (the "
                    "search goes on): %s failed with %s (log dir %s)", hook, why, log_root(run_dir))


@hookimpl
def on_search_start(run_dir):
    """Turn event files back on if a previous search in this process had them turned off;
    nothing is written until the first epoch."""
    if STATE.disabled == str(Path(run_dir).resolve()):
        STATE.disabled = None


@hookimpl
def on_epoch_end(run_dir, trial_number, epoch, record):
    """Write the epoch's numbers as scalars at ``step = epoch`` (tags from
    :func:`scalar_tag`) and flush, so a trial shows while it trains."""

    def epoch_end() -> None:
        writer = STATE.writer(run_dir, trial_number)
        for key, value in record.items():
            if key != "epoch" and (v := _number(value)) is not None:
                writer.add_scalar(scalar_tag(key), v, global_step=int(epoch))
        writer.flush()

    _safely("on_epoch_end", run_dir, epoch_end)


@hookimpl
def on_trial_end(run_dir, trial, record):
    """Write ``trial/value`` and ``trial/seconds`` at ``step = epochs``, then the trial's
    hyperparameters (sampled parameters, ``model``, ``family``, ``state``) for the HParams
    dashboard, and close the trial's event file."""

    def trial_end() -> None:
        from torch.utils.tensorboard.summary import hparams

        number = int(record.get("number", trial.number))
        writer = STATE.writer(run_dir, number)
        step = int(record.get("epochs") or 0)
        metrics: dict[str, float] = {}
        for key in ("value", "seconds"):
            if (v := _number(record.get(key))) is not None:
                writer.add_scalar(f"trial/{key}", v, global_step=step)
                metrics[f"trial/{key}"] = v
        for name, value in (record.get("metrics") or {}).items():
            if (v := _number(value)) is not None:
                metrics[f"val/{name}"] = v  # already written by the epochs: the dashboard shows the last one
        hp = {k: _hparam(v) for k, v in trial.params.items() if v is not None}
        for key in ("model", "family", "state"):
            if record.get(key) is not None:
                hp.setdefault(key, _hparam(record[key]))
        experiment, start, end = hparams(hp, metrics)
        file_writer = writer._get_file_writer()  # as SummaryWriter.add_hparams does, but in the trial's own run
        for summary in (experiment, start, end):
            file_writer.add_summary(summary, step)
        STATE.close(run_dir, number)

    _safely("on_trial_end", run_dir, trial_end)


@hookimpl
def on_search_end(run_dir):
    """Close any event file still open (a trial that ended without ``on_trial_end``)."""
    _safely("on_search_end", run_dir, lambda: STATE.close(run_dir))
