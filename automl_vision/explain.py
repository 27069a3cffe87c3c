"""Grad-CAM saliency: which pixels drove a trained model's decision.

Grad-CAM (Selvaraju et al., 2017) weights the feature maps of a late convolutional
layer by the gradient of the class score with respect to them, averaged over space,
keeps the positive part and upsamples it to the input. The layer is found
automatically: the last module, in execution order, whose output is a 4-D activation
``(N, C, H, W)`` with more than one spatial position. That is the last convolutional
stage of the custom CNNs and of timm's convolutional backbones, just before global
pooling; a model that has no such activation is refused with a clear message.

The gradients are real: the model runs forward and backward once, on CPU by default.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class ExplainError(Exception):
    """The model cannot be explained with Grad-CAM (no spatial activation found)."""


@dataclass
class Saliency:
    """The result of :func:`grad_cam`.

    Attributes:
        cam: ``(H, W)`` float32 map in ``[0, 1]`` at the input resolution; 1 marks the
            pixels that raised the target class score most.
        target: the class index that was explained.
        probs: the model's softmax probabilities for the image.
        layer: the name of the module whose activation was used.
        grid: the spatial size ``(h, w)`` of that activation, i.e. the map's real resolution.
    """

    cam: np.ndarray
    target: int
    probs: np.ndarray
    layer: str
    grid: tuple[int, int]


def to_input(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """A ``uint8`` ``(H, W, C)`` image as the normalised ``(1, C, H, W)`` float tensor models expect.

    The same preprocessing as training and ``predict``: pixel / 255, then per-channel
    mean and standard deviation from the trial's ``model.json``.
    """
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    # a copy: the cache hands out read-only memory maps, which torch cannot wrap
    x = torch.from_numpy(np.array(arr, dtype=np.float32)).div_(255.0).permute(2, 0, 1).unsqueeze(0)
    m = torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1)
    return (x - m) / s


def find_target_layer(model: nn.Module, x: torch.Tensor) -> tuple[str, tuple[int, int]]:
    """The name and spatial size of the last module producing a spatial 4-D activation."""
    seen: list[tuple[str, tuple[int, int]]] = []
    hooks = []
    for name, module in model.named_modules():
        if not name:
            continue

        def hook(mod, inputs, output, name=name):
            if isinstance(output, torch.Tensor) and output.dim() == 4:
                h, w = output.shape[-2:]
                if h * w > 1:
                    seen.append((name, (int(h), int(w))))

        hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    if not seen:
        raise ExplainError(
            "the model has no spatial 4-D activation (N, C, H, W with H*W > 1), so Grad-CAM has nothing to "
            "localise; this happens with non-convolutional models or inputs so small that every feature map is 1x1"
        )
    return seen[-1]


def grad_cam(model: nn.Module, x: torch.Tensor, target: int | None = None, layer: str | None = None) -> Saliency:
    """Grad-CAM of ``model`` for one input.

    Args:
        model: a classifier returning logits ``(1, num_classes)``; it is put in eval mode.
        x: the normalised input ``(1, C, H, W)`` (see :func:`to_input`).
        target: the class to explain; default the predicted class.
        layer: a module name from ``model.named_modules()``; default found by
            :func:`find_target_layer`.

    Returns:
        The saliency map and what it explains.

    Raises:
        ExplainError: no usable activation, or ``layer`` names no module.
    """
    model.eval()
    x = x.detach().to(next(model.parameters()).device, dtype=next(model.parameters()).dtype)
    if x.dim() != 4 or x.shape[0] != 1:
        raise ExplainError(f"expected one image as a (1, C, H, W) tensor, got shape {tuple(x.shape)}")
    if layer is None:
        layer, grid = find_target_layer(model, x)
    modules = dict(model.named_modules())
    if layer not in modules:
        raise ExplainError(f"no module named {layer!r} in the model")
    captured: dict[str, torch.Tensor] = {}

    def keep(mod, inputs, output):
        captured["act"] = output

    handle = modules[layer].register_forward_hook(keep)
    try:
        with torch.enable_grad():
            logits = model(x)
            probs = torch.softmax(logits.detach().float(), dim=1)[0].cpu().numpy()
            if target is None:
                target = int(probs.argmax())
            if not 0 <= target < logits.shape[1]:
                raise ExplainError(f"class index {target} is out of range (the model has {logits.shape[1]} classes)")
            act = captured.get("act")
            if act is None or not isinstance(act, torch.Tensor) or act.dim() != 4:
                raise ExplainError(f"module {layer!r} did not produce a 4-D activation")
            (grads,) = torch.autograd.grad(logits[0, target], act)
    finally:
        handle.remove()
    weights = grads.float().mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * act.detach().float()).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)[0, 0]
    top = float(cam.max())
    # an all-zero map means no location raised the score; keep it zero rather than amplifying noise
    cam = cam / top if top > 0 else torch.zeros_like(cam)
    return Saliency(cam=cam.cpu().numpy().astype(np.float32), target=int(target), probs=probs, layer=layer,
                    grid=tuple(act.shape[-2:]))


@lru_cache(maxsize=1)
def _turbo_lut() -> np.ndarray:
    """Plotly's Turbo colour scale sampled at 256 levels, as a ``(256, 3)`` uint8 table."""
    from plotly.colors import sample_colorscale, unlabel_rgb

    colours = sample_colorscale("Turbo", list(np.linspace(0.0, 1.0, 256)))
    return np.asarray([[round(c) for c in unlabel_rgb(rgb)] for rgb in colours], dtype=np.uint8)


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.45, scale: int = 1) -> np.ndarray:
    """Blend a saliency map over an image, as RGB ``uint8``.

    Args:
        image: ``(H, W)`` or ``(H, W, C)`` uint8 with C = 1 or 3.
        cam: ``(H, W)`` map in ``[0, 1]``.
        alpha: weight of the colour map.
        scale: integer upscaling (nearest neighbour) so that small images stay visible.
    """
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    heat = _turbo_lut()[np.clip(np.rint(np.asarray(cam) * 255.0), 0, 255).astype(np.uint8)]
    out = (1.0 - alpha) * img.astype(np.float32) + alpha * heat.astype(np.float32)
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    if scale > 1:
        out = out.repeat(scale, axis=0).repeat(scale, axis=1)
    return out
