"""A throughput watchdog: say so, with the figures, when training runs far slower than it did.

A search plans its trials and its final fit from the speed it measures early on. When
another process takes the CPU (or a GPU is shared), epochs can run ten or forty times
slower, fewer configurations are tried, schedules are cut, and the delivered model is
worse without any visible cause: the user blames the tool. The watchdog compares each
trial's recent throughput with the fastest this trial reached and, when it stays below
``1 / SLOW_FACTOR`` of it for ``WINDOW_SECONDS``, the log, the leaderboard (``slowdown``)
the end-of-search summary and the dashboard say so. A machine that is already busy when
the search starts is named from its load average (see :func:`busy_note`).
"""

from __future__ import annotations

import os
from collections import deque

# "far below": a third of the speed, sustained for a minute, is not scheduling noise
SLOW_FACTOR = 3.0
WINDOW_SECONDS = 60.0
# a load average above this many runnable processes per core means trials share the CPU
BUSY_LOAD_PER_CORE = 1.5


def load_note() -> str:
    """``"load average 10.3 on 2 cores"``, or ``""`` where the OS does not tell."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # not on every platform (Windows)
        return ""
    cores = os.cpu_count() or 1
    return f"load average {load:.1f} on {cores} core{'s' if cores != 1 else ''}"


def busy_note() -> str | None:
    """A warning when the machine is already busy as the search starts, else ``None``."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
    if load <= BUSY_LOAD_PER_CORE * (os.cpu_count() or 1):
        return None
    return (f"this machine is busy ({load_note()}): trials share the CPU with other processes, "
            "so the search will try fewer configurations and train them for fewer epochs than on a quiet machine")


class Watchdog:
    """Watches one trial's epochs (or the final fit's).

    Feed every epoch to :meth:`observe`; it returns a message the first time the epochs of
    the last ``window`` seconds ran, on average, below ``1 / factor`` of the fastest epoch
    seen so far, and ``None`` otherwise. After a slowdown it stays quiet until the speed
    recovers to half the fastest, so a long slow spell is reported once.
    """

    def __init__(self, factor: float | None = None, window: float | None = None):
        self.factor = factor or SLOW_FACTOR
        self.window = WINDOW_SECONDS if window is None else window
        self.fastest = 0.0
        self.recent: deque[tuple[float, float]] = deque()  # (images, seconds) of the latest epochs
        self.armed = True

    def observe(self, images: float, seconds: float) -> str | None:
        """One epoch: ``images`` trained in ``seconds`` of wall-clock time (training and
        evaluation: a pause anywhere in the epoch slows the search)."""
        if images <= 0 or seconds <= 0:
            return None
        speed = images / seconds
        self.recent.append((images, seconds))
        # the window: the latest epochs covering at least `window` seconds
        while len(self.recent) > 1 and sum(s for _, s in self.recent) - self.recent[0][1] >= self.window:
            self.recent.popleft()
        span = sum(s for _, s in self.recent)
        rate = sum(n for n, _ in self.recent) / span
        fastest, self.fastest = self.fastest, max(self.fastest, speed)
        if not fastest:
            return None
        if rate >= fastest / 2:
            self.armed = True
        if span < self.window or rate >= fastest / self.factor or not self.armed:
            return None
        self.armed = False
        load = load_note()
        return (f"training runs at {rate:,.0f} img/s over the last {span:.0f}s, 1/{fastest / rate:.0f} of the "
                f"{fastest:,.0f} img/s it reached earlier{f' ({load})' if load else ''}: another process is probably "
                "using the CPU or GPU; this result will be below what a quiet machine gives")
