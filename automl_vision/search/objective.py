"""One trial: sample a configuration, train it, evaluate it, write its artefacts.

Every trial writes ``trials/<n>/`` in the run directory: ``config.json`` when it
starts, ``history.json`` after every epoch, and when it completes ``weights.safetensors``,
``model.json``, ``val_probs.npy`` and ``metrics.json``; ``status.json`` is written last
and is the trial's summary (state, reason, metrics), so a reader that finds it finds
everything it lists.
"""

from __future__ import annotations

import errno
import math
import os
import socket
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
import torch

from automl_vision.data.prepare import PreparedData
from automl_vision.evaluation import check_requirements, compute_metrics, per_class
from automl_vision.models import count_params, save_model
from automl_vision.plugins import PluginManager
from automl_vision.rundir import CONFIG, HISTORY, METRICS, STATUS, VAL_PROBS, RunDir, write_json, write_npy
from automl_vision.search import space
from automl_vision.search.budget import Pace
from automl_vision.search.interrupts import check_interrupt, interrupt_behind
from automl_vision.search.study import SCHEDULE_STEPS
from automl_vision.search.watchdog import Watchdog, busy_note
from automl_vision.settings import PRESETS, SearchSettings, trial_seconds
from automl_vision.training.augment import eval_crops, eval_size, eval_sizes, train_side
from automl_vision.training.device import ExecPath
from automl_vision.training.inference import accepts_size
from automl_vision.training.trainer import STRETCH_BY_EPOCH, BudgetExceeded, NonFiniteLoss, TensorData, train


# "no space left on device" and "disk quota exceeded": stop the search with a clear message
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class ObjectiveNotFinite(RuntimeError):
    """The objective metric gave no finite value: the trial fails with this reason."""


class TrialOutOfMemory(RuntimeError):
    """Training ran out of memory, also after the retry at half the batch size."""


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA raises ``torch.OutOfMemoryError``; the CPU allocator a RuntimeError that says so."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text.lower())


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def free_device_memory(path: ExecPath) -> None:
    import gc

    gc.collect()
    if path.torch_device.type == "cuda":
        torch.cuda.empty_cache()


def worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def schedule_step(epoch: int, epochs: int) -> int:
    """The step a trial reports its score at: the percent of its schedule it has run
    (see study.SCHEDULE_STEPS); epochs that round to the same percent report once."""
    return min(SCHEDULE_STEPS, SCHEDULE_STEPS * epoch // max(1, epochs))


@dataclass
class Budget:
    """The search's time limit, shared by every trial of this process."""

    deadline: float | None  # absolute time.time(); None: no limit
    reserve: float = 0.0  # seconds kept for the final steps (search/budget.py: BudgetPlan.reserve)
    epoch_times: list[float] = field(default_factory=list)
    search_seconds: float | None = None  # the trials' part of the budget (None: the whole budget)
    grace: float | None = None  # seconds a trial may overrun into the reserve (None: half of it)

    def stop_at(self) -> float:
        """The hard limit of a running trial: a little into the reserve, never into a final fit."""
        grace = self.reserve * 0.5 if self.grace is None else self.grace
        return self.deadline - self.reserve + grace

    def left(self) -> float:
        return math.inf if self.deadline is None else self.deadline - self.reserve - time.time()

    def can_start(self, min_epochs: int = 1) -> bool:
        if self.deadline is None:
            return True
        from automl_vision.search.costs import out_of_affordable_configs

        if out_of_affordable_configs(self):  # the last sampled configurations were all too costly
            return False
        needed = (min(self.epoch_times) * min_epochs) if self.epoch_times else 0.0
        return self.left() > max(needed, 1.0)


class Objective:
    def __init__(self, settings: SearchSettings, data: PreparedData, pm: PluginManager, path: ExecPath,
                 budget: Budget, progress, objectives: list[str], max_epochs: int):
        self.settings = settings
        self.data = data
        self.pm = pm
        self.path = path
        self.budget = budget
        self.progress = progress
        self.objectives = objectives
        self.max_epochs = max_epochs
        self.run_dir = RunDir(settings.run_dir)
        self.families, self.named_models = space.families_and_models(settings, pm)
        self._tensors: dict[int, TensorData] = {}
        self.worker = worker_id()
        self.trial_seconds = trial_seconds(settings, budget.search_seconds)
        self.epoch_cap = int(PRESETS[settings.preset]["epoch_cap"])
        check_requirements(objectives, pm, len(data.classes))
        busy = busy_note()
        if busy:
            progress.log(f"warning: {busy}")

    # data at one resolution (and the side its training images are decoded at), kept for the life of the worker
    def tensors(self, image_size: int, train_side: int | None = None) -> TensorData:
        key = (image_size, train_side or image_size)
        if key not in self._tensors:
            tr, va = self.data.split_index["train"], self.data.split_index["val"]
            x_train, x_val = self.data.training_arrays(tr, va, image_size, self.progress.log, train_side=key[1])
            labels = self.data.labels
            self._tensors[key] = TensorData.from_arrays(x_train, labels[tr], x_val, labels[va], len(self.data.classes))
        return self._tensors[key]

    def __call__(self, trial: optuna.Trial):
        tdir = self.run_dir.trial_dir(trial.number)
        tdir.mkdir(parents=True, exist_ok=True)
        started = time.time()
        record: dict[str, Any] = {"number": trial.number, "state": "RUNNING", "worker": self.worker, "started": started}
        if trial.user_attrs.get("retry_of") is not None:  # re-queued after its first worker died
            record["retry_of"] = trial.user_attrs["retry_of"]
        history: list[dict[str, Any]] = []

        def interrupted() -> None:  # the trial stays FAIL "interrupted": a resumed search retries it first
            record.update(state="FAIL", reason="interrupted", epochs=len(history))
            trial.set_user_attr("reason", "interrupted")

        objective_metric = self.objectives[0]
        direction = self.pm.metrics.get(objective_metric).direction
        try:
            cfg = space.sample(
                trial, self.settings, self.pm, self.families, self.named_models, len(self.data.classes),
                self.data.in_chans, len(self.data.split_index["train"]), self.path.device, self.max_epochs,
            )
            family = self.pm.model_families.get(cfg.family)
            label = family.label(cfg.model_params)
            record.update(model=label, family=cfg.family, image_size=cfg.image_size, aug=cfg.aug_preset)
            write_json(tdir / CONFIG, {**cfg.as_dict(), "worker": self.worker})
            trial.set_user_attr("model", label)
            if trial.user_attrs.get("portfolio"):  # a warm-start entry: the leaderboard says which
                record["portfolio"] = trial.user_attrs["portfolio"]
            trial.set_user_attr("worker", self.worker)
            data = self.tensors(cfg.image_size, train_side(cfg.image_size, cfg.aug.crop_scale))

            def build() -> torch.nn.Module:
                # the initial weights depend on the seed and the trial only (not on what ran before)
                torch.manual_seed(cfg.seed)
                try:
                    net = family.build(cfg.model_params, in_chans=self.data.in_chans, image_size=cfg.image_size,
                                       num_classes=len(self.data.classes))
                except Exception as exc:
                    raise RuntimeError(f"model family {cfg.family!r} failed to build {label}: "
                                       f"{type(exc).__name__}: {exc}") from exc
                self._initialise(net, cfg, record)  # --pretrained / --weights / --init-from
                return net

            model = build()
            # the budget: estimate the trial's cost first and skip it when it cannot finish in time
            from automl_vision.search import costs

            work = costs.trial_work(self.budget, model, self.data.in_chans, cfg.image_size, len(self.data.split_index["train"]))
            probe = costs.probe_epoch_seconds(self.budget, model, cfg.batch_size, self.data.in_chans,
                                              cfg.image_size, len(self.data.split_index["train"]), self.path)
            costs.check_affordable(self.budget, work, probe)
            n_params = count_params(model)
            record["params_count"] = n_params
            trial.set_user_attr("params_count", n_params)
            self.progress.trial_start(trial.number, label, cfg.epochs)

            reported = [-1]  # the last step reported to the pruner
            pace = Pace()
            watchdog = Watchdog()

            def on_epoch(epoch: int, probs: np.ndarray, rec: dict[str, Any]) -> None:
                metrics = compute_metrics(data.y_val.numpy(), probs, self.pm)
                rec.update({f"val_{k}": v for k, v in metrics.items()})
                history.append(rec)
                write_json(tdir / HISTORY, history)
                self.pm.on_epoch_end(str(self.run_dir.path), trial.number, epoch, cfg.epochs, dict(rec))
                value = metrics.get(objective_metric, math.nan)
                if not math.isfinite(value):
                    # a trial without a score cannot be ranked, pruned or delivered: it fails, saying why
                    plugin = self.pm.metrics.plugin_of(objective_metric)
                    why = "raised an error" if objective_metric not in metrics else f"returned {value}"
                    raise ObjectiveNotFinite(f"objective metric {objective_metric!r} (plugin {plugin}) {why} on the "
                                             f"validation images after epoch {epoch}; the trial cannot be scored")
                self.progress.epoch(trial.number, epoch, cfg.epochs, objective_metric, value, rec["train_seconds"])
                seconds = rec["train_seconds"] + rec["eval_seconds"]
                slow = watchdog.observe(rec["images_per_second"] * rec["train_seconds"], seconds)
                if slow:
                    self.progress.log(f"warning: trial {trial.number}: {slow}")
                    record["slowdown"] = slow
                    trial.set_user_attr("slowdown", slow)
                step = schedule_step(epoch, cfg.epochs)
                if len(self.objectives) == 1 and step > reported[0]:
                    reported[0] = step
                    trial.report(value, step)
                    if trial.should_prune():
                        raise optuna.TrialPruned(f"pruned after epoch {epoch} ({objective_metric} {value:.4f})")

            def plan(epochs_done: int, epoch_seconds: float) -> int:
                if epochs_done == 1:
                    self.budget.epoch_times.append(epoch_seconds)
                    costs.note_speed(self.budget, epoch_seconds, work, probe)
                if epochs_done == STRETCH_BY_EPOCH:
                    stretched = self.stretched_epochs(cfg.epochs, epoch_seconds)
                    if stretched > cfg.epochs:
                        cfg.epochs = stretched
                        write_json(tdir / CONFIG, {**cfg.as_dict(), "worker": self.worker,
                                                          "epochs_from_budget": True})
                left = self.budget.left()
                if not math.isinf(left):  # cut to what fits before the deadline
                    cfg.epochs = pace.epochs_that_fit(epochs_done, epoch_seconds, left, cfg.epochs)
                return cfg.epochs

            def abort() -> str | None:
                check_interrupt()  # every step: a Ctrl-C noted but swallowed stops the trial here
                if self.budget.deadline is not None and time.time() > self.budget.stop_at():
                    return "time budget reached"
                return None

            # out of memory: retried once at half the batch size (and half the learning rate, as
            # sampled per batch size); a second one fails the trial, never the worker
            first_batch = cfg.batch_size
            for attempt in (1, 2):
                oom = None
                try:
                    result = train(model, cfg, data, self.path, on_epoch=on_epoch, plan=plan, abort=abort)
                    if result.path is not None and result.path.precision != self.path.precision:
                        self.progress.log(f"trial {trial.number}: {result.path.reason}")
                        record["precision"] = result.path.precision
                    break
                except Exception as exc:
                    if not is_out_of_memory(exc):
                        raise
                    oom = first_line(exc)  # leave the except block first: its traceback holds the memory
                del model
                free_device_memory(self.path)
                if attempt == 2:
                    raise TrialOutOfMemory(f"out of memory at batch size {first_batch} and again at "
                                           f"{cfg.batch_size}: {oom}")
                if first_batch <= 2:
                    raise TrialOutOfMemory(f"out of memory at batch size {first_batch}: {oom}")
                cfg.batch_size, cfg.lr = first_batch // 2, cfg.lr * (first_batch // 2) / first_batch
                note = f"out of memory at batch size {first_batch}; retried at batch size {cfg.batch_size}"
                self.progress.log(f"trial {trial.number}: {note}")
                record["oom_retry"] = note
                trial.set_user_attr("oom_retry", note)
                history.clear()
                write_json(tdir / CONFIG, {**cfg.as_dict(), "worker": self.worker, "oom_retry": note})
                model = build()
            metrics = {k[4:]: v for k, v in history[-1].items() if k.startswith("val_")}
            spec = {
                "family": cfg.family,
                "params": cfg.model_params,
                "label": label,
                "in_chans": self.data.in_chans,
                "image_size": cfg.image_size,
                "num_classes": len(self.data.classes),
                "classes": self.data.classes,
                "mean": data.mean,
                "std": data.std,
                "trial": trial.number,
                "params_count": n_params,
            }
            net = result.model.to("cpu")
            sides = eval_sizes(cfg.image_size, cfg.aug.crop_scale)
            if len(sides) > 1 and accepts_size(net, self.data.in_chans, max(sides)):
                # predict averages over these sides (augment.eval_sizes); eval_size is the one side
                # for a single input (preprocessing.json)
                spec["eval_size"] = eval_size(cfg.image_size, cfg.aug.crop_scale)
                spec["eval_sizes"] = sides
                # and over crops of its training side cut from the largest of them (augment.eval_crops)
                spec["eval_crops"] = eval_crops(cfg.image_size, cfg.aug.crop_scale)
            save_model(tdir, net, spec)
            write_npy(tdir / VAL_PROBS, result.val_probs.astype(np.float32))
            write_json(tdir / METRICS, {"val": metrics, **per_class(data.y_val.numpy(), result.val_probs, self.data.classes)})
            values = [metrics[m] if m in metrics else self._extra_objective(m, spec, result) for m in self.objectives]
            for name, value in metrics.items():
                trial.set_user_attr(f"val_{name}", value)
            record.update(state="COMPLETE", value=values[0], values=values, metrics=metrics, epochs=result.epochs_run,
                          reason=result.stopped_early or result.grown or "")
            return values[0] if len(values) == 1 else tuple(values)
        except optuna.TrialPruned as exc:
            record.update(state="PRUNED", reason=str(exc) or "pruned", epochs=len(history))
            self._last_metrics(record, history)
            raise
        except NonFiniteLoss as exc:
            record.update(state="PRUNED", reason=str(exc), epochs=len(history))
            self._last_metrics(record, history)
            raise optuna.TrialPruned(str(exc)) from exc
        except BudgetExceeded as exc:
            record.update(state="PRUNED", reason=f"stopped mid-epoch: {exc}", epochs=len(history))
            self._last_metrics(record, history)
            raise optuna.TrialPruned(record["reason"]) from exc
        except KeyboardInterrupt:
            interrupted()
            raise
        except (torch.OutOfMemoryError, TrialOutOfMemory) as exc:
            reason = str(exc) if isinstance(exc, TrialOutOfMemory) else f"out of memory: {exc}"
            record.update(state="FAIL", reason=reason.splitlines()[0], epochs=len(history))
            trial.set_user_attr("reason", record["reason"])
            raise
        except OSError as exc:
            if (stop := interrupt_behind(exc)) is not None:  # a library's clean-up failed under the Ctrl-C
                interrupted()
                raise stop from exc
            if exc.errno not in DISK_FULL:
                record.update(state="FAIL", reason=f"{type(exc).__name__}: {exc}", epochs=len(history),
                              traceback=traceback.format_exc(limit=8))
                trial.set_user_attr("reason", record["reason"])
                raise
            # the disk is full: every next trial would fail the same way, so the search stops
            record.update(state="FAIL", reason=f"disk full: {exc}", epochs=len(history))
            self.fatal = exc
            raise
        except ObjectiveNotFinite as exc:  # the metric's fault, said in full: no traceback to keep
            record.update(state="FAIL", reason=str(exc), epochs=len(history))
            trial.set_user_attr("reason", record["reason"])
            raise
        except Exception as exc:
            if (stop := interrupt_behind(exc)) is not None:
                interrupted()
                raise stop from exc
            record.update(state="FAIL", reason=f"{type(exc).__name__}: {exc}", epochs=len(history),
                          traceback=traceback.format_exc(limit=8))
            trial.set_user_attr("reason", record["reason"])
            raise
        finally:
            record["seconds"] = time.time() - started
            record["finished"] = time.time()
            if record["state"] == "PRUNED":
                trial.set_user_attr("reason", record["reason"])
            try:
                write_json(tdir / STATUS, record)
            except OSError as exc:
                if exc.errno not in DISK_FULL:
                    raise
                self.fatal = exc  # nothing half-written is left (atomic write); the search stops
            self.last_record = record

    def stretched_epochs(self, epochs: int, epoch_seconds: float) -> int:
        """Epochs for a trial whose epochs take ``epoch_seconds`` (measured on its second
        epoch, after one-off set-up): enough to fill its share of the time budget
        (settings.trial_seconds), between ``epochs`` and the preset's cap. A cheap model
        trained longer beats a costly one cut short."""
        if not self.trial_seconds or epoch_seconds <= 0:
            return epochs
        return max(epochs, min(self.epoch_cap, int(self.trial_seconds // epoch_seconds)))

    def _last_metrics(self, record: dict[str, Any], history: list[dict[str, Any]]) -> None:
        if history:
            record["metrics"] = {k[4:]: v for k, v in history[-1].items() if k.startswith("val_")}
            record["value"] = record["metrics"].get(self.objectives[0])

    def _initialise(self, model, cfg, record: dict[str, Any]) -> None:
        """Start from loaded weights when the search was asked to (training/pretrained.py)."""
        init = self.settings.options.init
        if init:
            from automl_vision.training.pretrained import initialise

            record["init"] = initialise(model, cfg, init, self.data.in_chans, len(self.data.classes))

    def _extra_objective(self, name: str, spec: dict[str, Any], result) -> float:
        """Objectives that are not metrics of predictions (multi-objective: params, latency, macs)."""
        from automl_vision.search.costs import objective_value

        return objective_value(name, result.model, spec, self.path)
