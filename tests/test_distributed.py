"""Several workers on one study: the embedded journal file, a real PostgreSQL server,
a worker killed with SIGKILL in the middle of a trial, workers refusing a study they
cannot run, and out-of-memory trials.

Every search here is real (tiny CNNs on 16 px digits) and runs the real CLI as a
subprocess; ``AUTOML_VISION_HEARTBEAT=1,4`` makes a dead worker's trial recoverable
after 4 seconds instead of 40.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest

from automl_vision.rundir import RunDir
from conftest import ROOT, cli_env, run_cli

FAST = ["--max-epochs", "1", "--image-size", "16", "--models", "cnn", "--pruner", "none", "--plain"]
# trials long enough to be killed in the middle (pruning off: every trial runs all epochs)
SLOW = ["--max-epochs", "3", "--image-size", "16", "--models", "cnn", "--pruner", "none", "--plain"]
HEARTBEAT = {"AUTOML_VISION_HEARTBEAT": "1,4"}


def journal_study(run: Path, name: str = "digits") -> optuna.Study:
    from optuna.storages.journal import JournalFileBackend

    storage = optuna.storages.JournalStorage(JournalFileBackend(str(run / "study.journal")))
    return optuna.load_study(study_name=name, storage=storage)


def popen_cli(*args, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "automl_vision.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env or cli_env(), cwd=ROOT)


def kill_a_worker_mid_trial(run: Path, proc: subprocess.Popen, own_pid: int | None = None, timeout: float = 240) -> tuple[int, int]:
    """SIGKILL the worker of a trial that has finished an epoch but not the trial.

    Returns (trial number, killed pid). ``own_pid`` spares that process (the search itself).
    """
    host = socket.gethostname()
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "the search ended before a worker could be killed:\n" + proc.stdout.read()
        for tdir in sorted((run / "trials").glob("*")) if (run / "trials").exists() else []:
            config, history, status = tdir / "config.json", tdir / "history.json", tdir / "status.json"
            if not (config.exists() and history.exists()) or status.exists():
                continue
            worker = json.loads(config.read_text())["worker"]
            w_host, _, pid = worker.rpartition("-")
            if w_host != host or int(pid) == own_pid:
                continue
            os.kill(int(pid), signal.SIGKILL)
            return int(tdir.name), int(pid)
        time.sleep(0.05)
    raise AssertionError("no trial was seen in the middle of training")


def assert_leaderboard_agrees(run: Path, study: optuna.Study) -> pd.DataFrame:
    lb = pd.read_csv(run / "leaderboard.csv")
    trials = study.get_trials(deepcopy=False)
    assert sorted(lb["number"]) == [t.number for t in trials]
    by_number = lb.set_index("number")
    for t in trials:
        assert by_number.loc[t.number, "state"] == t.state.name
        if t.state == optuna.trial.TrialState.COMPLETE:
            assert by_number.loc[t.number, "value"] == pytest.approx(t.value)
    return lb


def assert_finished_trials_kept(run: Path, study: optuna.Study) -> None:
    rd = RunDir(run)
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        status = rd.read_trial(t.number)
        assert status["state"] == "COMPLETE"
        assert status["value"] == pytest.approx(t.value)
        for name in ("weights.safetensors", "model.json", "val_probs.npy", "metrics.json"):
            assert (rd.trial_dir(t.number) / name).exists(), (t.number, name)
    assert list(run.rglob("*.tmp")) == []


# ------------------------------------------------------------------ one machine, journal file
def test_two_cpu_workers_on_the_journal_run_n_distinct_trials(tmp_path, digits_dir):
    run = tmp_path / "run"
    proc = run_cli("search", digits_dir, "--out", run, "--n-trials", "4", "--workers", "2", *FAST)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "starting 2 workers" in proc.stdout
    study = journal_study(run)
    trials = study.get_trials()
    assert [t.number for t in trials] == [0, 1, 2, 3]  # exactly N, none lost, none twice
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert_leaderboard_agrees(run, study)
    assert_finished_trials_kept(run, study)
    # both workers joined the study, and the layout names which worker ran which trial
    workers = [json.loads(p.read_text()) for p in sorted((run / "workers").glob("*.json"))]
    assert len(workers) == 2 and {w["state"] for w in workers} == {"stopped"}
    ran = [n for w in workers for n in w["trials"]]
    assert sorted(ran) == [0, 1, 2, 3]
    owner = {n: w["worker"] for w in workers for n in w["trials"]}
    for t in trials:
        assert t.user_attrs["worker"] == owner[t.number]
        assert RunDir(run).read_trial(t.number)["worker"] == owner[t.number]
    assert RunDir(run).read_final()["deliverable"] in ("best", "ensemble")


def test_a_killed_worker_trial_is_failed_retried_and_nothing_finished_is_lost(tmp_path, digits_dir):
    run = tmp_path / "run"
    proc = popen_cli("search", digits_dir, "--out", run, "--n-trials", "2", "--workers", "2", *SLOW,
                     env=cli_env(**HEARTBEAT))
    killed, _pid = kill_a_worker_mid_trial(run, proc, own_pid=proc.pid)
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, out
    assert "killed by SIGKILL" in out
    study = journal_study(run)
    trials = {t.number: t for t in study.get_trials()}
    dead = trials[killed]
    assert dead.state == optuna.trial.TrialState.FAIL
    assert "worker died" in dead.user_attrs["reason"]
    retries = [t for t in trials.values() if t.user_attrs.get("retry_of") == killed]
    assert len(retries) == 1 and retries[0].state == optuna.trial.TrialState.COMPLETE
    assert retries[0].params == dead.params  # the same configuration, run again
    # the killed trial did not cost the search a trial: two complete ones, as asked
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials.values()) == 2
    # what the killed trial left is not trusted: its status says FAIL, the final step skips it
    status = RunDir(run).read_trial(killed)
    assert status["state"] == "FAIL" and "worker died" in status["reason"]
    final = RunDir(run).read_final()
    assert final["best_trial"] != killed
    assert killed not in [m["trial"] for m in final["ensemble"]["members"]]
    assert_leaderboard_agrees(run, study)
    assert_finished_trials_kept(run, study)

    # every worker gone: a resumed search keeps every finished trial and finishes the study
    before = {t.number: (t.state, t.value) for t in study.get_trials()}
    again = run_cli("search", digits_dir, "--out", run, "--n-trials", "3", *FAST)
    assert again.returncode == 0, again.stdout + again.stderr
    after = {t.number: (t.state, t.value) for t in journal_study(run).get_trials()}
    assert {n: after[n] for n in before} == before
    assert len(after) == len(before) + 1


# ------------------------------------------------------------------ several machines: PostgreSQL
def test_postgres_two_workers_a_killed_one_and_a_worker_joining_later(tmp_path, digits_dir, postgres):
    url = postgres.create_database("automl_distributed")
    run = tmp_path / "shared-run"
    env = cli_env(**HEARTBEAT)
    proc = popen_cli("search", digits_dir, "--out", run, "--storage", url, "--study-name", "pg-digits",
                     "--n-trials", "2", "--workers", "2", *SLOW, env=env)
    killed, _pid = kill_a_worker_mid_trial(run, proc, own_pid=proc.pid)
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, out
    storage = optuna.storages.RDBStorage(url.replace("postgresql://", "postgresql+psycopg2://"))
    study = optuna.load_study(study_name="pg-digits", storage=storage)
    trials = {t.number: t for t in study.get_trials()}
    # Optuna's heartbeat failed the dead worker's trial and RetryFailedTrialCallback re-queued it
    assert trials[killed].state == optuna.trial.TrialState.FAIL
    retries = [t for t in trials.values() if t.system_attrs.get("failed_trial") == killed]
    assert len(retries) == 1 and retries[0].state == optuna.trial.TrialState.COMPLETE
    assert retries[0].user_attrs["retry_of"] == killed
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials.values()) == 2
    assert RunDir(run).read_trial(killed)["state"] == "FAIL"
    assert_leaderboard_agrees(run, study)
    assert_finished_trials_kept(run, study)

    # another machine joins with the storage URL and the study name only
    joined = run_cli("worker", "--storage", url, "--study-name", "pg-digits", "--n-trials", "3", "--plain", env=env)
    assert joined.returncode == 0, joined.stdout + joined.stderr
    assert "ran 1 trial(s)" in joined.stdout
    study = optuna.load_study(study_name="pg-digits", storage=storage)
    new = max(study.get_trials(), key=lambda t: t.number)
    assert new.state == optuna.trial.TrialState.COMPLETE
    assert RunDir(run).read_trial(new.number)["worker"] == new.user_attrs["worker"]
    assert (RunDir(run).trial_dir(new.number) / "weights.safetensors").exists()


# ------------------------------------------------------------------ refusing a study
def _fake_study(tmp_path: Path, **attrs) -> Path:
    """A study as 'automl-vision search' stores it, with some attributes changed."""
    from automl_vision import __version__
    from automl_vision.plugins import get_plugin_manager
    from automl_vision.settings import SearchSettings
    from optuna.storages.journal import JournalFileBackend

    journal = tmp_path / "study.journal"
    study = optuna.create_study(study_name="s", storage=optuna.storages.JournalStorage(JournalFileBackend(str(journal))))
    defaults = {
        "settings": SearchSettings(data=str(tmp_path / "data"), run_dir=str(tmp_path), study_name="s").as_dict(),
        "automl_vision_version": __version__,
        "plugins": get_plugin_manager().fingerprint(),
        "run_dir": str(tmp_path),
    }
    for key, value in {**defaults, **attrs}.items():
        study.set_user_attr(key, value)
    return journal


def test_worker_refuses_a_study_of_another_version(tmp_path):
    journal = _fake_study(tmp_path, automl_vision_version="0.0.0-other")
    proc = run_cli("worker", "--storage", journal, "--study-name", "s", "--plain")
    assert proc.returncode == 2
    assert "0.0.0-other" in proc.stderr and "pip install 'automl-vision==0.0.0-other'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_worker_refuses_a_study_with_other_plugins(tmp_path):
    from automl_vision.plugins import get_plugin_manager

    theirs = {**get_plugin_manager().fingerprint(), "automl-vision-mixer": "1.2.0"}
    journal = _fake_study(tmp_path, plugins=theirs)
    proc = run_cli("worker", "--storage", journal, "--study-name", "s", "--plain")
    assert proc.returncode == 2
    assert "automl-vision-mixer: study 1.2.0, here not loaded" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_worker_bad_input_is_explained(tmp_path):
    journal = _fake_study(tmp_path)
    wrong = run_cli("worker", "--storage", journal, "--study-name", "nope", "--plain")
    assert wrong.returncode == 2 and "no study named 'nope'" in wrong.stderr and "it holds: s" in wrong.stderr
    missing = run_cli("worker", "--storage", tmp_path / "absent.journal", "--plain")
    assert missing.returncode == 2 and "no such journal file" in missing.stderr
    env = cli_env()
    env.pop("AUTOML_VISION_STORAGE", None)
    none = run_cli("worker", "--plain", env=env)
    assert none.returncode == 2 and "--storage URL is required" in none.stderr
    # the study exists but its run directory is not on this machine
    no_run = run_cli("worker", "--storage", journal, "--plain")
    assert no_run.returncode == 2 and "not found on this machine" in no_run.stderr
    for p in (wrong, missing, none, no_run):
        assert "Traceback" not in p.stderr


def test_devices_that_are_not_there_are_refused(digits_dir, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the refusal is for machines without it")
    proc = run_cli("search", digits_dir, "--out", tmp_path / "r", "--devices", "cuda:0,cuda:1", *FAST)
    assert proc.returncode == 2 and "CUDA is not available" in proc.stderr
    assert not (tmp_path / "r").exists()
    from automl_vision.search.workers import plan_devices, plan_workers

    assert plan_devices("auto", None) == ["cpu"]
    assert plan_devices(None, 3) == ["cpu", "cpu", "cpu"]
    plans = plan_workers(["cpu", "cpu"])
    assert [p.name for p in plans] == ["w0", "w1"]
    assert all(p.threads == max(1, len(os.sched_getaffinity(0)) // 2) for p in plans)


# ------------------------------------------------------------------ recovery rules, in-process
def test_journal_recovery_fails_dead_workers_trials_only(tmp_path):
    from optuna.storages.journal import JournalFileBackend

    from automl_vision.rundir import write_json
    from automl_vision.search.study import count_finished
    from automl_vision.search.workers import recover_stale_trials

    study = optuna.create_study(storage=optuna.storages.JournalStorage(JournalFileBackend(str(tmp_path / "j.journal"))))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    host = socket.gethostname()
    now = time.time()
    cases = {
        "dead local process": f"{host}-{gone.pid}",
        "live local process": f"{host}-{os.getpid()}",
        "remote, silent for a minute": "other-host-11",
        "remote, beating": "other-host-12",
    }
    write_json(tmp_path / "workers" / "other-host-11.json", {"worker": "other-host-11", "beat": now - 60, "state": "running"})
    write_json(tmp_path / "workers" / "other-host-12.json", {"worker": "other-host-12", "beat": now, "state": "running"})
    numbers = {}
    for label, worker in cases.items():
        trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
        trial.set_user_attr("worker", worker)
        (tmp_path / "trials" / f"{trial.number:05d}").mkdir(parents=True)
        numbers[label] = trial.number
    # a worker killed while writing its heartbeat file leaves a temporary beside it
    temporaries = {label: tmp_path / "workers" / f".{worker}.json.0123456789ab.tmp" for label, worker in cases.items()}
    for tmp in temporaries.values():
        tmp.write_text("{")
    logs = []
    assert recover_stale_trials(study, logs.append, RunDir(tmp_path)) == 2
    assert {label for label, tmp in temporaries.items() if tmp.exists()} == {"live local process", "remote, beating"}
    state = {t.number: t.state for t in study.get_trials()}
    assert state[numbers["dead local process"]] == optuna.trial.TrialState.FAIL
    assert state[numbers["remote, silent for a minute"]] == optuna.trial.TrialState.FAIL
    assert state[numbers["live local process"]] == optuna.trial.TrialState.RUNNING
    assert state[numbers["remote, beating"]] == optuna.trial.TrialState.RUNNING
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert sorted(t.user_attrs["retry_of"] for t in waiting) == sorted([numbers["dead local process"],
                                                                        numbers["remote, silent for a minute"]])
    assert RunDir(tmp_path).read_trial(numbers["dead local process"])["state"] == "FAIL"
    # a failed-and-retried trial does not count towards --n-trials; a retry that fails is not retried again
    assert count_finished(study.get_trials()) == 0
    assert recover_stale_trials(study, logs.append, RunDir(tmp_path)) == 0


# ------------------------------------------------------------------ out of memory
def test_out_of_memory_is_retried_at_half_batch_or_fails_the_trial_not_the_worker(tmp_path, digits_dir):
    run = tmp_path / "run"
    env = cli_env(AUTOML_VISION_TEST_OOM_BATCH="20",
                  PYTHONPATH=os.pathsep.join([str(ROOT / "tests" / "plugins"), os.environ.get("PYTHONPATH", "")]))
    proc = run_cli("search", digits_dir, "--out", run, "--n-trials", "3", "--max-epochs", "1", "--image-size", "16",
                   "--models", "hungry", "--plugin", "oom_family", "--pruner", "none", "--plain", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr  # the worker survived every out-of-memory error
    study = journal_study(run)
    trials = study.get_trials()
    assert len(trials) == 3 and all(t.state.is_finished() for t in trials), proc.stdout + proc.stderr
    for t in trials:
        status = RunDir(run).read_trial(t.number)
        sampled = t.params["batch_size"]
        config = json.loads((RunDir(run).trial_dir(t.number) / "config.json").read_text())
        if sampled // 2 <= 20:  # fits at half the batch: retried once, and says so
            assert status["state"] == "COMPLETE", status
            assert status["oom_retry"] == f"out of memory at batch size {sampled}; retried at batch size {sampled // 2}"
            assert config["batch_size"] == sampled // 2
            assert f"trial {t.number}: out of memory at batch size {sampled}" in proc.stdout
        else:  # does not fit at half either: the trial fails with the reason
            assert status["state"] == "FAIL"
            assert status["reason"].startswith(f"out of memory at batch size {sampled} and again at {sampled // 2}")
            assert t.user_attrs["reason"] == status["reason"]
