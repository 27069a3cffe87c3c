"""How the trials of a search start (``--pretrained``, ``--weights``, ``--init-from``): checked
and resolved once, before any trial, into ``settings.options.init``.

This is planning the search, so it lives with the search; the weight files, timm's hub and
the initialisation inside a trial are :mod:`automl_vision.training.pretrained`'s (training
never imports the search: issue #19).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from automl_vision.settings import SearchSettings
from automl_vision.training.pretrained import (DEFAULT_BACKBONE_LR_SCALE, _go_offline, _under, check_pretrained, head_prefixes, read_state_dict, weight_files)
from automl_vision.types import UsageError


def configure(settings: SearchSettings, pm, log=print) -> None:
    """Check the weight options and record in ``settings.options.init`` how trials
    start; ``--init-from`` also fixes the searched family and architecture.

    Idempotent: a worker re-reading the settings gets the same result.
    """
    o = settings.options
    modes = [m for m in ("pretrained", "weights", "init_from") if getattr(o, m)]
    if len(modes) > 1:
        raise UsageError("use only one of --pretrained, --weights and --init-from")
    freeze = int(o.freeze_stages or 0)
    scale = o.backbone_lr_scale
    if freeze < 0:
        raise UsageError(f"--freeze-stages {freeze}: must be 0 or more")
    if scale is not None and not (0 < float(scale) <= 1):
        raise UsageError(f"--backbone-lr-scale {scale}: must be more than 0 and at most 1")
    if not modes:
        if freeze or scale is not None:
            raise UsageError("--freeze-stages and --backbone-lr-scale need --pretrained, --weights or --init-from")
        return
    init: dict[str, Any] = {"mode": modes[0], "freeze_stages": freeze,
                            "backbone_lr_scale": float(scale) if scale is not None else DEFAULT_BACKBONE_LR_SCALE}
    if modes[0] == "init_from":
        init.update(_configure_init_from(settings, pm))
    else:
        from automl_vision.search.space import families_and_models

        # published weights come from timm's hub: the family that builds timm models (and says it
        # takes pretrained weights) is asked for its model names, through its ModelFamily fields
        timm_family = pm.model_families.get("timm") if "timm" in pm.model_families else None
        if timm_family is None or not timm_family.pretrained:
            raise UsageError(f"--{modes[0].replace('_', '-')}: the timm family is not loaded")
        families, named = families_and_models(settings, pm)
        timm_models = named.get("timm", [])
        if modes[0] == "weights":
            files = weight_files(o.weights, timm_models)
            for arch, path in files.items():
                _check_fits(arch, read_state_dict(path), path)
            init["files"] = files
            if not settings.models:
                settings.models = list(files)  # the backbones the user brought weights for
                log(f"--weights: searching {', '.join(files)} (the models with weight files)")
        else:
            if not settings.models:
                # families without published weights (the custom CNN) would train from scratch
                settings.models = [f.name for f in pm.model_families.values() if f.pretrained]
            _, named = families_and_models(settings, pm)
            archs = named.get("timm") or (timm_family.default_models(min(settings.image_sizes or [64]), settings.preset)
                                          if timm_family.default_models else [])
            param = timm_family.model_param
            if param and param in (o.space or {}) and timm_family.resolve_models:
                raw = o.space[param]
                archs = timm_family.resolve_models([str(a) for a in (raw if isinstance(raw, list) else [raw])],
                                                   f"space: {param}")
            init["hub"] = check_pretrained(archs)
            scratch = [f for f in families if not pm.model_families.get(f).pretrained]
            if scratch:
                log(f"--pretrained: {', '.join(scratch)} trials train from scratch (no published weights); timm "
                    "backbones start from timm's weights")
    if init.get("hub") == "offline" or (o.init or {}).get("hub") == "offline":
        _go_offline()
    o.init = init


def _check_fits(arch: str, state: dict[str, torch.Tensor], path: str) -> None:
    import timm

    model = timm.create_model(arch, num_classes=2)
    own = model.state_dict()
    head = head_prefixes(model, 2)
    body = [k for k in own if not _under(k.rsplit(".", 1)[0], head)]
    matched = [k for k in body if k in state]
    if len(matched) < 0.9 * len(body):
        raise UsageError(
            f"--weights {path}: these weights do not fit timm's {arch} ({len(matched)} of {len(body)} tensors "
            "have matching names); name the file after the model the weights were saved from"
        )


def _configure_init_from(settings: SearchSettings, pm) -> dict[str, Any]:
    from automl_vision.rundir import BEST, MODEL_JSON, read_json

    src = Path(settings.options.init_from or "")
    candidates = [src / BEST, src]
    model_dir = next((c for c in candidates if (c / MODEL_JSON).is_file()), None)
    if model_dir is None:
        raise UsageError(f"--init-from {src}: no best/model.json; give the run directory of a finished search")
    spec = read_json(model_dir / MODEL_JSON)
    family = spec.get("family")
    if family not in pm.model_families:
        raise UsageError(f"--init-from {src}: its model family {family!r} is not loaded; load the plugin with --plugin")
    # the new search trains the same architecture: fix the family and its parameters
    space = dict(settings.options.space or {})
    space["family"] = [family]
    for name, value in (spec.get("params") or {}).items():
        space[name] = [value] if isinstance(value, (str, bool)) or name == "timm.arch" else value
    if not settings.image_sizes:
        settings.image_sizes = [int(spec["image_size"])]
    settings.options.space = space
    settings.models = [family] if family != "timm" else [spec["params"]["timm.arch"]]
    return {"source": str(model_dir.resolve()), "source_classes": spec.get("classes"), "family": family}
