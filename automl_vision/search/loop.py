"""The trial loop: start trials of the study until ``--n-trials`` count as finished or the
time budget ends, among any number of workers sharing the study.

Used by the search's own process (:func:`automl_vision.search.run.run_worker`), by each
worker process it spawns, and by ``automl-vision worker``. The workers' bookkeeping it relies
on (heartbeats, dead workers' trials re-queued) is :mod:`automl_vision.search.workers`'s.
"""

from __future__ import annotations

import time
from typing import Callable

import optuna

from automl_vision.rundir import TRIAL_START_LOCK
from automl_vision.search.interrupts import check_interrupt, watch_interrupts
from automl_vision.search.study import count_finished, heartbeat_config
from automl_vision.search.workers import RUNNING, WorkerHeartbeat, recover_stale_trials


def trial_loop(study: optuna.Study, objective, budget, n_trials: int | None, callbacks: list, log: Callable[[str], None],
               poll: float | None = None) -> int:
    """Run trials of ``study`` until ``n_trials`` count as finished or the budget ends.

    A file lock in the run directory makes "count the trials, then take the next one" one
    step among the workers that share the run directory, so together they run exactly
    ``n_trials`` trials. When the remaining trials are running on other workers, this
    worker waits for them (one may die and be re-queued) rather than leaving. Returns the
    number of trials this worker ran.
    """
    from filelock import FileLock

    run_dir = objective.run_dir
    run_dir.path.mkdir(parents=True, exist_ok=True)
    beat = heartbeat_config()
    poll = poll or min(2.0, beat.interval)
    gate = FileLock(str(run_dir.path / TRIAL_START_LOCK))
    ran = 0
    waiting_logged = False
    check_interrupt()  # noted before the loop (during start-up): watch_interrupts starts afresh
    with watch_interrupts(), WorkerHeartbeat(run_dir, objective.worker, objective.path.device, beat.interval) as heartbeat:
        while True:
            check_interrupt()  # a Ctrl-C swallowed where it landed still stops the loop
            gate.acquire()
            held = True
            try:
                recover_stale_trials(study, log, run_dir)
                if n_trials is not None:
                    trials = study.get_trials(deepcopy=False)
                    done = count_finished(trials)
                    if done >= n_trials:
                        break
                    running = sum(t.state == RUNNING for t in trials)
                    if done + running >= n_trials:
                        gate.release()
                        held = False
                        if not waiting_logged:
                            log(f"waiting for {running} trial(s) running on other workers")
                            waiting_logged = True
                        if budget.deadline is not None and budget.left() <= 0:
                            break
                        time.sleep(poll)
                        continue
                if not budget.can_start():
                    if budget.deadline is not None:
                        log("time budget: not enough time left for another trial")
                    break
                waiting_logged = False

                def one_trial(trial: optuna.Trial):
                    nonlocal held
                    # the trial has its number now: let the next worker in
                    gate.release()
                    held = False
                    trial.set_user_attr("worker", objective.worker)
                    retry_of = study._storage.get_trial_system_attrs(trial._trial_id).get("failed_trial")
                    if retry_of is not None and trial.user_attrs.get("retry_of") is None:
                        trial.set_user_attr("retry_of", retry_of)
                    heartbeat.trial(trial.number)
                    try:
                        return objective(trial)
                    finally:
                        heartbeat.trial(None)

                study.optimize(one_trial, n_trials=1, catch=(Exception,), callbacks=callbacks, gc_after_trial=False)
                ran += 1
                if getattr(objective, "fatal", None) is not None:
                    raise objective.fatal  # a full disk: stop, rather than fail every next trial the same way
            finally:
                if held:
                    gate.release()
        check_interrupt()
    return ran
