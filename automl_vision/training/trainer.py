"""The trial runner: trains one model on the cached training split and evaluates it on
the validation split after every epoch.

The hot loop is kept as lean as a hand-written one (the engine-overhead benchmark
checks it): the cached uint8 images live on the training device, a batch is an index
into them, augmentation runs on the batch, and nothing is copied or synchronised that
a plain PyTorch loop would not.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from automl_vision.training.augment import AugPolicy, BatchAugmenter
from automl_vision.training.device import ExecPath, data_fits_on_device
from automl_vision.training.inference import channel_stats, nhwc_to_tensor, predict_probs


# the last epoch after which ``plan`` may stretch the schedule (the first epoch's time
# includes one-off kernel set-up, so the second one is the better measure of speed)
STRETCH_BY_EPOCH = 2


class NonFiniteLoss(Exception):
    """The training loss became NaN or infinite."""


@dataclass
class TrialConfig:
    """Everything that defines how one trial trains (the sampled hyperparameters)."""

    family: str
    model_params: dict[str, Any]
    image_size: int
    batch_size: int = 64
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.05
    schedule: str = "cosine"  # cosine (with linear warmup) or onecycle
    warmup: float = 0.05  # share of the steps used for warmup (cosine)
    epochs: int = 10
    ema: bool = False
    grad_clip: float = 0.0  # max gradient norm; 0 = off
    label_smoothing: float = 0.0
    class_weighting: bool = False
    aug_preset: str = "light"
    aug: AugPolicy = field(default_factory=AugPolicy)
    seed: int = 0
    # fine-tuning (training/pretrained.py): the classifier's module names, and the share
    # of the learning rate the rest of the network gets
    head: list[str] = field(default_factory=list)
    backbone_lr_scale: float = 1.0

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["aug"] = self.aug.as_dict()
        return d


@dataclass
class TensorData:
    """Cached images of the training and validation splits as uint8 tensors (N, C, H, W)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    mean: list[float]
    std: list[float]
    num_classes: int
    streamed: bool = False  # memory-mapped from a file (too big to hold): batches read through the page cache

    @classmethod
    def from_arrays(cls, x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
                    num_classes: int, mean: list[float] | None = None, std: list[float] | None = None) -> "TensorData":
        """From uint8 ``(N, H, W, C)`` arrays (in memory or memory maps, which are not copied).

        ``mean`` and ``std`` are measured on ``x_train`` unless given (a refit keeps the trial's).
        """
        if mean is None or std is None:
            mean, std = channel_stats(x_train)
        return cls(
            x_train=nhwc_to_tensor(x_train),
            y_train=torch.from_numpy(np.asarray(y_train, dtype=np.int64)),
            x_val=nhwc_to_tensor(x_val),
            y_val=torch.from_numpy(np.asarray(y_val, dtype=np.int64)),
            mean=list(mean),
            std=list(std),
            num_classes=num_classes,
            streamed=isinstance(x_train, np.memmap) or isinstance(x_val, np.memmap),
        )


@dataclass
class TrainResult:
    model: nn.Module
    history: list[dict[str, Any]]
    val_probs: np.ndarray
    epochs_run: int
    stopped_early: str | None = None
    grown: str | None = None  # why the trial ran more epochs than configured
    path: ExecPath | None = None  # the execution path it trained on (ExecPath.for_network)


class BudgetExceeded(Exception):
    """The search's hard time limit was reached in the middle of an epoch.

    ``model`` is the network as it stood (its EMA when one was kept), ``progress`` the
    share of the (re)planned schedule's steps done and ``epochs`` the epochs begun: a
    caller may keep a run that was stopped at the very end of its schedule.
    """

    def __init__(self, reason: str, model: nn.Module | None = None, progress: float = 0.0, epochs: int = 0):
        super().__init__(reason)
        self.model, self.progress, self.epochs = model, progress, epochs


class _PinnedBatches:
    """Batches gathered from pinned host memory and copied to the GPU without blocking.

    Two pinned buffers alternate; before a buffer is refilled, the event recorded after
    its last copy is awaited, so a copy still in flight is never overwritten.
    """

    def __init__(self, x: torch.Tensor, batch_size: int, device: torch.device):
        self.x = x
        self.device = device
        self.buffers = [torch.empty((batch_size, *x.shape[1:]), dtype=x.dtype).pin_memory() for _ in range(2)]
        self.events: list = [None, None]

    def __call__(self, idx: torch.Tensor, step: int) -> torch.Tensor:
        k = step % 2
        if self.events[k] is not None:
            self.events[k].synchronize()
        buf = self.buffers[k]
        torch.index_select(self.x, 0, idx, out=buf)
        out = buf.to(self.device, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self.events[k] = event
        return out


class _Schedule:
    """The per-step LR factor of a trial (for ``LambdaLR``). ``plan["total"]`` may change
    while training (the time budget): the schedule then goes on from where it stands and
    reaches its end at the new last step, so the learning rate never jumps (a cut schedule
    anneals faster from there on, a grown one more slowly).

    The schedule is written over the first plan's steps; a re-plan at step ``s`` maps the
    steps still to run onto the part of the schedule still ahead (``rate`` schedule steps
    per step). Without a re-plan the factor of step ``step`` is that of a fixed schedule.
    """

    def __init__(self, schedule: str, plan: dict[str, int], warmup: float) -> None:
        self.schedule, self.plan, self.warmup = schedule, plan, warmup
        self.first = max(1, int(plan["total"]))
        self.total, self.anchor, self.at, self.rate = self.first, 0, 0.0, 1.0

    def position(self, step: int) -> float:
        """Where step ``step`` is on the schedule, in the first plan's steps."""
        if self.plan["total"] != self.total:  # re-planned: anchor at the point the schedule has reached
            at = self.at + (step - self.anchor) * self.rate
            self.total, self.anchor, self.at = int(self.plan["total"]), step, at
            self.rate = max(0.0, self.first - at) / max(1, self.total - step)
        return self.at + (step - self.anchor) * self.rate

    def progress(self, step: int) -> float:
        """The share of the schedule done after ``step`` steps (1.0: its learning rate has reached the end)."""
        return min(1.0, self.position(step) / self.first)

    def __call__(self, step: int) -> float:
        v, first = self.position(step), self.first
        if self.schedule == "onecycle":
            # warm up over 25% of the steps from lr/25, then cosine anneal to ~0
            up = max(1, int(first * 0.25))
            if v < up:
                return 0.04 + 0.96 * v / up
            t = (v - up) / max(1, first - up)
        else:
            warm = max(1, int(first * self.warmup))
            if v < warm:
                return (v + 1) / warm
            t = (v - warm) / max(1, first - warm)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t))) + 1e-4


def make_optimizer(model: nn.Module, cfg: TrialConfig) -> torch.optim.Optimizer:
    from timm.optim import create_optimizer_v2

    kwargs: dict[str, Any] = {}
    if cfg.optimizer == "sgd":
        kwargs["momentum"] = 0.9  # timm's "sgd" is SGD with Nesterov momentum
    if cfg.head and cfg.backbone_lr_scale != 1.0:
        from automl_vision.training.pretrained import param_groups

        return create_optimizer_v2(param_groups(model, cfg), opt=cfg.optimizer, lr=cfg.lr,
                                   weight_decay=cfg.weight_decay, **kwargs)
    return create_optimizer_v2(model, opt=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay, **kwargs)


def _finite_step(model: nn.Module, grad_clip: float) -> bool:
    """Clip the gradients if asked; whether they are all finite, so the step may be taken.

    As fp16's gradient scaler does, a step whose gradients are NaN or infinite is left
    out rather than written into the weights, where it would end the trial: one faulty
    step need not mean the training diverged (the kernel fault that showed it, oneDNN's
    bf16 gradient over 1-pixel maps, is avoided at its root by ``ExecPath.for_network``).
    ``train`` prunes the trial when most of an epoch's steps are left out.
    ``torch._foreach_norm`` is the one fused pass over the gradients that
    ``clip_grad_norm_`` makes too (0.1-0.9 ms a step on two CPU cores, under 1% of a step
    of the portfolio's networks; on a GPU one synchronisation a step, as the fp16
    scaler's step makes)."""
    if grad_clip > 0:
        norm = nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    else:
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if not grads:
            return True
        norm = torch.stack(torch._foreach_norm(grads)).sum()
    return bool(torch.isfinite(norm))


def train(
    model: nn.Module,
    cfg: TrialConfig,
    data: TensorData,
    path: ExecPath,
    on_epoch: Callable[[int, np.ndarray, dict[str, Any]], None] | None = None,
    plan: Callable[[int, float], int] | None = None,
    abort: Callable[[], str | None] | None = None,
    grow_until: int = STRETCH_BY_EPOCH,
) -> TrainResult:
    """Train ``model`` for ``cfg.epochs`` epochs.

    After every epoch the validation probabilities and the epoch's record (train loss,
    seconds, images per second, learning rate) go to ``on_epoch``, which may raise
    ``optuna.TrialPruned`` to stop the trial.
    ``plan(epochs_done, seconds_per_epoch)`` is asked after every epoch and returns how
    many epochs the trial may run in all (the time budget); when that is fewer than
    planned, the rest of the learning-rate schedule is compressed to end on time, so a
    trial near the end of the budget still finishes its schedule instead of being cut
    off. Up to epoch ``grow_until`` (``STRETCH_BY_EPOCH`` unless given) it may also return
    more: the rest of the schedule is then stretched to that many epochs (a cheap model
    given its share of the budget; a final fit, re-planned after every epoch). Either
    way the learning rate goes on from where it stands (:class:`_Schedule`).
    ``abort()`` is checked every few steps and returns a reason to stop at once
    (raises :class:`BudgetExceeded`). Raises :class:`NonFiniteLoss` when the loss is NaN
    or infinite.
    """
    device = path.torch_device
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    # timm's mixup/cutmix draw from NumPy's global generator and its random erasing from
    # Python's: seeded too, so a trial's augmentation does not depend on what ran before
    np.random.seed(cfg.seed % 2**32)
    random.seed(cfg.seed)
    memory_format = torch.channels_last if path.channels_last else torch.contiguous_format
    model = model.to(device=device, memory_format=memory_format)
    # the network's input side: the training images' own, or image_size where they were decoded
    # larger (crops cut from them keep their detail)
    c, h, w = tuple(data.x_train.shape[1:])
    if int(cfg.image_size) < h:
        h = w = int(cfg.image_size)
    path = path.for_network(model, (c, h, w))
    mean = torch.tensor(data.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(data.std, device=device).view(1, -1, 1, 1)
    on_device = data_fits_on_device(data.x_train.nbytes + data.x_val.nbytes, path)
    y_train = data.y_train.to(device)
    if on_device:
        x_train, x_val = data.x_train.to(device), data.x_val.to(device)
    else:
        # too big for the GPU: pinned host memory, batches copied without blocking (a
        # memory-mapped split stays where it is: pinning would read it all into memory)
        x_train, x_val = (data.x_train, data.x_val) if data.streamed else (data.x_train.pin_memory(), data.x_val.pin_memory())
    train_model = model
    if path.compile:
        train_model = torch.compile(model)  # shares the parameters; evaluation and saving use ``model``

    n = x_train.shape[0]
    batch_size = max(2, min(cfg.batch_size, n))
    fetch = None if on_device else _PinnedBatches(x_train, batch_size, device)
    steps_per_epoch = max(1, n // batch_size)  # drop the last partial batch (BatchNorm, mixup need >1)
    epochs = planned_epochs = configured = cfg.epochs
    steps_plan = {"total": steps_per_epoch * epochs}

    optimizer = make_optimizer(model, cfg)
    lr_schedule = _Schedule(cfg.schedule, steps_plan, cfg.warmup)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule)
    scaler = torch.amp.GradScaler(device.type, enabled=(path.precision == "fp16"))
    augmenter = BatchAugmenter(cfg.aug, data.num_classes, cfg.label_smoothing, generator=gen)
    weight = None
    if cfg.class_weighting:
        counts = torch.bincount(data.y_train, minlength=data.num_classes).float().clamp(min=1)
        weight = (counts.sum() / (data.num_classes * counts)).to(device)
    hard_loss = nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)
    ema = None
    if cfg.ema:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=0.998, use_warmup=True)

    history: list[dict[str, Any]] = []
    val_probs = np.zeros((0, data.num_classes))
    stopped = None
    grown = None
    step = 0
    epoch = 0
    while epoch < epochs:
        epoch += 1
        model.train()
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=gen)
        perm = perm.to(device) if on_device else perm
        loss_sum = torch.zeros((), device=device)
        skipped, bad_loss = 0, None  # steps left out for non-finite gradients (see _finite_step)
        for b in range(steps_per_epoch):
            idx = perm[b * batch_size : (b + 1) * batch_size]
            if fetch is None:
                xb = augmenter.uint8_stage(x_train[idx])
            else:
                xb = augmenter.uint8_stage(fetch(idx, b))
                idx = idx.to(device, non_blocking=True)
            xb = xb.float().div_(255.0)
            xb = augmenter.colour(augmenter.geometry(xb, h))
            xb = ((xb - mean) / std).contiguous(memory_format=memory_format)
            xb = augmenter.erase(xb)
            yb = y_train[idx]
            xb, target = augmenter.mix(xb, yb)
            with path.autocast():
                logits = train_model(xb)
            logits = logits.float()
            if logits.ndim != 2 or logits.shape != (xb.shape[0], data.num_classes):
                raise ValueError(
                    f"model {cfg.family} returned shape {tuple(logits.shape)}, expected ({xb.shape[0]}, {data.num_classes})"
                )
            if target.ndim == 2:  # soft targets from mixup/cutmix
                loss = torch.sum(-target * torch.log_softmax(logits, dim=-1), dim=-1).mean()
            else:
                loss = hard_loss(logits, target)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if scaler.is_enabled():  # fp16: the scaler skips steps with non-finite gradients itself
                if cfg.grad_clip > 0:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                loss_sum += loss.detach()
            elif _finite_step(model, cfg.grad_clip):
                optimizer.step()
                loss_sum += loss.detach()
            else:
                skipped += 1
                if bad_loss is None and not math.isfinite(float(loss)):
                    bad_loss = float(loss)
            scheduler.step()
            if ema is not None:
                ema.update(model, step=step)
            step += 1
            if abort is not None:  # every step: the time budget is a hard limit
                reason = abort()
                if reason:
                    raise BudgetExceeded(reason, ema.module if ema is not None else model,
                                         lr_schedule.progress(step), epoch)
        if skipped * 2 > steps_per_epoch:  # not a passing fault: the training diverged
            what = f"training loss became {bad_loss}" if bad_loss is not None else "gradients became non-finite"
            raise NonFiniteLoss(f"{what} in {skipped} of {steps_per_epoch} steps of epoch {epoch} (lr {cfg.lr:.3g}); "
                                "the trial is pruned")
        train_loss = float(loss_sum) / (steps_per_epoch - skipped)
        if not math.isfinite(train_loss):
            raise NonFiniteLoss(f"training loss became {train_loss} in epoch {epoch} (lr {cfg.lr:.3g}); the trial is pruned")
        seconds = time.perf_counter() - t0
        eval_model = ema.module if ema is not None else model
        t1 = time.perf_counter()
        val_probs = predict_probs(eval_model, x_val, mean, std, path)
        record = {
            "epoch": epoch,
            "train_loss": train_loss,
            "lr": optimizer.param_groups[0]["lr"],
            "train_seconds": seconds,
            "eval_seconds": time.perf_counter() - t1,
            "images_per_second": steps_per_epoch * batch_size / max(seconds, 1e-9),
        }
        if skipped:
            record["skipped_steps"] = skipped
        history.append(record)
        # the plan first: the pruner sees each score at its share of the (re)planned schedule
        if plan is not None and epoch < epochs:
            wanted = plan(epoch, seconds + record["eval_seconds"])
            if epoch <= grow_until and wanted > epochs:
                # the schedule may grow up to epoch grow_until (back, too, after a cut): a trial's only early on,
                # so that the pruner compares it at the share of the schedule it was started with
                if wanted > planned_epochs:
                    grown = f"epochs set from {configured} to {wanted} by the time budget"
                    planned_epochs, stopped = wanted, None
                else:
                    stopped = f"epochs cut from {planned_epochs} to {wanted} to fit the time budget"
                epochs = wanted
                steps_plan["total"] = steps_per_epoch * epochs
            allowed = max(epoch, min(epochs, wanted))
            if allowed < epochs:
                stopped = f"epochs cut from {planned_epochs} to {allowed} to fit the time budget"
                epochs = allowed
                steps_plan["total"] = steps_per_epoch * epochs
        if on_epoch is not None:
            on_epoch(epoch, val_probs, record)
    final = ema.module if ema is not None else model
    return TrainResult(final, history, val_probs, epoch, stopped, grown, path)
