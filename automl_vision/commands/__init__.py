"""Sub-commands of ``automl-vision``; see :mod:`automl_vision.cli`."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any


def add_plugin_option(p) -> None:
    """``--plugin`` (repeatable), as ``search`` has it: for every command that loads plugins.

    The plugins a run was searched with are never loaded from its run directory (a run
    directory is data), so a local plugin is given here again.
    """
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                   help="load a plugin module by import path or .py file (repeatable); also $AUTOML_VISION_PLUGINS. "
                        "The plugins named in a run directory are never loaded from it")


def plugins_into_env(env, plugins: list[str]) -> None:
    """Pass ``--plugin`` modules to code that reads ``$AUTOML_VISION_PLUGINS`` (a joined study's
    worker, the dashboard's Streamlit process), after those already there; a ``.py`` path is
    made absolute so it is found from any working directory."""
    from automl_vision.plugins import ENV_PLUGINS

    given = [os.path.abspath(m) if m.endswith(".py") else m for m in plugins]
    env[ENV_PLUGINS] = ",".join(filter(None, [env.get(ENV_PLUGINS, ""), *given]))


# ------------------------------------------------------------------ --json (docs/cli.md)
def add_json_option(p, what: str) -> None:
    """``--json``: one JSON document (``what``) on stdout; the human text goes to stderr."""
    p.add_argument("--json", action="store_true",
                   help=f"for scripts: write one JSON document to standard output ({what}; keys in docs/cli.md); "
                        "progress, tables and notes go to standard error")


@contextlib.contextmanager
def human_text_to_stderr(enabled: bool = True) -> Iterator[None]:
    """With ``--json``: everything printed meanwhile goes to stderr, so stdout holds only the document.

    Both ``sys.stdout`` and file descriptor 1 are pointed at stderr, so rich consoles, C
    libraries and worker processes started meanwhile write there too; both are restored on
    the way out, an exception included (a usage error then prints its line, and stdout
    stays empty).
    """
    if not enabled:
        yield
        return
    saved = sys.stdout
    saved.flush()
    fd = saved_fd = None
    try:
        fd = saved.fileno()
        err_fd = sys.stderr.fileno()
        sys.stderr.flush()
        saved_fd = os.dup(fd)
        os.dup2(err_fd, fd)
    except (AttributeError, OSError, ValueError):  # no real descriptors (pytest's capsys, a StringIO)
        fd = saved_fd = None
    sys.stdout = sys.stderr
    try:
        yield
    finally:
        sys.stdout = saved
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()
            saved.flush()  # text written through an old reference goes where fd 1 points now: stderr
        if saved_fd is not None:
            os.dup2(saved_fd, fd)
            os.close(saved_fd)


def _finite(obj: Any) -> Any:
    """NaN and infinities as null (strict JSON), NumPy scalars as Python numbers."""
    import math

    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):  # a NumPy array or scalar
        obj = obj.tolist()
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def print_json(doc: dict[str, Any]) -> None:
    """Write ``doc`` to stdout as one strict JSON document (NaN -> null), indented like ``leaderboard --json``."""
    print(json_dumps(doc), flush=True)


def json_dumps(doc: Any) -> str:
    """``doc`` as strict, indented JSON text: NaN and infinities become null, paths strings."""
    import json

    return json.dumps(_finite(doc), indent=2, allow_nan=False, default=str)


# the keys of final/report.json that ``search --json`` and ``ensemble --json`` copy (null when absent)
REPORT_KEYS = ("metric", "direction", "has_test", "error", "deliverable", "why", "best_trial", "best_model",
               "best_val", "best_test", "ensemble", "intervals", "selection", "final_fit", "refit",
               "test_evaluations", "test_warning", "note", "seconds", "search_seconds", "time_budget")


def report_document(command: str, run_dir: str | os.PathLike, report: dict[str, Any]) -> dict[str, Any]:
    """The ``--json`` document of ``search`` and ``ensemble``: the run directory and the final report's
    summary keys (the bulky per-image and per-class ones stay in final/report.json)."""
    from pathlib import Path

    from automl_vision.rundir import RunDir

    rd = RunDir(Path(run_dir).resolve())
    doc: dict[str, Any] = {"command": command, "run_dir": str(rd.path), "report": str(rd.report),
                           "best_dir": str(rd.best_dir)}
    doc.update({key: report.get(key) for key in REPORT_KEYS})
    return doc
