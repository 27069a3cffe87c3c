"""Preprocessing and batched inference shared by training, evaluation, predict and export.

Preprocessing is fixed and documented (docs/run-directory.md): an image is decoded by
:func:`automl_vision.data.images.decode` to a square ``uint8`` array of the model's
size, scaled to [0, 1], then normalised per channel with the run's mean and std.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from automl_vision.training.device import ExecPath


def nhwc_to_tensor(x: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, C) array -> uint8 tensor (N, C, H, W) in channels-last memory."""
    return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2)


def normalize(x_uint8: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, channels_last: bool) -> torch.Tensor:
    x = x_uint8.float().div_(255.0)
    x = (x - mean) / std
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def channel_stats(x_nhwc: np.ndarray, max_images: int = 2048) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1] units, from up to ``max_images`` images."""
    sub = np.asarray(x_nhwc[:max_images], dtype=np.float32) / 255.0
    mean = sub.mean(axis=(0, 1, 2))
    std = sub.std(axis=(0, 1, 2))
    return [float(v) for v in mean], [float(max(v, 1e-3)) for v in std]


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, path: ExecPath, batch_size: int = 256) -> torch.Tensor:
    """Logits (float32, on CPU) of uint8 images ``x`` (N, C, H, W)."""
    model.eval()
    out = []
    device = path.torch_device
    for i in range(0, x.shape[0], batch_size):
        xb = normalize(x[i : i + batch_size].to(device, non_blocking=True), mean, std, path.channels_last)
        with path.autocast():
            logits = model(xb)
        out.append(logits.float().cpu())
    if not out:
        return torch.empty(0)
    return torch.cat(out)


def predict_probs(model: nn.Module, x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, path: ExecPath,
                  batch_size: int = 256, temperature: float = 1.0) -> np.ndarray:
    logits = predict_logits(model, x, mean, std, path, batch_size)
    return torch.softmax(logits / temperature, dim=1).numpy().astype(np.float64)


@torch.no_grad()
def accepts_size(model: nn.Module, in_chans: int, size: int) -> bool:
    """Whether ``model`` takes a ``size`` x ``size`` input (a network with global pooling does; one
    with a fixed position embedding, such as a ViT, may not): one image's forward pass on CPU."""
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, in_chans, int(size), int(size)))
        return True
    except Exception:  # noqa: BLE001 - whatever the network raises means: not at this size
        return False
    finally:
        model.train(was_training)
