"""automl-vision plugin: log every trial and the search's end to a CSV file."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

from automl_vision import hookimpl
from automl_vision.rundir import atomic_write_text

__version__ = "0.1.0"

ENV_PATH = "AUTOML_VISION_CSVLOG"
FIRST = ["run_dir", "number", "state", "family", "model", "value", "epochs", "seconds", "reason"]


def log_path(run_dir: str) -> Path:
    """Where the CSV goes: ``$AUTOML_VISION_CSVLOG`` or ``<run_dir>/csvlog/trials.csv``."""
    return Path(os.environ.get(ENV_PATH) or Path(run_dir) / "csvlog" / "trials.csv")


def _read(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    metric_cols = sorted({k for r in rows for k in r if k not in FIRST})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIRST + metric_cols, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, buf.getvalue())


@hookimpl
def on_trial_end(run_dir, record):
    row: dict[str, Any] = {"run_dir": str(run_dir)}
    row.update({k: record.get(k, "") for k in FIRST if k != "run_dir"})
    for name, value in (record.get("metrics") or {}).items():
        row[f"val_{name}"] = value
    path = log_path(run_dir)
    rows = [r for r in _read(path) if not (r.get("run_dir") == row["run_dir"] and r.get("number") == str(row["number"]))]
    _write(path, rows + [row])


@hookimpl
def on_search_end(run_dir, summary):
    path = log_path(run_dir)
    keep = {k: summary.get(k) for k in ("metric", "best_trial", "best_model", "best_val", "best_test", "deliverable", "error") if k in summary}
    atomic_write_text(path.with_suffix(".summary.json"), json.dumps({"run_dir": str(run_dir), **keep}, indent=2, default=str))
