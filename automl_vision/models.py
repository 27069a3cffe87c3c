"""Building and loading trained models from the run directory.

A trained model is two files: ``model.json`` (family, its parameters, input channels,
image size, classes, normalisation) and ``weights.safetensors``. Loading rebuilds the
architecture through the model family's plugin and loads the weights; no pickled object
is ever read, so opening a run directory cannot execute code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from automl_vision.plugins import PluginManager, get_plugin_manager
from automl_vision.rundir import MODEL_JSON, WEIGHTS, load_weights, read_json, save_weights, write_json
from automl_vision.types import UsageError


def build_model(spec: dict[str, Any], pm: PluginManager | None = None) -> nn.Module:
    pm = pm or get_plugin_manager()
    family = pm.model_families.get(spec["family"])
    return family.build(spec["params"], in_chans=spec["in_chans"], image_size=spec["image_size"], num_classes=spec["num_classes"])


def save_model(directory: str | Path, model: nn.Module, spec: dict[str, Any]) -> None:
    """Write ``weights.safetensors`` then ``model.json`` (the latter marks it complete)."""
    directory = Path(directory)
    digest = save_weights(directory / WEIGHTS, model.state_dict(), metadata={"family": str(spec["family"])})
    # the digest lets load_model refuse weights that were swapped or corrupted afterwards
    write_json(directory / MODEL_JSON, {**spec, "weights_sha256": digest})


def load_model(directory: str | Path, pm: PluginManager | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The model saved in ``directory`` (eval mode, on CPU) and its spec."""
    directory = Path(directory)
    spec = read_json(directory / MODEL_JSON)
    if spec is None:
        raise UsageError(f"{directory}: no model.json; this trial did not finish or the run is incomplete")
    try:
        model = build_model(spec, pm)
    except UsageError:
        raise
    except Exception as exc:
        raise UsageError(f"{directory}: cannot rebuild model family {spec.get('family')!r}: {exc}") from exc
    state = load_weights(directory / WEIGHTS, sha256=spec.get("weights_sha256"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UsageError(
            f"{directory}: weights do not match the architecture (missing {len(missing)}, unexpected "
            f"{len(unexpected)} keys); the plugin that built it may have changed version"
        )
    model.eval()
    return model, spec


def count_params(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def input_size(spec: dict[str, Any]) -> int:
    """The side images are decoded at for a model: its ``eval_size`` when ``model.json`` has one
    (training/augment.py's ``eval_size``), else the ``image_size`` it was trained at."""
    return int(spec.get("eval_size") or spec["image_size"])


def input_sizes(spec: dict[str, Any]) -> list[int]:
    """The sides whose predictions are averaged for a model: its ``eval_sizes`` when ``model.json``
    has them (training/augment.py's ``eval_sizes``), else the one side of :func:`input_size`."""
    sides = [int(s) for s in spec.get("eval_sizes") or [] if int(s) > 0]
    return sides or [input_size(spec)]


def crop_views(spec: dict[str, Any]) -> tuple[int, int, int]:
    """(crops, side, crop_side): a model whose ``model.json`` has ``eval_crops`` (training/augment.py's
    :func:`~automl_vision.training.augment.eval_crops`) also averages its predictions over that many
    crops of ``image_size`` px (the centre, then the four corners) of the image decoded at ``side``, the
    largest of :func:`input_sizes`; ``(0, 0, 0)`` for a model without them."""
    n = int(spec.get("eval_crops") or 0)
    side, crop = max(input_sizes(spec)), int(spec["image_size"])
    if n <= 0 or side <= crop:
        return 0, 0, 0
    return min(n, 5), side, crop


def crop_offsets(side: int, crop: int, n: int) -> list[tuple[int, int]]:
    """(top, left) of the ``n`` crops of :func:`crop_views`: the centre, then the four corners."""
    o = side - crop
    return [(o // 2, o // 2), (0, 0), (0, o), (o, 0), (o, o)][:n]


def sides_json(spec: dict[str, Any]) -> dict[str, Any]:
    """The side fields of a preprocessing JSON: ``image_size`` (the one side for a single input)
    and, for a model that averages over several, ``average_over_sizes``."""
    sides = input_sizes(spec)
    n, side, crop = crop_views(spec)
    return {"image_size": input_size(spec), **({"average_over_sizes": sides} if len(sides) > 1 else {}),
            **({"average_over_crops": {"crops": n, "of_size": side, "crop": crop,
                                       "top_left": [list(o) for o in crop_offsets(side, crop, n)]}} if n else {})}


def preprocessing(spec: dict[str, Any]) -> dict[str, Any]:
    """What a user needs to feed the model without automl-vision (written beside exports)."""
    return {
        **sides_json(spec),
        **({"trained_at": spec["image_size"]} if input_size(spec) != spec["image_size"] else {}),
        "in_chans": spec["in_chans"],
        "color_mode": "L" if spec["in_chans"] == 1 else "RGB",
        "resize": "square, bilinear, EXIF orientation applied",
        "scale": "pixel / 255",
        "mean": spec["mean"],
        "std": spec["std"],
        "layout": "NCHW float32",
        "classes": spec["classes"],
        "output": _output_recipe(spec, input_sizes(spec)),
    }


def _output_recipe(spec: dict[str, Any], sides: list[int]) -> str:
    t = spec.get("temperature")
    if len(sides) == 1:
        return "logits; apply softmax" + (f" with temperature {t}" if t else "")
    # what predict.ProbabilityModel computes for one network given several sides
    return ("logits at each side of average_over_sizes (each decoded from the original image): apply softmax"
            + (", average with the horizontally flipped image's" if spec.get("tta") else "")
            + ", average over the sides"
            + (" and the crops of average_over_crops (each the same way, all views weighted alike)"
               if crop_views(spec)[0] else "")
            + (f", then p -> softmax(log(p) / {t})" if t else ""))


def write_preprocessing(path: str | Path, spec: dict[str, Any]) -> None:
    write_json(path, preprocessing(spec))


