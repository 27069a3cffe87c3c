"""Built-in model family ``timm``: backbones from timm's model registry.

The default zoo (``zoo.json`` beside this module) lists backbones that train well at
small and medium resolution, with their parameter count and a relative cost measured
on CPU. Any timm model name or wildcard pattern can be searched instead with
``--models 'resnet*,efficientnet_b0'``.
"""

from __future__ import annotations

import difflib
import fnmatch
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from automl_vision.hookspecs import hookimpl
from automl_vision.types import ModelFamily, SearchContext, UsageError

ZOO_FILE = Path(__file__).with_name("zoo.json")


@lru_cache(maxsize=1)
def zoo() -> dict[str, dict[str, Any]]:
    """The curated default zoo: name -> {params_m, cost, min_size, presets}."""
    return json.loads(ZOO_FILE.read_text())


def default_models(image_size: int, preset: str = "balanced") -> list[str]:
    return [
        name
        for name, info in zoo().items()
        if image_size >= info.get("min_size", 0) and preset in info.get("presets", ["balanced", "best"])
    ]


def resolve_models(patterns: list[str], what: str = "--models") -> list[str]:
    """Expand names and wildcards against timm's registry; unknown names are a UsageError."""
    import timm

    out: list[str] = []
    for pattern in patterns:
        if any(ch in pattern for ch in "*?["):
            found = timm.list_models(pattern)
            if not found:
                zoo_hits = [n for n in zoo() if fnmatch.fnmatchcase(n, pattern)]
                raise UsageError(f"{what}: no timm model matches {pattern!r}"
                                 + (f" (curated zoo: {', '.join(zoo_hits)})" if zoo_hits else "")
                                 + "; list them with: python -c \"import timm; print(timm.list_models('PATTERN'))\"")
            out.extend(found)
        elif pattern in timm.list_models(pattern):
            out.append(pattern)
        else:
            close = difflib.get_close_matches(pattern, list(zoo()) + timm.list_models(), n=4, cutoff=0.6)
            hint = f" Did you mean {', '.join(dict.fromkeys(close))}?" if close else ""
            raise UsageError(f"{what}: unknown timm model {pattern!r}.{hint} Any name of timm.list_models() "
                             f"or a wildcard pattern such as 'resnet*' works; the curated zoo is {', '.join(zoo())}.")
    return list(dict.fromkeys(out))


def suggest(trial, ctx: SearchContext) -> dict[str, Any]:
    # The choices must not depend on the trial's image size: Optuna keeps one list of
    # choices per parameter for the whole study. The smallest searched size decides.
    smallest = int(ctx.min_image_size or ctx.image_size)
    models = ctx.models or default_models(smallest, ctx.preset)
    params: dict[str, Any] = {"timm.arch": trial.suggest_categorical("timm.arch", list(models))}
    params["timm.drop_rate"] = trial.suggest_float("timm.drop_rate", 0.0, 0.3)
    return params


def build(params: dict[str, Any], in_chans: int, image_size: int, num_classes: int, pretrained: bool = False):
    import timm

    kwargs: dict[str, Any] = {"num_classes": num_classes, "in_chans": in_chans, "drop_rate": float(params.get("timm.drop_rate", 0.0))}
    arch = params["timm.arch"]
    if any(arch.startswith(p) for p in ("vit_", "deit_", "swin")):
        kwargs["img_size"] = image_size
    return timm.create_model(arch, pretrained=pretrained, **kwargs)


def describe(params: dict[str, Any]) -> str:
    return str(params.get("timm.arch", "timm"))


def matches(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


FAMILY = ModelFamily(
    name="timm",
    suggest=suggest,
    build=build,
    describe=describe,
    description="timm backbones: a curated zoo by default, any timm name or pattern with --models",
    resolve_models=resolve_models,
    default_models=default_models,
    model_param="timm.arch",
    pretrained=True,
)


@hookimpl
def register_model_families(register):
    register(FAMILY)
