"""Starting trials from weights: timm's pretrained weights, local weight files, or the
best model of an earlier run (fine-tuning on new data).

Three options of ``automl-vision search`` lead here, one at a time:

* ``--pretrained``: timm's own loader (``timm.models.load_pretrained``) fetches the
  weights from the Hugging Face hub or its local cache. Before anything runs, the hub is
  probed; when it cannot be reached and a model's weights are not cached, the search
  stops with a message that says so and what to do instead.
* ``--weights PATH_OR_DIR``: local ``.safetensors`` files or PyTorch state dicts (read
  with ``weights_only=True``, so no pickled code runs), named after the timm model
  (``resnet18.safetensors``), or one file for the one backbone given with ``--models``.
  timm's loader adapts the first convolution to the data's channels.
* ``--init-from RUN_DIR``: the earlier run's deliverable (``best/``) fixes the model
  family and architecture of the new search; every tensor but the classifier is
  loaded, the classifier is new.

In all three the classifier head starts fresh, the stem and the first
``--freeze-stages`` stages can be frozen, and the rest of the backbone learns at
``--backbone-lr-scale`` times the head's learning rate.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from automl_vision.types import UsageError

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
DEFAULT_BACKBONE_LR_SCALE = 0.1


# ------------------------------------------------------------------ model anatomy
def head_prefixes(model: nn.Module, num_classes: int) -> list[str]:
    """Module names of the classifier (the layer that outputs the logits)."""
    names = {id(m): n for n, m in model.named_modules()}
    if hasattr(model, "get_classifier"):
        clf = model.get_classifier()
        if isinstance(clf, nn.Module) and id(clf) in names and any(True for _ in clf.parameters()):
            return [names[id(clf)]]
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and module.out_features == num_classes:
            last = name
        elif isinstance(module, nn.Conv2d) and module.out_channels == num_classes and module.kernel_size == (1, 1):
            last = name
    return [last] if last else []


def _under(name: str, prefixes: list[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def stage_modules(model: nn.Module) -> list[str]:
    """Module names of the backbone's stages, stem excluded, in forward order.

    timm models list their feature stages in ``feature_info``; when its first entry is a
    stem (named unlike the stages, e.g. ResNet's ``act1``) it is left out. Built-in custom
    CNNs list their stages the same way.
    """
    info = getattr(model, "feature_info", None)
    if info is None:
        return []
    names = [fi["module"] for fi in info] if not hasattr(info, "module_name") else list(info.module_name())
    if len(names) > 1 and re.sub(r"[\d._]+", "", names[0]) != re.sub(r"[\d._]+", "", names[1]):
        names = names[1:]
    return names


def freeze_stages(model: nn.Module, n: int) -> list[str]:
    """Freeze the stem and the first ``n`` stages (every parameter registered up to the
    end of stage ``n``); returns the frozen parameter names. BatchNorm statistics keep
    adapting to the new data."""
    if n <= 0:
        return []
    stages = stage_modules(model)
    if not stages:
        raise UsageError(f"--freeze-stages: {type(model).__name__} does not list its stages; leave --freeze-stages out")
    n = min(n, len(stages))
    last_stage = stages[n - 1]
    params = list(model.named_parameters())
    end = max((i for i, (name, _) in enumerate(params) if _under(name, [last_stage])), default=-1)
    frozen = []
    for name, p in params[: end + 1]:
        p.requires_grad_(False)
        frozen.append(name)
    return frozen


# ------------------------------------------------------------------ reading files
def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a safetensors file or a PyTorch file (``weights_only=True``)."""
    from timm.models import load_state_dict

    path = Path(path)
    try:
        state = load_state_dict(str(path), weights_only=True)
    except Exception as exc:  # the message says which file and why; no traceback for the user
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UsageError(
            f"--weights {path}: cannot read it as safetensors or a PyTorch state dict ({detail}). Pickled "
            "objects other than tensors are refused; save with torch.save(model.state_dict(), ...) or safetensors."
        ) from None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UsageError(f"--weights {path}: no tensors found (expected a state dict of a timm model)")
    return state


def weight_files(location: str | Path, timm_models: list[str]) -> dict[str, str]:
    """Map timm model names to weight files found at ``location`` (file or folder)."""
    import timm

    loc = Path(location)
    if not loc.exists():
        raise UsageError(f"--weights {loc}: no such file or folder")
    found: dict[str, str] = {}
    if loc.is_file():
        name = loc.name[: -len(next(s for s in WEIGHT_SUFFIXES if loc.name.endswith(s)))] if loc.name.endswith(WEIGHT_SUFFIXES) else loc.stem
        if name in timm.list_models(name):
            found[name] = str(loc)
        elif len(timm_models) == 1:
            found[timm_models[0]] = str(loc)
        else:
            raise UsageError(
                f"--weights {loc}: cannot tell which timm model these weights are for; name the file after the "
                "model (e.g. resnet18.safetensors) or give exactly one timm model with --models"
            )
        return found
    for entry in sorted(loc.iterdir()):
        if entry.is_file() and entry.name.endswith(WEIGHT_SUFFIXES):
            name = entry.name[: -len(next(s for s in WEIGHT_SUFFIXES if entry.name.endswith(s)))]
            if name in timm.list_models(name):
                found.setdefault(name, str(entry))
        elif entry.is_dir() and entry.name in timm.list_models(entry.name):
            for fname in ("model.safetensors", "pytorch_model.bin", "model.pth"):
                if (entry / fname).is_file():
                    found.setdefault(entry.name, str(entry / fname))
                    break
    if not found:
        raise UsageError(
            f"--weights {loc}: no weight files named after a timm model in this folder (expected e.g. "
            "resnet18.safetensors, resnet18.pth or resnet18/model.safetensors)"
        )
    return found


# ------------------------------------------------------------------ the hub
def hub_endpoint() -> str:
    try:
        from huggingface_hub import constants

        return constants.ENDPOINT
    except Exception:  # an old huggingface_hub without constants
        return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def hub_reachable(timeout: float = 5.0) -> tuple[bool, str]:
    """Whether a TCP connection to the Hugging Face hub opens; and why not."""
    url = urlparse(hub_endpoint())
    host = url.hostname or "huggingface.co"
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True, ""
    except OSError as exc:
        return False, f"{host}:{port}: {exc.strerror or exc}"


def cached(arch: str) -> bool:
    """Whether timm's default weights of ``arch`` are in the local Hugging Face cache."""
    import timm
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(arch)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not hub_id:
        return False
    for fname in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
        hit = try_to_load_from_cache(hub_id, fname)
        if isinstance(hit, str) and os.path.exists(hit):
            return True
    return False


def check_pretrained(archs: list[str]) -> str:
    """Before the search: every architecture has timm weights that can be loaded.

    Returns ``"online"`` or ``"offline"`` (every file is in the cache and the hub is out
    of reach: the cache is used without retries). Raises UsageError otherwise.
    """
    import timm

    no_weights = [a for a in archs if not getattr(timm.models.get_pretrained_cfg(a), "hf_hub_id", None)
                  and not getattr(timm.models.get_pretrained_cfg(a), "url", None)]
    if no_weights:
        raise UsageError(f"--pretrained: timm has no pretrained weights for {', '.join(no_weights)}; "
                         "choose other models with --models or leave --pretrained out")
    missing = [a for a in archs if not cached(a)]
    if not missing:
        ok, _ = hub_reachable(timeout=2.0)
        return "online" if ok else "offline"
    ok, why = hub_reachable()
    if ok:
        return "online"
    raise UsageError(
        f"--pretrained: the Hugging Face hub ({hub_endpoint()}) cannot be reached from this machine ({why}), and "
        f"timm's pretrained weights for {', '.join(missing)} are not in the local cache "
        f"({os.environ.get('HF_HUB_CACHE') or os.environ.get('HF_HOME') or '~/.cache/huggingface'}). "
        "Connect this machine to the internet (or set HF_ENDPOINT to a mirror), fill the cache on a machine that "
        "can reach the hub, or download the weights elsewhere and pass --weights DIR with files named "
        "<model>.safetensors; without weights, leave --pretrained out to train from scratch."
    )


def _go_offline() -> None:
    """Use the Hugging Face cache without trying the network (no minute of retries)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        from huggingface_hub import constants

        constants.HF_HUB_OFFLINE = True
    except Exception:
        pass


# ------------------------------------------------------------------ before the search
# ------------------------------------------------------------------ in a trial
def initialise(model: nn.Module, cfg, init: dict[str, Any], in_chans: int, num_classes: int) -> dict[str, Any]:
    """Load the starting weights into a freshly built ``model`` (classifier left new),
    freeze stages, and set the backbone's learning-rate scale on ``cfg``.

    Returns a short record for the trial's status (what was loaded, what was frozen).
    """
    mode = init["mode"]
    head = head_prefixes(model, num_classes)
    info: dict[str, Any] = {"mode": mode}
    if mode in ("pretrained", "weights"):
        if cfg.family != "timm":
            return {"mode": "scratch", "why": f"{mode} applies to timm backbones"}
        arch = cfg.model_params["timm.arch"]
        from timm.models import load_pretrained

        pcfg = dict(getattr(model, "pretrained_cfg", {}) or {})
        if mode == "weights":
            path = init["files"].get(arch)
            if path is None:
                return {"mode": "scratch", "why": f"no weight file for {arch}"}
            pcfg.update(file=path, source="", state_dict=None)
            info["file"] = path
        elif init.get("hub") == "offline":
            _go_offline()
        pcfg.setdefault("num_classes", 1000)
        # the classifier always starts fresh, also when the class counts happen to agree
        load_pretrained(model, pretrained_cfg=pcfg, num_classes=num_classes, in_chans=in_chans,
                        filter_fn=lambda sd, _m=None: {k: v for k, v in sd.items() if not _under(k.rsplit(".", 1)[0], head)},
                        strict=False)
        info["arch"] = arch
    else:
        from automl_vision.models import load_model

        source, _spec = load_model(init["source"])
        state = {k: v for k, v in source.state_dict().items() if not _under(k.rsplit(".", 1)[0], head)}
        own = model.state_dict()
        for k, v in list(state.items()):
            if k in own and own[k].ndim == 4 and v.ndim == 4 and own[k].shape[1] != v.shape[1]:
                from timm.models import adapt_input_conv

                # greyscale <-> colour first convolution, as timm adapts its pretrained stems
                state[k] = adapt_input_conv(own[k].shape[1], v, base_chans=v.shape[1])
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not _under(k.rsplit(".", 1)[0], head)]
        if missing or unexpected:
            raise RuntimeError(f"--init-from: the earlier model's weights do not fit ({len(missing)} missing, "
                               f"{len(unexpected)} unexpected tensors)")
        info["source"] = init["source"]
    frozen = freeze_stages(model, int(init.get("freeze_stages") or 0))
    info["frozen_tensors"] = len(frozen)
    cfg.backbone_lr_scale = float(init.get("backbone_lr_scale", DEFAULT_BACKBONE_LR_SCALE))
    cfg.head = head
    return info


def param_groups(model: nn.Module, cfg) -> list[dict[str, Any]]:
    """Optimizer groups: the new head at the trial's learning rate, the backbone at
    ``cfg.backbone_lr_scale`` times it; no weight decay on biases and norms (as timm)."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_head = _under(name.rsplit(".", 1)[0], cfg.head)
        decay = p.ndim > 1 and not name.endswith(".bias")
        groups.setdefault((is_head, decay), []).append(p)
    out = []
    for (is_head, decay), params in groups.items():
        out.append({
            "params": params,
            "lr": cfg.lr * (1.0 if is_head else cfg.backbone_lr_scale),
            "weight_decay": cfg.weight_decay if decay else 0.0,
        })
    return out
