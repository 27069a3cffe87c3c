"""Shared bits of the benchmark scripts: machine description, tables, results JSON, memory.

Every benchmark prints a table and writes ``benchmarks/results/<name>.json`` (or the
``--out`` path) holding the machine, the settings and the figures, so that a change can
be compared with the last run.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
if str(ROOT) not in sys.path:  # run from a checkout without an install
    sys.path.insert(0, str(ROOT))


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or platform.machine()


def cpu_features() -> list[str]:
    """The CPU extensions the engine's execution-path choice is keyed on (``training.device.cpu_extensions``):
    lscpu's model name is the same on machines with and without AMX."""
    try:
        from automl_vision.training.device import cpu_extensions
    except ImportError:  # the benchmark still describes the machine
        return []
    return cpu_extensions()


# environment variables that cap the instruction set torch's own kernels (ATen) and oneDNN's may use: set
# to AVX2 on a CPU with AVX-512 and bf16 they make it compute like a CPU without them (bf16 then falls back
# to slow emulated kernels, and the engine's measured path choice sees that), so a run can say how the
# search does on the AVX2-only CPUs it may meet; recorded so such figures are never read as the host's own
ISA_LIMIT_VARS = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")


def isa_limit() -> dict[str, str]:
    """The instruction-set caps of :data:`ISA_LIMIT_VARS` set in this process's environment."""
    return {v: os.environ[v] for v in ISA_LIMIT_VARS if os.environ.get(v)}


def machine() -> dict[str, Any]:
    """Where the figures were taken: cores, CPU, GPU, load, versions, date."""
    import torch

    gpu = "none"
    if torch.cuda.is_available():
        gpu = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    try:
        import automl_vision

        av = automl_vision.__version__
    except Exception:  # the benchmark still describes the machine
        av = "?"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    limit = isa_limit()
    return {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cpu_features": cpu_features(),
        **({"isa_limit": limit} if limit else {}),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "load_average_at_start": load,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "automl_vision": av,
        "git_commit": commit,
    }


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median and range of repeated measurements."""
    vals = [float(v) for v in values]
    if not vals:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0}
    return {"median": median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table (readable in a terminal too)."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            if v != v:  # NaN
                return "-"
            if abs(v) >= 100:
                return f"{v:.0f}"
            if abs(v) >= 1:
                return f"{v:.2f}"
            return f"{v:.3f}"
        return "-" if v is None else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(fmt(v) for v in row) + " |")
    return "\n".join(lines)


def default_path(name: str, quick: bool) -> Path:
    """``results/<name>.json``; smoke runs go to ``results/quick/`` and never replace real figures."""
    return (RESULTS / "quick" if quick else RESULTS) / f"{name}.json"


def write_results(name: str, payload: dict[str, Any], out: str | os.PathLike | None = None) -> Path:
    """Write the results JSON atomically; returns its path."""
    path = Path(out) if out else default_path(name, bool(payload.get("quick")))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=_json_default) + "\n")
    os.replace(tmp, path)
    return path


def _json_default(obj: Any) -> Any:
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:
        pass
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _status_kb() -> dict[str, int]:
    out = {}
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(("VmRSS:", "RssAnon:", "RssFile:")):
                    key, value = line.split(":", 1)
                    out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


def _release_free_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS, so that a run measured
    after another one does not look smaller just because it reuses the first one's pages."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


class MemoryWatch:
    """Peak resident memory while a block runs, sampled from ``/proc/self/status``.

    ``ru_maxrss`` only ever grows for the whole process, so it cannot tell two runs in
    one process apart; sampling every few milliseconds can. ``anon`` is the process's
    own heap (tensors, arrays); ``file`` is file-backed pages (memory maps, libraries),
    which the kernel can drop under pressure. Figures are MiB above the level at entry.
    Off Linux it falls back to ``ru_maxrss`` (process-wide, not per block).
    """

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.start: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        now = _status_kb()
        for k, v in now.items():
            if v > self.peak.get(k, 0):
                self.peak[k] = v

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> "MemoryWatch":
        _release_free_memory()
        self.start = _status_kb()
        self.peak = dict(self.start)
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()

    def result(self) -> dict[str, float]:
        if not self.start:
            return {"peak_rss_mib_process": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        mib = lambda k: round((self.peak.get(k, 0) - self.start.get(k, 0)) / 1024, 1)  # noqa: E731
        return {
            "peak_rss_mib_above_start": mib("VmRSS"),
            "peak_anon_mib_above_start": mib("RssAnon"),
            "peak_file_mib_above_start": mib("RssFile"),
            "peak_rss_mib_process": round(self.peak.get("VmRSS", 0) / 1024, 1),
        }


class Stopwatch:
    def __enter__(self) -> "Stopwatch":
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.t0
