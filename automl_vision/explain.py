"""Grad-CAM saliency: which pixels drove a trained model's decision.

Grad-CAM (Selvaraju et al., 2017) weights the feature maps of a late convolutional
layer by the gradient of the class score with respect to them, averaged over space,
keeps the positive part and upsamples it to the input. The layer is found
automatically (:func:`find_target_layer`): the last module, in execution order, whose
output is a spatial grid over the image, a 4-D activation ``(N, C, h, w)`` whose two
sides shrink the input's by the same factor, at least :data:`MIN_GRID` positions a
side. That is the last convolutional stage of the custom CNNs and of timm's
convolutional backbones, just before global pooling; when that stage is coarser (a
2x2 grid at 64 px), the stage before it is used and the result says so. A 4-D tensor
that is not such a grid (a vision transformer's attention heads x tokens) is never
used, and a model whose only grid is its input embedding (a transformer's patch
embedding) is refused with a clear message.

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


# the fewest positions a side of the explained activation should have: a 2x2 map upsampled over
# the image is a flat tint (resnet10t's last stage at 64 px), not a localisation
MIN_GRID = 3
# a grid found only in the first part of the network (by execution order) is the input embedding
# of a transformer, not a late convolutional stage: its map says little about the decision
LATE_SHARE = 0.5


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
        note: why that layer rather than the last spatial one, when it is not ("" otherwise).
        empty: no position raised the target's score (the map is all zero): the model sees
            no positive evidence for that class in the image.
    """

    cam: np.ndarray
    target: int
    probs: np.ndarray
    layer: str
    grid: tuple[int, int]
    note: str = ""
    empty: bool = False


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


def _is_image_grid(shape: tuple[int, int], size: tuple[int, int]) -> bool:
    """Whether an activation's ``(h, w)`` is a grid over an input of ``size``: both sides
    shrunk by about the same factor (a transformer's heads x tokens is not)."""
    (h, w), (height, width) = shape, size
    if h * w <= 1 or h > height or w > width:
        return False
    fh, fw = height / h, width / w
    return abs(fh - fw) <= 0.25 * max(fh, fw)


def find_target_layer(model: nn.Module, x: torch.Tensor) -> tuple[str, tuple[int, int], str]:
    """(name, grid, note) of the layer to explain: the last module whose output is a grid
    over the image with at least :data:`MIN_GRID` positions a side (or, when there is none,
    the finest grid there is), late enough in the network to be more than its input
    embedding. ``note`` says when that is not simply the last grid.

    Raises:
        ExplainError: the model has no such layer.
    """
    order: list[str] = []
    grids: list[tuple[int, str, tuple[int, int]]] = []
    hooks = []
    size = (int(x.shape[-2]), int(x.shape[-1]))
    for name, module in model.named_modules():
        if not name:
            continue

        def hook(mod, inputs, output, name=name):
            order.append(name)
            if isinstance(output, torch.Tensor) and output.dim() == 4:
                grid = (int(output.shape[-2]), int(output.shape[-1]))
                if _is_image_grid(grid, size):
                    grids.append((len(order), name, grid))

        hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    if not grids:
        raise ExplainError(
            "the model has no activation that is a spatial grid over the image (N, C, h, w), so Grad-CAM has "
            "nothing to localise; this happens with non-convolutional models or inputs so small that every "
            "feature map is 1x1"
        )
    late = [g for g in grids if g[0] > LATE_SHARE * len(order)]
    if not late:
        raise ExplainError(
            f"the only spatial grid of this model is early in the network ({grids[-1][1]}, "
            f"{grids[-1][2][0]}x{grids[-1][2][1]}), e.g. a vision transformer's patch embedding: its later layers "
            "work on tokens, so Grad-CAM on a convolutional stage cannot show what drove the decision"
        )
    last = late[-1]
    fine = [g for g in late if min(g[2]) >= MIN_GRID]
    if fine and fine[-1] is not last:
        chosen = fine[-1]
        note = (f"the last stage ({last[1]}) is a {last[2][0]}x{last[2][1]} grid, too coarse to localise anything; "
                f"the stage before it ({chosen[1]}, {chosen[2][0]}x{chosen[2][1]}) is explained instead")
        return chosen[1], chosen[2], note
    note = "" if min(last[2]) >= MIN_GRID else (
        f"the finest late grid of this model at {size[0]}x{size[1]} px is {last[2][0]}x{last[2][1]}: the map is coarse")
    return last[1], last[2], note


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
    note = ""
    if layer is None:
        layer, _grid, note = find_target_layer(model, x)
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
                    grid=tuple(act.shape[-2:]), note=note, empty=top <= 0)


def colour_bar(width: int = 256, height: int = 12) -> np.ndarray:
    """The overlay's colour scale as an RGB ``uint8`` strip, lowest contribution on the left."""
    lut = _turbo_lut()[np.linspace(0, 255, width).astype(int)]
    return np.repeat(lut[None, :, :], height, axis=0)


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
