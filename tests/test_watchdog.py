"""The throughput watchdog: a search that runs far slower than it did says so, with the figures."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd

from automl_vision.rundir import RunDir
from automl_vision.search.watchdog import Watchdog, busy_note
from conftest import cli_env


def test_a_sustained_slowdown_is_reported_once_with_its_figures():
    dog = Watchdog()
    for _ in range(20):  # 1,000 img/s, epochs of one second
        assert dog.observe(1000, 1.0) is None
    messages = [dog.observe(300, 10.0) for _ in range(8)]  # 30 img/s for 80 s
    fired = [m for m in messages if m]
    assert len(fired) == 1, messages
    # the last minute: 50 s at 30 img/s and 10 s at 1,000 img/s, 192 img/s on average, under a third
    assert "192 img/s over the last 60s, 1/5 of the 1,000 img/s it reached earlier" in fired[0]
    assert messages.index(fired[0]) == 4, "not before the last minute's average falls under a third"
    for _ in range(70):  # back to full speed for a minute, then slow again: a second spell, a second report
        assert dog.observe(1000, 1.0) is None
    assert any(dog.observe(300, 10.0) for _ in range(8))


def test_short_stalls_and_mild_slowdowns_are_not_reported():
    dog = Watchdog()
    for _ in range(10):
        dog.observe(1000, 1.0)
    assert dog.observe(1000, 30.0) is None  # one 30 s stall, then back to speed: noise
    assert all(dog.observe(1000, 1.0) is None for _ in range(60))
    assert all(dog.observe(500, 1.0) is None for _ in range(200))  # half speed for minutes: not "far below"


def test_a_busy_machine_is_named_at_start(monkeypatch):
    cores = os.cpu_count() or 1
    monkeypatch.setattr(os, "getloadavg", lambda: (10.0 * cores, 0.0, 0.0))
    note = busy_note()
    assert note and f"load average {10.0 * cores:.1f} on {cores} core" in note
    monkeypatch.setattr(os, "getloadavg", lambda: (0.2, 0.0, 0.0))
    assert busy_note() is None


# the search in a child process with a one-second window, so that a real pause of the process
# (SIGSTOP: it gets no CPU at all, as under a heavy load) is a sustained slowdown
CHILD = ("import sys; import automl_vision.search.watchdog as w; w.WINDOW_SECONDS = 1.0; "
         "from automl_vision.cli import main; sys.exit(main(sys.argv[1:]))")


def test_a_search_paused_mid_trial_says_so_in_the_log_leaderboard_and_summary(tmp_path, digits_dir):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, "search", str(digits_dir), "--out", str(out), "--n-trials", "1",
         "--max-epochs", "150", "--image-size", "16", "--models", "cnn", "--plain"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=cli_env())
    history = RunDir(out).trial_dir(0) / "history.json"
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            try:
                if len(json.loads(history.read_text())) >= 5:
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        else:
            raise AssertionError(f"the trial never trained five epochs: {proc.communicate()[0]}")
        for _ in range(2):  # two pauses: one at least lands inside an epoch
            os.kill(proc.pid, signal.SIGSTOP)
            time.sleep(3)
            os.kill(proc.pid, signal.SIGCONT)
            time.sleep(1)
        stdout, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
    assert proc.returncode == 0, stdout
    assert "warning: trial 0: training runs at" in stdout, stdout  # the log, as it happens
    assert "Slowdown: trial #0:" in stdout  # the end-of-search summary
    status = json.loads((RunDir(out).trial_dir(0) / "status.json").read_text())
    assert "img/s it reached earlier" in status["slowdown"]
    board = pd.read_csv(out / "leaderboard.csv")
    assert board.loc[board["number"] == 0, "slowdown"].str.contains("img/s").all()
