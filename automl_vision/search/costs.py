"""What a model costs to serve: latency, multiply-accumulates, parameters.

These are the extra objectives of a multi-objective search (``--objectives
accuracy,latency``). Latency is measured where the model will serve, the search's
device, at batch 1 after a warm-up, as the median of several runs, because a single
run on a shared machine says more about the neighbours than about the model.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from automl_vision.training.device import ExecPath

OBJECTIVES = ("latency", "params", "macs")
UNITS = {"latency": "ms", "params": "parameters", "macs": "MACs"}


@torch.no_grad()
def measure_latency(model: nn.Module, in_chans: int, image_size: int, path: ExecPath, warmup: int = 5,
                    runs: int = 30, max_seconds: float = 3.0) -> float:
    """Median milliseconds of one forward pass at batch 1 on the search's device.

    The model is put in eval mode on the device (and memory format) of ``path`` and put
    back on the CPU afterwards; at most ``max_seconds`` are spent timing.
    """
    device = path.torch_device
    fmt = torch.channels_last if path.channels_last else torch.contiguous_format
    was_training = model.training
    model = model.to(device=device, memory_format=fmt).eval()
    x = torch.rand(1, in_chans, image_size, image_size, device=device).contiguous(memory_format=fmt)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    with path.autocast():
        for _ in range(warmup):
            model(x)
        sync()
        times: list[float] = []
        start = time.perf_counter()
        while len(times) < runs and (time.perf_counter() - start < max_seconds or len(times) < 3):
            t0 = time.perf_counter()
            model(x)
            sync()
            times.append((time.perf_counter() - t0) * 1000.0)
    model.to("cpu")
    model.train(was_training)
    return float(statistics.median(times))


@torch.no_grad()
def count_macs(model: nn.Module, in_chans: int, image_size: int) -> float:
    """Multiply-accumulates of one forward pass at batch 1 (PyTorch's FLOP counter / 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model = model.to("cpu").eval()
    x = torch.rand(1, in_chans, image_size, image_size)
    counter = FlopCounterMode(display=False)
    with counter:
        model(x)
    model.train(was_training)
    return counter.get_total_flops() / 2.0


def objective_value(name: str, model: nn.Module, spec: dict, path: ExecPath) -> float:
    """The value of the extra objective ``name`` for a trained model."""
    if name == "params":
        return float(spec["params_count"])
    if name == "latency":
        return measure_latency(model, spec["in_chans"], spec["image_size"], path)
    if name == "macs":
        return count_macs(model, spec["in_chans"], spec["image_size"])
    raise ValueError(f"unknown objective {name!r}; expected a metric or one of {', '.join(OBJECTIVES)}")


# ------------------------------------------------------------------ a trial's cost before it starts
MIN_EPOCHS = 2  # a trial that cannot run two epochs before the deadline tells the search nothing worth its time
MAX_SKIPS = 5  # consecutive configurations too costly for the time left: the search stops sampling


def trial_work(budget, model: nn.Module, in_chans: int, image_size: int, num_train: int) -> float:
    """Work of one epoch, in multiply-accumulates (forward pass at batch 1 x training images);
    0 (not measured) when the search has no deadline."""
    if budget.deadline is None:
        return 0.0
    try:
        return count_macs(model, in_chans, image_size) * max(1, num_train)
    except Exception:  # a model the FLOP counter cannot trace gets no estimate (it is never skipped)
        return 0.0


PROBE_BATCH = 32  # images timed per probe pass: small batches overstate the per-image cost, most on a busy CPU


def probe_epoch_seconds(budget, model: nn.Module, batch_size: int, in_chans: int, image_size: int, num_train: int,
                        path: ExecPath) -> float | None:
    """Seconds one training epoch should take, from timing a forward and backward pass of
    a few images on the training device (after one untimed pass), scaled to the training
    set. Small batches cost more per image than the trial's, so this errs on the side of
    caution. The model's weights and BatchNorm statistics are left as they were. ``None``
    when the search has no deadline."""
    if budget.deadline is None:
        return None
    device = path.torch_device
    fmt = torch.channels_last if path.channels_last else torch.contiguous_format
    bs = max(2, min(PROBE_BATCH, batch_size, num_train))
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    rng = torch.get_rng_state()
    try:
        model.to(device=device, memory_format=fmt).train()
        x = torch.rand(bs, in_chans, image_size, image_size, device=device).contiguous(memory_format=fmt)
        times: list[float] = []
        start = time.perf_counter()
        # one untimed pass, then the fastest of a few (a busy machine delays some passes)
        while len(times) < 2 or (len(times) < 6 and time.perf_counter() - start < 1.0):
            t0 = time.perf_counter()
            with path.autocast():
                out = model(x)
            out.float().logsumexp(dim=-1).mean().backward()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t0)
        times = times[1:]
    except Exception:  # an estimate is optional; the trial itself reports real errors
        return None
    finally:
        model.zero_grad(set_to_none=True)
        with torch.no_grad():
            for b, copy in saved:
                b.copy_(copy)
        torch.set_rng_state(rng)
    # the optimizer step, augmentation and evaluation are not timed: the small probe batch
    # overestimates the per-image cost by more than they add
    return min(times) * num_train / bs


def note_speed(budget, epoch_seconds: float, work: float, probe_seconds: float | None = None) -> None:
    """Remember, from a trial's first epoch (training + evaluation), the seconds per unit of
    work and how far the probe's estimate was from the real epoch."""
    if work > 0 and epoch_seconds > 0:
        budget.__dict__.setdefault("speeds", []).append(epoch_seconds / work)
    if probe_seconds and epoch_seconds > 0:
        budget.__dict__.setdefault("probe_ratios", []).append(epoch_seconds / probe_seconds)


# before any trial has run, a probe pass overestimates an epoch on CPU (one pass pays the
# per-step overheads that a real epoch spreads over its batches)
UNCALIBRATED_PROBE_FACTOR = 0.5
# an uncalibrated estimate only skips a trial that is clearly too expensive: on a busy
# machine a single probe pass can be several times slower than the trial's steps
UNCALIBRATED_MARGIN = 2.0


def estimate_seconds(budget, work: float, probe_seconds: float | None = None, epochs: int = MIN_EPOCHS) -> float | None:
    """Seconds that ``epochs`` epochs should take: the probe of this model, calibrated by
    the earlier trials' real first epochs; else the work (MACs) at the measured speed."""
    if probe_seconds:
        ratios = budget.__dict__.get("probe_ratios") or []
        factor = statistics.median(ratios) if ratios else UNCALIBRATED_PROBE_FACTOR
        return probe_seconds * factor * epochs
    speeds = budget.__dict__.get("speeds") or []
    if work <= 0 or not speeds:
        return None
    return statistics.median(speeds) * work * epochs


def check_affordable(budget, work: float, probe_seconds: float | None = None) -> None:
    """Before training: skip (prune at once) a trial that cannot finish ``MIN_EPOCHS``
    epochs before the deadline; after ``MAX_SKIPS`` such in a row the search stops.

    Raises:
        optuna.TrialPruned: with the estimate, shown in the leaderboard.
    """
    import optuna

    if budget.deadline is None:
        return
    needed = estimate_seconds(budget, work, probe_seconds)
    left = budget.left()
    calibrated = bool(budget.__dict__.get("probe_ratios")) or not probe_seconds
    if needed is not None and not calibrated:
        needed = needed / UNCALIBRATED_MARGIN
    if needed is None or needed <= left:
        budget.__dict__["skips"] = 0
        return
    budget.__dict__["skips"] = budget.__dict__.get("skips", 0) + 1
    raise optuna.TrialPruned(f"not started: about {needed:.0f}s needed for {MIN_EPOCHS} epochs, {max(0.0, left):.0f}s left")


def out_of_affordable_configs(budget) -> bool:
    return budget.__dict__.get("skips", 0) >= MAX_SKIPS
