"""automl-vision plugin: the ``mixer`` model family (MLP-Mixer) and the ``mcc`` and
``cohen_kappa`` metrics."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn import metrics as skm
from torch import nn

from automl_vision import hookimpl
from automl_vision.types import Metric, ModelFamily, SearchContext

__version__ = "0.1.0"


class DropPath(nn.Module):
    """Stochastic depth: drops a whole residual branch per sample while training."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.rand(x.shape[0], 1, 1, device=x.device) >= self.p
        return x * keep / (1.0 - self.p)


class MixerBlock(nn.Module):
    """Token mixing (across patches) then channel mixing, each residual with pre-norm."""

    def __init__(self, tokens: int, dim: int, token_mixing: str, token_hidden: int, channel_hidden: int, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.token_mixing = token_mixing
        if token_mixing == "mlp":
            self.tokens = nn.Sequential(nn.Linear(tokens, token_hidden), nn.GELU(), nn.Linear(token_hidden, tokens))
        else:
            # PoolFormer's token mixer: the average over all patches, minus the patch itself
            self.tokens = None
        self.norm2 = nn.LayerNorm(dim)
        self.channels = nn.Sequential(nn.Linear(dim, channel_hidden), nn.GELU(), nn.Linear(channel_hidden, dim))
        self.drop = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, tokens, dim)
        y = self.norm1(x)
        if self.tokens is not None:
            y = self.tokens(y.transpose(1, 2)).transpose(1, 2)
        else:
            y = y.mean(dim=1, keepdim=True) - y
        x = x + self.drop(y)
        return x + self.drop(self.channels(self.norm2(x)))


class Mixer(nn.Module):
    def __init__(self, in_chans: int, image_size: int, num_classes: int, patches: int, dim: int, depth: int,
                 token_mixing: str, token_ratio: float, channel_ratio: int, drop_path: float):
        super().__init__()
        patch = max(1, image_size // patches)
        side = image_size // patch
        tokens = side * side
        self.stem = nn.Conv2d(in_chans, dim, kernel_size=patch, stride=patch)
        self.blocks = nn.Sequential(*[
            MixerBlock(tokens, dim, token_mixing, max(4, int(tokens * token_ratio)), dim * channel_ratio,
                       drop_path * (i + 1) / depth)
            for i in range(depth)
        ])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x).flatten(2).transpose(1, 2)  # (N, tokens, dim)
        x = self.blocks(x)
        return self.head(self.norm(x).mean(dim=1))


def suggest(trial, ctx: SearchContext) -> dict[str, Any]:
    """The mixer's search space, define-by-run."""
    p: dict[str, Any] = {
        # patches per side, not a patch size: the same choices fit every image size
        "mixer.patches": trial.suggest_categorical("mixer.patches", [2, 4, 8]),
        "mixer.dim": trial.suggest_categorical("mixer.dim", [32, 64, 128]),
        "mixer.depth": trial.suggest_int("mixer.depth", 1, 6),
        "mixer.token_mixing": trial.suggest_categorical("mixer.token_mixing", ["mlp", "pool"]),
        "mixer.channel_ratio": trial.suggest_categorical("mixer.channel_ratio", [2, 4]),
    }
    if p["mixer.token_mixing"] == "mlp":
        p["mixer.token_ratio"] = trial.suggest_categorical("mixer.token_ratio", [0.5, 1.0, 2.0])
    if p["mixer.depth"] >= 3:
        p["mixer.drop_path"] = trial.suggest_float("mixer.drop_path", 0.0, 0.2)
    return p


def build(params: dict[str, Any], in_chans: int, image_size: int, num_classes: int) -> nn.Module:
    return Mixer(
        in_chans=in_chans,
        image_size=image_size,
        num_classes=num_classes,
        patches=int(params["mixer.patches"]),
        dim=int(params["mixer.dim"]),
        depth=int(params["mixer.depth"]),
        token_mixing=params["mixer.token_mixing"],
        token_ratio=float(params.get("mixer.token_ratio", 1.0)),
        channel_ratio=int(params["mixer.channel_ratio"]),
        drop_path=float(params.get("mixer.drop_path", 0.0)),
    )


def describe(params: dict[str, Any]) -> str:
    kind = "mixer" if params.get("mixer.token_mixing") == "mlp" else "poolmixer"
    return f"{kind} p{params.get('mixer.patches')} d{params.get('mixer.depth')} w{params.get('mixer.dim')}"


def mcc(y: np.ndarray, probs: np.ndarray) -> float:
    return float(skm.matthews_corrcoef(y, probs.argmax(axis=1)))


def cohen_kappa(y: np.ndarray, probs: np.ndarray) -> float:
    return float(skm.cohen_kappa_score(y, probs.argmax(axis=1), labels=np.arange(probs.shape[1])))


MIXER = ModelFamily(
    name="mixer",
    suggest=suggest,
    build=build,
    describe=describe,
    description="MLP-Mixer / PoolFormer-style token mixing over image patches",
)
METRICS = [
    Metric("mcc", "maximize", mcc, description="Matthews correlation coefficient (multi-class)"),
    Metric("cohen_kappa", "maximize", cohen_kappa, description="Cohen's kappa: agreement beyond chance"),
]


@hookimpl
def register_model_families(register):
    register(MIXER)


@hookimpl
def register_metrics(register):
    for metric in METRICS:
        register(metric)
