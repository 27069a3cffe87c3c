"""Interruptions and faults: Ctrl-C, SIGKILL at chosen moments, a full disk, a reader
while a search writes, the data cache after a crash, broken models.

Searches run as real subprocesses; the test watches the run directory to pick the
moment to signal them, as a user's Ctrl-C or a lost machine would.
"""

from __future__ import annotations

import errno
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from PIL import Image

from automl_vision.data import cache
from automl_vision.rundir import atomic_write_bytes, load_weights, read_json, read_npy, save_weights, write_json, write_npy
from automl_vision.types import Sample
from conftest import ROOT, cli_env, run_cli, write_colour_shapes

PLUGINS = ROOT / "tests" / "plugins"


def _search_args(data: Path, out: Path, n_trials: int = 3, epochs: int = 4) -> list[str]:
    return ["search", str(data), "--out", str(out), "--n-trials", str(n_trials), "--max-epochs", str(epochs),
            "--pruner", "none", "--image-size", "16", "--models", "cnn", "--plain"]


def _start(args: list[str], log: Path) -> subprocess.Popen:
    fh = open(log, "w")
    # its own session, like a program started from a terminal: Ctrl-C goes to its whole group.
    # A terminal's program gets SIGINT's default action even when pytest itself was started in
    # the background (`cmd &` in a script ignores SIGINT, and exec keeps an ignored signal).
    return subprocess.Popen([sys.executable, "-m", "automl_vision.cli", *args], stdout=fh, stderr=subprocess.STDOUT,
                            env=cli_env(), start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for(proc: subprocess.Popen, condition, timeout: float = 300, poll: float = 0.005) -> bool:
    """Poll until ``condition()`` holds (True) or the process ends first (False)."""
    end = time.time() + timeout
    while time.time() < end:
        if condition():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(poll)
    raise AssertionError("the search neither reached the moment nor ended in time")


def _study(out: Path) -> optuna.Study:
    from optuna.storages.journal import JournalFileBackend

    from automl_vision.rundir import repair_journal

    name = (read_json(out / "run.json") or {})["study_name"]
    repair_journal(out / "study.journal")  # what opening it through automl-vision does
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(out / "study.journal")))
    return optuna.load_study(study_name=name, storage=storage)


def check_run_dir(out: Path) -> dict[int, dict]:
    """Everything a reader would trust is complete; returns the study's finished trials' status files."""
    for path in out.rglob("*"):
        if not path.is_file() or path.name.endswith(".tmp") or path.name.endswith(".lock"):
            continue  # temporary files are never read; a killed writer may leave one
        if path.suffix == ".json":
            json.loads(path.read_text())  # raises on a half-written file
        elif path.suffix == ".npy":
            assert read_npy(path) is not None
        elif path.suffix == ".csv":
            assert path.read_text().startswith("number")
    for tdir in sorted((out / "trials").glob("*")) if (out / "trials").exists() else []:
        status = read_json(tdir / "status.json")
        spec = read_json(tdir / "model.json")
        if spec is not None:  # model.json is written after the weights: they must be complete
            load_weights(tdir / "weights.safetensors", sha256=spec["weights_sha256"])
        if status and status["state"] == "COMPLETE":
            assert spec is not None and (tdir / "val_probs.npy").exists() and (tdir / "metrics.json").exists(), tdir
    finished = {}
    if (out / "study.journal").exists() and (out / "run.json").exists():
        study = _study(out)  # the study opens
        for t in study.get_trials(deepcopy=False):
            if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED):
                finished[t.number] = read_json(out / "trials" / f"{t.number:05d}" / "status.json")
    return finished


# ---------------------------------------------------------------------------- Ctrl-C
def test_ctrl_c_during_a_trial_keeps_finished_work_and_resumes(tmp_path, digits_dir):
    out = tmp_path / "run"
    args = _search_args(digits_dir, out, n_trials=3, epochs=4)
    proc = _start(args, tmp_path / "log1")
    reached = _wait_for(proc, lambda: (out / "trials/00000/status.json").exists()
                        and (out / "trials/00001/history.json").exists())
    assert reached, (tmp_path / "log1").read_text()
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    log = (tmp_path / "log1").read_text()
    assert "Traceback" not in log
    assert "Leaderboard" in log  # the summary of what exists
    assert "Run the same command again to resume" in log
    status0, status1 = read_json(out / "trials/00000/status.json"), read_json(out / "trials/00001/status.json")
    assert status0["state"] == "COMPLETE"
    assert (status1["state"], status1["reason"]) == ("FAIL", "interrupted")
    assert "interrupted" in (out / "leaderboard.csv").read_text()
    before = check_run_dir(out)
    assert 0 in before

    again = run_cli(*args, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    study = _study(out)
    retry = [t for t in study.trials if t.user_attrs.get("retry_of") == 1]
    assert len(retry) == 1 and retry[0].params == study.trials[1].params  # the interrupted configuration ran again
    counted = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(counted) == 3  # the interrupted trial does not use up one of the 3 trials
    after = check_run_dir(out)
    assert after[0] == before[0]  # the finished trial is untouched
    assert (out / "final" / "report.json").exists()


def test_sigterm_stops_like_ctrl_c_with_exit_143_and_resumes(tmp_path, digits_dir):
    """kill, a service manager's stop or a batch system's time limit: the running trial is
    recorded as interrupted (not left half-written), and the same command resumes."""
    out = tmp_path / "run"
    args = _search_args(digits_dir, out, n_trials=2, epochs=4)
    proc = _start(args, tmp_path / "log")
    reached = _wait_for(proc, lambda: (out / "trials/00000/history.json").exists())
    assert reached, (tmp_path / "log").read_text()
    proc.send_signal(signal.SIGTERM)  # to the search alone, as `kill PID` does
    assert proc.wait(timeout=120) == 143
    log = (tmp_path / "log").read_text()
    assert "Traceback" not in log and "terminated (SIGTERM); finished work is kept" in log
    status = read_json(out / "trials/00000/status.json")
    assert (status["state"], status["reason"]) == ("FAIL", "interrupted")
    check_run_dir(out)
    again = run_cli(*args, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert (out / "final" / "report.json").exists()


def test_ctrl_c_swallowed_where_it_landed_still_stops_the_search(tmp_path, digits_dir):
    """A Ctrl-C that arrives inside a ``__del__`` (Python prints "Exception ignored" and goes
    on) still stops the search within a step, as one that arrives anywhere else does."""
    out = tmp_path / "run"
    env = cli_env(PYTHONPATH=os.pathsep.join([str(PLUGINS), os.environ.get("PYTHONPATH", "")]))
    proc = run_cli("search", digits_dir, "--out", out, "--n-trials", "3", "--max-epochs", "3", "--image-size", "16",
                   "--models", "swallow", "--plugin", "swallowing_family", "--pruner", "none", "--plain", env=env)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 130, log
    assert "Exception ignored" in log  # the interrupt was indeed swallowed where it landed
    assert "Run the same command again to resume" in log
    status = read_json(out / "trials/00000/status.json")
    assert (status["state"], status["reason"]) == ("FAIL", "interrupted"), status
    assert not (out / "trials/00001").exists()  # no further trial started
    assert not (out / "final").exists()


def test_ctrl_c_during_pytorchs_import_is_held_until_the_import_is_over(tmp_path):
    """PyTorch's import runs Python from C++ (pybind11): a KeyboardInterrupt raised there
    aborted the process ("terminate called after throwing an instance of
    'pybind11::error_already_set'", exit -6) when a Ctrl-C landed in it at start-up. Under
    the CLI's watch it is held until the import is over, then raised as usual. A stand-in
    module under PyTorch's name signals itself in the middle of its own import."""
    stand_in = tmp_path / "stand_in" / "torchvision"
    stand_in.mkdir(parents=True)
    (stand_in / "__init__.py").write_text(
        "import os, signal, time\n"
        "os.kill(os.getpid(), signal.SIGINT)\n"
        "start = time.time()\n"
        "while time.time() - start < 0.3:  # Python code runs here: the handler gets its chance\n"
        "    pass\n"
        "print('import finished', flush=True)\n")
    script = (
        "import time\n"
        "from automl_vision.search.interrupts import watch_interrupts\n"
        "try:\n"
        "    with watch_interrupts():\n"
        "        import torchvision\n"
        "        print('after the import', flush=True)\n"
        "        time.sleep(10)\n"
        "        print('never interrupted', flush=True)\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted', flush=True)\n")
    env = cli_env(PYTHONPATH=os.pathsep.join([str(tmp_path / "stand_in"), str(ROOT)]))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    lines = proc.stdout.split()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # the import ran to its end, the interrupt came right after it (not 10 s later), and nothing was lost
    assert proc.stdout.splitlines()[0] == "import finished", proc.stdout + proc.stderr
    assert "never" not in lines and proc.stdout.strip().splitlines()[-1] == "interrupted", proc.stdout


def test_ctrl_c_while_caching_exits_cleanly_and_the_cache_is_rebuilt(tmp_path):
    data = write_colour_shapes(tmp_path / "shapes", per_class=150, size=160, fmt="png")
    out = tmp_path / "run"
    proc = _start(_search_args(data, out, n_trials=1, epochs=1), tmp_path / "log")
    caught = _wait_for(proc, lambda: any(out.glob("cache/*/images.npy.tmp")) and not any(out.glob("cache/*/manifest.json")),
                       poll=0.002)
    if not caught:
        pytest.skip("the cache was built before the test could interrupt it (machine too fast for this data)")
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    log = (tmp_path / "log").read_text()
    assert "Traceback" not in log and "interrupted (Ctrl-C)" in log
    assert not any(out.glob("cache/*/manifest.json"))  # the half-built cache is not marked complete
    from automl_vision.builtin.image_folder import load_image_folder
    from automl_vision.data.prepare import prepare
    from automl_vision.rundir import RunDir

    again = prepare(load_image_folder(str(data)), RunDir(out), image_size=16)  # rebuilds it
    assert np.asarray(again.images(16)).reshape(len(again.samples), -1).max(axis=1).min() > 0  # no black rows


# ---------------------------------------------------------------------------- SIGKILL
def _new_trial_dirs(out: Path, old: set[str]) -> list[Path]:
    return [d for d in out.glob("trials/*") if d.name not in old]


def _moment_caching(out: Path, old: set[str]) -> bool:
    return any(out.glob("cache/*/images.npy.tmp")) and not any(out.glob("cache/*/manifest.json"))


def _moment_training(out: Path, old: set[str]) -> bool:
    return any((d / "history.json").exists() and not (d / "status.json").exists() for d in _new_trial_dirs(out, old))


def _moment_checkpoint(out: Path, old: set[str]) -> bool:
    return any(any(d.glob(".weights.safetensors.*.tmp")) or
               ((d / "weights.safetensors").exists() and not (d / "status.json").exists())
               for d in _new_trial_dirs(out, old))


def _moment_final(out: Path, old: set[str]) -> bool:
    # best/ is first written by the final evaluation (through .best.tmp), report.json last
    return ((out / ".best.tmp").exists() or (out / "best").exists()) and not (out / "final" / "report.json").exists()


def test_sigkill_at_each_moment_then_resume(tmp_path):
    """Kill -9 while caching, training, writing a checkpoint and evaluating; each time the run
    directory stays readable, the study opens, finished trials stay intact; the last run completes."""
    data = write_colour_shapes(tmp_path / "shapes", per_class=60, size=160, fmt="png")
    out = tmp_path / "run"
    args = _search_args(data, out, n_trials=3, epochs=3)
    finished: dict[int, dict] = {}
    seen = []
    for i, (name, moment) in enumerate([("caching", _moment_caching), ("training", _moment_training),
                                        ("checkpoint", _moment_checkpoint), ("final", _moment_final)]):
        old = {d.name for d in out.glob("trials/*")}  # trial dirs left by earlier runs do not count
        proc = _start(args, tmp_path / f"log{i}")
        if _wait_for(proc, lambda: moment(out, old), poll=0.002):
            os.killpg(proc.pid, signal.SIGKILL)
            assert proc.wait(timeout=60) == -signal.SIGKILL
            seen.append(name)
        else:
            assert proc.returncode == 0, (tmp_path / f"log{i}").read_text()
        now = check_run_dir(out)
        for number, status in finished.items():
            assert now.get(number) == status, f"finished trial {number} changed after the kill {name}"
        finished.update(now)
    last = run_cli(*args, timeout=600)
    assert last.returncode == 0, last.stdout + last.stderr
    now = check_run_dir(out)
    for number, status in finished.items():
        assert now[number] == status
    study = _study(out)
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials) >= 3
    assert read_json(out / "final" / "report.json")["best_trial"] in now
    print("kill moments caught:", seen)
    assert seen, "no moment was caught: the test did not kill anything"


# ---------------------------------------------------------------------------- the cache
def _samples(folder: Path, n: int = 6) -> list[Sample]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = folder / f"{i}.png"
        Image.new("RGB", (20, 20), (i * 40, 0, 0)).save(p)
        out.append(Sample(key=p.name, label=i % 2, path=p))
    return out


class _Counting:
    def __init__(self):
        self.calls = 0
        self.real = cache._decode_one

    def __call__(self, *a, **k):
        self.calls += 1
        return self.real(*a, **k)


def test_cache_rebuilds_when_incomplete_or_stale(tmp_path, monkeypatch):
    samples = _samples(tmp_path / "img")
    where = tmp_path / "cache"
    counter = _Counting()
    monkeypatch.setattr(cache, "_decode_one", counter)
    arr, failures = cache.load_or_build(samples, where, 8, 3)
    assert counter.calls == 6 and failures == {}

    cache.load_or_build(samples, where, 8, 3)
    assert counter.calls == 6  # complete and fresh: reused

    # a build killed before its manifest: the data is never trusted
    (where / "manifest.json").unlink()
    (where / "images.npy.tmp").write_bytes(b"half a build")
    cache.load_or_build(samples, where, 8, 3)
    assert counter.calls == 12

    # a source changed: rebuilt with the new pixels
    Image.new("RGB", (20, 20), (0, 0, 255)).save(samples[0].path)
    os.utime(samples[0].path, ns=(time.time_ns(), time.time_ns() + 10**9))
    arr, _ = cache.load_or_build(samples, where, 8, 3)
    assert counter.calls == 18
    assert tuple(arr[0, 4, 4]) == (0, 0, 255)

    # the data file damaged behind a valid manifest: decoded again rather than crashing
    (where / "images.npy").write_bytes(b"\x93NUMPY garbage")
    arr, _ = cache.load_or_build(samples, where, 8, 3)
    assert counter.calls == 24 and arr.shape == (6, 8, 8, 3)


# ---------------------------------------------------------------------------- disk full
@pytest.fixture
def small_disk(tmp_path):
    """A 24 MB tmpfs: a real file system that really fills up (needs root, as in CI containers)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (not root?): {proc.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(disk: Path, leave: int = 0) -> Path:
    filler = disk / "filler"
    with open(filler, "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    if leave:
        os.truncate(filler, max(0, filler.stat().st_size - leave))
    return filler


def test_atomic_write_on_a_full_disk_keeps_the_old_file(small_disk):
    target = small_disk / "status.json"
    write_json(target, {"state": "COMPLETE", "value": 0.9})
    import torch

    save_weights(small_disk / "weights.safetensors", {"w": torch.ones(10)})
    _fill(small_disk, leave=2048)
    with pytest.raises(OSError) as info:
        atomic_write_bytes(target, b"x" * 200_000)
    assert info.value.errno == errno.ENOSPC
    with pytest.raises(OSError):
        save_weights(small_disk / "weights.safetensors", {"w": torch.zeros(200_000)})
    assert read_json(target) == {"state": "COMPLETE", "value": 0.9}  # the old complete file, not a torn one
    assert load_weights(small_disk / "weights.safetensors")["w"].shape == (10,)
    assert [p.name for p in small_disk.iterdir() if p.name.endswith(".tmp")] == []


def test_disk_full_during_a_search_stops_clearly_and_resumes(small_disk, tmp_path, digits_dir):
    out = small_disk / "run"
    args = _search_args(digits_dir, out, n_trials=3, epochs=6)
    proc = _start(args, tmp_path / "log")
    assert _wait_for(proc, lambda: (out / "trials/00000/history.json").exists()), (tmp_path / "log").read_text()
    filler = _fill(small_disk)
    code = proc.wait(timeout=300)
    log = (tmp_path / "log").read_text()
    assert code == 1, log
    assert "the disk is full" in log and "run the same command again to resume" in log
    assert "Traceback" not in log
    assert [str(p) for p in out.rglob("*.tmp") if "cache" not in p.parts] == []  # no torn file left behind
    filler.unlink()
    check_run_dir(out)
    again = run_cli(*args, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    check_run_dir(out)
    assert (out / "final" / "report.json").exists()


# ---------------------------------------------------------------------------- readers
WRITER = """
import sys, numpy as np
from automl_vision.rundir import write_json, write_npy
d = sys.argv[1]
for i in range(150):
    write_json(d + '/status.json', {'version': i, 'rows': [{'k': i, 'v': 'x' * 200}] * 800})
    write_npy(d + '/probs.npy', np.full((400, 100), i, dtype=np.float32))
"""


def test_a_reader_never_sees_a_half_written_file(tmp_path):
    """The dashboard's view: read while a search rewrites the files, never a torn one."""
    write_json(tmp_path / "status.json", {"version": -1, "rows": []})
    write_npy(tmp_path / "probs.npy", np.full((400, 100), -1, dtype=np.float32))
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], env=cli_env())
    versions, reads = set(), 0
    while writer.poll() is None:
        doc = read_json(tmp_path / "status.json")  # a torn JSON file raises here
        assert len(doc["rows"]) == (0 if doc["version"] == -1 else 800)
        probs = read_npy(tmp_path / "probs.npy")
        assert probs.shape == (400, 100) and probs.min() == probs.max()  # one version, never a mix
        versions.add(doc["version"])
        reads += 1
    assert writer.returncode == 0
    assert reads > 10 and len(versions) > 2  # the reader really overlapped the writer


# ---------------------------------------------------------------------------- broken models
def test_nan_loss_is_pruned_and_wrong_shape_fails_naming_the_model(tmp_path, digits_dir):
    for family, state, needle in (("nanloss", "PRUNED", "training loss became nan"),
                                  ("wrongshape", "FAIL", "model wrongshape returned shape")):
        out = tmp_path / family
        proc = run_cli("search", digits_dir, "--out", out, "--n-trials", "1", "--max-epochs", "2", "--image-size", "16",
                       "--models", family, "--plugin", str(PLUGINS / "faulty_families.py"), "--plain")
        assert proc.returncode == 1, proc.stdout + proc.stderr  # nothing delivered: a script must see it
        status = read_json(out / "trials" / "00000" / "status.json")
        assert status["state"] == state, status
        assert needle in status["reason"].lower(), status["reason"]
        assert needle.split()[0] in (out / "leaderboard.csv").read_text().lower()
        assert "no trial finished" in read_json(out / "final" / "report.json")["error"]


def test_a_step_with_nan_gradients_is_left_out_and_the_trial_completes(tmp_path, digits_dir):
    out = tmp_path / "nanonce"
    proc = run_cli("search", digits_dir, "--out", out, "--n-trials", "1", "--max-epochs", "2", "--image-size", "16",
                   "--models", "nanonce", "--plugin", str(PLUGINS / "faulty_families.py"), "--plain")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert read_json(out / "trials" / "00000" / "status.json")["state"] == "COMPLETE"
    history = read_json(out / "trials" / "00000" / "history.json")
    steps = sum(row.get("skipped_steps", 0) for row in history)
    assert steps >= 2 and all(math.isfinite(row["train_loss"]) for row in history), history
    weights = load_weights(out / "trials" / "00000" / "weights.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())


# ---------------------------------------------------------------------------- soak
@pytest.mark.slow
def test_soak_kill_and_resume_20_times_at_random_moments(tmp_path):
    """SIGKILL a search 20 times at random moments, resuming each time; it ends with a
    complete study, every finished trial intact and a final report."""
    import random

    rng = random.Random(11)
    data = write_colour_shapes(tmp_path / "shapes", per_class=30, size=48, fmt="png")
    out = tmp_path / "run"
    n_trials = 8
    args = _search_args(data, out, n_trials=n_trials, epochs=3)
    finished: dict[int, dict] = {}
    kills = 0
    attempts = 0
    while kills < 20:
        attempts += 1
        assert attempts < 60, "the search kept finishing before the kill: too few kills"
        if (out / "final" / "report.json").exists():
            # the study is done: start a fresh search in the same run dir with more trials to keep killing it
            n_trials += 2
            args = _search_args(data, out, n_trials=n_trials, epochs=3)
        proc = _start(args, tmp_path / f"log{attempts}")
        # a random moment from start-up to the middle of a trial or the final evaluation
        deadline = time.time() + rng.uniform(0.5, 25.0)
        while time.time() < deadline and proc.poll() is None:
            time.sleep(0.01)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
            kills += 1
        else:
            assert proc.returncode == 0, (tmp_path / f"log{attempts}").read_text()
        now = check_run_dir(out)
        for number, status in finished.items():
            assert now.get(number) == status, f"finished trial {number} changed after kill {kills}"
        finished.update(now)
    last = run_cli(*args, timeout=900)
    assert last.returncode == 0, last.stdout + last.stderr
    now = check_run_dir(out)
    for number, status in finished.items():
        assert now[number] == status
    study = _study(out)
    from automl_vision.search.study import count_finished

    assert count_finished(study.trials) >= n_trials
    assert not [t for t in study.trials if t.state.name == "RUNNING"]
    report = read_json(out / "final" / "report.json")
    assert report["best_trial"] in now


def test_a_clean_up_error_under_ctrl_c_counts_as_the_interrupt():
    """A library whose clean-up fails when Ctrl-C lands inside it (Optuna's journal lock, mid-rename:
    FileNotFoundError) must not turn the interrupt into a failed trial: the interrupt behind it is found."""
    from automl_vision.search.interrupts import Terminated, interrupt_behind

    def lock_interrupted_mid_rename():
        try:
            raise Terminated()
        except BaseException:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", "study.journal.lock.rename")

    with pytest.raises(FileNotFoundError) as info:
        lock_interrupted_mid_rename()
    stop = interrupt_behind(info.value)
    assert isinstance(stop, Terminated)  # SIGTERM stays SIGTERM: the command still exits 143
    assert interrupt_behind(FileNotFoundError(errno.ENOENT, "gone")) is None  # a plain error stays an error
