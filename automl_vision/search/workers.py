"""Several workers on one study: devices, worker processes, heartbeats and recovery.

The engine is Optuna's distributed optimisation: every worker runs trials of one study
kept in a shared storage (the journal file in the run directory on one machine, a
PostgreSQL or MySQL database across machines). This module adds what a search needs on
top of it:

* :func:`~automl_vision.training.device.plan_devices` turns ``--devices``/``--workers`` into one device per worker, and
  :func:`run_parallel` starts one ``automl-vision worker`` process per device, with the
  machine's CPU threads divided between them so they do not oversubscribe the cores;
* :class:`WorkerHeartbeat` keeps ``RUN_DIR/workers/<worker>.json`` fresh while a worker
  lives (host, pid, device, the trial it runs), so the layout names which worker wrote
  what and other workers can tell a dead one;
* :func:`recover_stale_trials` fails the RUNNING trial of a dead worker and re-queues it
  once: on a database through Optuna's heartbeat and ``RetryFailedTrialCallback``; on the
  journal file (which has no heartbeat in Optuna) when the worker's process is gone from
  this host or its heartbeat file is older than the grace period;
* the worker's loop over trials, which relies on these, is :func:`automl_vision.search.loop.trial_loop`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import optuna

from automl_vision.rundir import STATUS, DamagedRunFileError, RunDir, read_json, write_json
from automl_vision.search.study import heartbeat_config, is_rdb, retried_numbers
from automl_vision.training.device import plan_devices  # noqa: F401  (one device a worker, from --devices/--workers)

RUNNING = optuna.trial.TrialState.RUNNING
FAIL = optuna.trial.TrialState.FAIL


# ------------------------------------------------------------------ devices and processes
@dataclass
class WorkerPlan:
    """One worker process: its name, device and CPU threads."""

    name: str
    device: str
    threads: int


def cpu_count() -> int:
    """CPU cores this process may use (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def plan_workers(devices: list[str]) -> list[WorkerPlan]:
    """Names and CPU threads of the workers: the cores are shared out evenly."""
    cores = cpu_count()
    threads = max(1, cores // max(1, len(devices)))
    return [WorkerPlan(f"w{i}", dev, threads) for i, dev in enumerate(devices)]


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def run_parallel(settings, study: optuna.Study, log: Callable[[str], None]) -> bool:
    """Start one ``automl-vision worker`` process per planned device and wait for them.

    The data is prepared and the study created before this is called, so a worker only
    joins: it reads the settings from the study and the cached data from the run
    directory. Returns ``True`` when every worker ended normally; ``False`` when one
    ended abnormally (the caller then finishes what is left of the study itself).
    """
    devices = settings.options.devices or [settings.device] * settings.workers
    plans = plan_workers(devices)
    cores = cpu_count()
    if sum(p.device == "cpu" for p in plans) > cores:
        log(f"warning: {len(plans)} CPU workers on {cores} core(s): they will compete for the cores")
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    if settings.storage:
        # the URL may hold a password: pass it in the environment, not on the command line (ps)
        env["AUTOML_VISION_STORAGE"] = settings.storage
    else:
        env["AUTOML_VISION_STORAGE"] = str(RunDir(settings.run_dir).journal.resolve())
    # CPU workers use the path the search measured, so trials are comparable and no worker
    # measures again while the others train
    exec_path = (RunDir(settings.run_dir).read_run() or {}).get("exec_path") or {}
    procs: list[tuple[WorkerPlan, subprocess.Popen]] = []
    log(f"starting {len(plans)} workers: " + ", ".join(f"{p.name} on {p.device} ({p.threads} CPU thread(s))" for p in plans))
    for plan in plans:
        cmd = [
            sys.executable, "-m", "automl_vision.cli", "worker",
            "--study-name", settings.study_name,
            "--run-dir", str(RunDir(settings.run_dir).path.resolve()),
            "--device", plan.device,
            "--threads", str(plan.threads),
            "--name", plan.name,
            "--plain",
        ]
        if plan.device == "cpu" and exec_path.get("device") == "cpu":
            cmd += ["--precision", exec_path["precision"], "--channels-last", "on" if exec_path["channels_last"] else "off"]
        worker_env = dict(env)
        # OpenMP/MKL size their pools at start-up: set them before torch is imported
        worker_env["OMP_NUM_THREADS"] = str(plan.threads)
        worker_env["MKL_NUM_THREADS"] = str(plan.threads)
        procs.append((plan, subprocess.Popen(cmd, env=worker_env)))
    all_ok = True
    try:
        for plan, proc in procs:
            code = proc.wait()
            if code != 0:
                all_ok = False
                log(f"worker {plan.name} ({plan.device}) ended: {_describe_exit(code)}; its running trial, if any, "
                    "is failed and re-queued once, and the other workers go on")
    except KeyboardInterrupt:
        # the terminal sends Ctrl-C to the whole process group; forward it when it did not
        for _plan, proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for _plan, proc in procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        raise
    return all_ok


# ------------------------------------------------------------------ heartbeat files
class WorkerHeartbeat:
    """Keeps ``RUN_DIR/workers/<worker>.json`` fresh while the worker lives.

    The file says which host and process the worker is, its device, the trial it runs and
    when it last beat. On the journal storage this is how other workers tell a dead
    worker on another machine; on one machine they also check the process itself.
    """

    def __init__(self, run_dir: RunDir, worker: str, device: str, interval: float | None = None):
        self.run_dir = run_dir
        self.worker = worker
        self.path = run_dir.worker_file(worker)
        self.interval = interval or heartbeat_config().interval
        self.info = {
            "worker": worker,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "device": device,
            "started": time.time(),
            "trials": [],
            "trial": None,
            "state": "running",
        }
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def _write(self) -> None:
        with self._lock:
            self.info["beat"] = time.time()
            try:
                write_json(self.path, self.info)
            except OSError:
                pass  # a full disk must not stop training; the database heartbeat still works

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._write()

    def trial(self, number: int | None) -> None:
        """The trial this worker runs now (``None`` between trials)."""
        with self._lock:
            self.info["trial"] = number
            if number is not None and number not in self.info["trials"]:
                self.info["trials"].append(number)
        self._write()

    def __enter__(self) -> "WorkerHeartbeat":
        self._write()
        self._thread = threading.Thread(target=self._run, name="automl-vision-heartbeat", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            self.info["state"] = "stopped"
            self.info["trial"] = None
        self._write()


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host exists (another user's counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def worker_dead(run_dir: RunDir, worker: str, grace: float, now: float | None = None) -> str | None:
    """Why ``worker`` is dead, or ``None`` when it may be alive.

    A worker on this host is dead when its process is gone; any worker is dead when its
    heartbeat file is older than ``grace`` seconds or says it stopped.
    """
    now = time.time() if now is None else now
    host, _, pid = worker.rpartition("-")
    if host == socket.gethostname() and pid.isdigit() and not pid_alive(int(pid)):
        return "worker died (process gone)"
    info = read_json(run_dir.worker_file(worker)) if worker else None
    if info:
        if info.get("state") == "stopped":
            return "worker stopped without finishing the trial"
        beat = float(info.get("beat", 0))
        if now - beat > grace:
            return f"worker died (no heartbeat for {now - beat:.0f}s)"
    return None


def remove_dead_worker_temporaries(run_dir: RunDir, grace: float) -> None:
    """Remove the ``workers/.<worker>.json.*.tmp`` files of workers that died (kill -9) while
    writing their heartbeat file; a live worker's are left alone (its rename would fail)."""
    for worker, tmp in run_dir.worker_temporaries():
        if worker_dead(run_dir, worker, grace):
            tmp.unlink(missing_ok=True)


# ------------------------------------------------------------------ recovery
def _fail_status(run_dir: RunDir, trial: optuna.trial.FrozenTrial, reason: str) -> None:
    """Make ``status.json`` agree with the study: a dead worker's trial is FAIL, whatever it
    had written, so that nothing it left (even complete-looking weights) is trusted."""
    tdir = run_dir.trial_dir(trial.number)
    if not tdir.exists():
        return
    try:
        record = run_dir.read_trial(trial.number)
    except DamagedRunFileError:  # whatever a dead worker left is replaced
        record = None
    record = record or {"number": trial.number, "worker": trial.user_attrs.get("worker", "")}
    if record.get("state") == "FAIL" and record.get("reason"):
        return
    record.update(state="FAIL", reason=reason, finished=time.time())
    if record.get("started"):
        record["seconds"] = record["finished"] - record["started"]
    write_json(tdir / STATUS, record)


def recover_stale_trials(study: optuna.Study, log: Callable[[str], None], run_dir: RunDir | None = None) -> int:
    """Fail the RUNNING trials of dead workers and re-queue each once; returns how many.

    Database storages: Optuna's heartbeat decides (``fail_stale_trials``) and the storage's
    ``RetryFailedTrialCallback`` re-queues. Journal file: :func:`worker_dead` decides and
    the trial is re-queued with ``retry_of`` in its user attributes. Either way the dead
    trial's ``status.json`` is rewritten as FAIL with the reason.
    """
    if run_dir is None:
        run_dir = RunDir(study.user_attrs.get("run_dir", "."))
    beat = heartbeat_config()
    remove_dead_worker_temporaries(run_dir, beat.grace)
    recovered = 0
    if is_rdb(study._storage):
        if study.get_trials(deepcopy=False, states=(RUNNING,)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
        trials = study.get_trials(deepcopy=False)
        retried = retried_numbers(trials)
        for t in trials:
            # Optuna fails stale trials here or when any worker starts a trial: make every
            # failed trial's status.json agree, whoever failed it
            if t.state != FAIL or not run_dir.trial_dir(t.number).exists():
                continue
            status = run_dir.read_trial(t.number) or {}
            if status.get("state") == "FAIL":
                continue
            reason = f"worker {t.user_attrs.get('worker', '?')} died (no heartbeat for {beat.grace:.0f}s)"
            reason += "; re-queued" if t.number in retried else ""
            _fail_status(run_dir, t, reason)
            log(f"trial {t.number}: {reason}")
            recovered += 1
        return recovered
    now = time.time()
    for t in study.get_trials(deepcopy=False, states=(RUNNING,)):
        worker = t.user_attrs.get("worker", "")
        if worker:
            why = worker_dead(run_dir, worker, beat.grace, now)
        else:
            # a live worker names itself within milliseconds of taking the trial
            started = t.datetime_start.timestamp() if t.datetime_start else now
            why = "worker unknown and silent" if now - started > beat.grace else None
        if why is None:
            continue
        requeue = t.user_attrs.get("retry_of") is None
        reason = f"{why}; " + ("re-queued" if requeue else "not re-queued again (it was a retry already)")
        try:
            study._storage.set_trial_user_attr(t._trial_id, "reason", reason)
            study._storage.set_trial_state_values(t._trial_id, FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker recovered it first
        if requeue:
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number}, skip_if_exists=False)
        _fail_status(run_dir, t, reason)
        log(f"trial {t.number} was left running by {worker or 'an unknown worker'}: {reason}")
        recovered += 1
    return recovered


# ------------------------------------------------------------------ the worker's loop
