"""Search space files: ``--space space.yaml`` restricts or extends any parameter.

A space file is a YAML mapping from parameter names (the names in ``automl-vision space
show`` and in the leaderboard's ``param_*`` columns) to what the search may use::

    optimizer: [adamw, sgd]          # choices: a subset, or more (lamb)
    batch_size: [64]                 # one choice
    ema: false                       # a fixed value
    weight_decay: {low: 1.0e-4, high: 0.05, log: true}   # a numeric range
    lr:
      adamw: {low: 1.0e-4, high: 3.0e-3}   # nesting is the same as "lr.adamw"
    aug:
      preset: [light, medium, custom]
    timm:
      arch: ["resnet*", efficientnet_b0]   # timm names and wildcards
    cnn:
      stages: {low: 2, high: 3}

Every key and value is checked against the effective space before the search starts;
a wrong one is a :class:`~automl_vision.types.UsageError` that names the file and the
path of the key (``space.yaml: lr.adamw.hgih: unknown key ...``).
"""

from __future__ import annotations

import difflib
import math
from typing import Any

from automl_vision.plugins import PluginManager
from automl_vision.settings import SearchSettings
from automl_vision.search.space_yaml import RANGE_KEYS, load  # noqa: F401  (load: the space file's reader)
from automl_vision.types import UsageError


def _universes(pm: PluginManager) -> dict[str, list[Any]]:
    from automl_vision.search.space import LR_RANGES, SCHEDULES
    from automl_vision.training.augment import PRESETS as AUG_PRESETS

    # Closed sets of values for the categorical parameters: the core's, and those each family
    # declares (ModelFamily.param_values). A parameter not listed accepts values of the type
    # of its default choices.
    universes: dict[str, list[Any]] = {
        "family": list(pm.model_families),
        "optimizer": list(LR_RANGES),
        "schedule": list(SCHEDULES),
        "aug.preset": [*AUG_PRESETS, "custom"],
        "aug.auto": ["none", "trivial", "rand"],
        "aug.mix": ["none", "mixup", "cutmix", "both"],
    }
    for family in pm.model_families.values():
        universes.update({name: list(values) for name, values in family.param_values.items()})
    return universes


# Sensible bounds for numeric values, so that a typo (lr 3 instead of 3e-3) is caught.
LIMITS: dict[str, tuple[float, float]] = {
    "image_size": (8, 1024),
    "batch_size": (2, 4096),
    "weight_decay": (0.0, 1.0),
    "warmup": (0.0, 0.5),
    "grad_clip": (0.0, 1000.0),
    "label_smoothing": (0.0, 0.5),
    "timm.drop_rate": (0.0, 0.9),
    "cnn.dropout": (0.0, 0.9),
    "cnn.stages": (1, 5),
    "cnn.blocks": (1, 8),
    "cnn.width": (4, 512),
    "cnn.kernel": (1, 9),
    "cnn.groups": (1, 64),
    "aug.crop_scale": (0.05, 1.0),
    "aug.rotate": (0.0, 180.0),
    "aug.translate": (0.0, 0.5),
    "aug.color": (0.0, 1.0),
    "aug.auto_magnitude": (0, 30),
    "aug.mixup_alpha": (0.01, 10.0),
    "aug.cutmix_alpha": (0.01, 10.0),
    "aug.erase": (0.0, 1.0),
}
LR_LIMITS = (1e-7, 10.0)


def validate(overrides: dict[str, Any], settings: SearchSettings, pm: PluginManager, where: str = "space") -> dict[str, Any]:
    """Check every key and value of a flattened space file against the space.

    Returns the normalised overrides (timm wildcards expanded, numbers typed, ranges as
    ``{"low", "high", "log"[, "step"]}``), ready for :class:`~automl_vision.search.space.SpaceTrial`.

    Raises:
        UsageError: naming ``where`` and the key's path, for an unknown parameter or a
            value the parameter cannot take.
    """
    known = _known_params(settings, pm)
    universes = _universes(pm)
    out: dict[str, Any] = {}
    for name, value in overrides.items():
        if name not in known:
            # a range given for a parent key ("lr: {low: ..}") is a common mistake
            children = sorted(k for k in known if k.startswith(name + "."))
            if children:
                raise UsageError(f"{where}: {name}: is a group, not a parameter; set one of {', '.join(children)}")
            close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.6)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise UsageError(f"{where}: {name}: unknown parameter.{hint} See 'automl-vision space show' for the names.")
        param = known[name]
        key = f"{where}: {name}"
        if param.kind == "categorical":
            out[name] = _categorical(key, name, value, param, universes.get(name), pm)
        else:
            out[name] = _numeric(key, name, value, param)
    return out


def _known_params(settings: SearchSettings, pm: PluginManager):
    """Every parameter any configuration could have: all families, optimizers, presets."""
    from automl_vision.search import space
    from automl_vision.training.augment import PRESETS as AUG_PRESETS

    permissive = {
        "optimizer": list(space.LR_RANGES),
        "aug.preset": [*AUG_PRESETS, "custom"],
        "schedule": list(space.SCHEDULES),
        "family": list(pm.model_families),
    }
    probe = SearchSettings.from_dict({**settings.as_dict(), "models": [], "image_sizes": settings.image_sizes or [64],
                                      "options": {**settings.options.as_dict(), "space": permissive}})
    return space.explore(probe, pm, families=list(pm.model_families), named={})


def _typed(key: str, value: Any, like: list[Any], name: str) -> Any:
    """``value`` converted to the type of the default choices ``like``."""
    if all(isinstance(c, bool) for c in like):
        if not isinstance(value, bool):
            raise UsageError(f"{key}: {value!r} is not true or false")
        return value
    if all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in like):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UsageError(f"{key}: {value!r} is not a number")
        if all(isinstance(c, int) for c in like):
            if int(value) != value:
                raise UsageError(f"{key}: {value!r} is not a whole number")
            value = int(value)
        else:
            value = float(value)
        lo, hi = LIMITS.get(name, (-math.inf, math.inf))
        if not lo <= value <= hi:
            raise UsageError(f"{key}: {value!r} is outside the sensible range {lo:g} .. {hi:g}")
        return value
    if not isinstance(value, str):
        raise UsageError(f"{key}: {value!r} is not a name")
    return value


def _categorical(key: str, name: str, value: Any, param, universe: list[Any] | None, pm: PluginManager) -> list[Any]:
    if isinstance(value, dict):
        raise UsageError(f"{key}: a choice parameter takes a list of choices or one value "
                         f"(e.g. [{', '.join(map(_show, param.choices[:2]))}]), not a range")
    values = value if isinstance(value, list) else [value]
    if not values:
        raise UsageError(f"{key}: empty list; give at least one choice")
    owner = next((f for f in pm.model_families.values() if f.model_param == name and f.resolve_models), None)
    if owner is not None:  # a family's model names (timm.arch): the family resolves them
        if not all(isinstance(v, str) for v in values):
            raise UsageError(f"{key}: {owner.name} models are names or patterns like 'resnet*'")
        return owner.resolve_models(values, key)
    out = []
    for i, v in enumerate(values):
        where = f"{key}[{i}]" if isinstance(value, list) else key
        v = _typed(where, v, param.choices, name)
        if universe is not None and v not in universe:
            close = difflib.get_close_matches(str(v), [str(u) for u in universe], n=2, cutoff=0.5)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise UsageError(f"{where}: {_show(v)} is not a possible value.{hint} Possible: {', '.join(map(_show, universe))}.")
        if name == "cnn.kernel" and v % 2 == 0:
            raise UsageError(f"{where}: kernel size {v} must be odd")
        if v not in out:
            out.append(v)
    return out


def _numeric(key: str, name: str, value: Any, param) -> Any:
    is_int = param.kind == "int"
    limits = LR_LIMITS if name.startswith("lr.") else LIMITS.get(name, (-math.inf, math.inf))

    def number(k: str, v: Any) -> float | int:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise UsageError(f"{k}: {v!r} is not a number")
        if is_int and int(v) != v:
            raise UsageError(f"{k}: {v!r} is not a whole number")
        v = int(v) if is_int else float(v)
        if not limits[0] <= v <= limits[1]:
            raise UsageError(f"{k}: {v!r} is outside the sensible range {limits[0]:g} .. {limits[1]:g}")
        return v

    if isinstance(value, list):
        if not value:
            raise UsageError(f"{key}: empty list; give at least one value")
        return list(dict.fromkeys(number(f"{key}[{i}]", v) for i, v in enumerate(value)))
    if not isinstance(value, dict):
        return number(key, value)
    for k in value:
        if k not in RANGE_KEYS:
            close = difflib.get_close_matches(str(k), RANGE_KEYS, n=1, cutoff=0.4)
            hint = f" Did you mean {close[0]}?" if close else ""
            raise UsageError(f"{key}.{k}: unknown key.{hint} A range takes low, high, log and step.")
    low = number(f"{key}.low", value.get("low", param.low))
    high = number(f"{key}.high", value.get("high", param.high))
    if low > high:
        raise UsageError(f"{key}: low ({low:g}) is greater than high ({high:g})")
    log = value.get("log", param.log)
    if not isinstance(log, bool):
        raise UsageError(f"{key}.log: {log!r} is not true or false")
    if log and low <= 0:
        raise UsageError(f"{key}: a log range needs low > 0, got {low:g}")
    out: dict[str, Any] = {"low": low, "high": high, "log": log}
    if "step" in value:
        step = value["step"]
        if isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0 or (is_int and int(step) != step):
            raise UsageError(f"{key}.step: {step!r} is not a positive {'whole ' if is_int else ''}number")
        if log:
            raise UsageError(f"{key}: step cannot be combined with log: true")
        out["step"] = int(step) if is_int else float(step)
    return out


def _show(v: Any) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def apply(settings: SearchSettings, pm: PluginManager) -> None:
    """Validate ``settings.options.space`` in place; an ``image_size`` entry sets the
    searched resolutions (unless ``--image-size`` was given)."""
    raw = settings.options.space
    if not raw:
        return
    where = settings.options.space_file or "space"
    normalised = validate(raw, settings, pm, where)
    settings.options.space = normalised
    if "image_size" in normalised:
        sizes = normalised["image_size"]
        if settings.image_sizes and not set(sizes) <= set(settings.image_sizes) and settings.options.image_size_given:
            raise UsageError(f"{where}: image_size {sizes} conflicts with --image-size {settings.image_sizes}")
        settings.image_sizes = list(sizes)
