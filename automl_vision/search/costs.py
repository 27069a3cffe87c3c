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
