"""Built-in model family ``cnn``: a searchable custom convolutional network.

The space is define-by-run: block type, stages, blocks per stage, base width, kernel
size, normalisation, activation, dropout and pooling; parameters that only make sense
for one choice (e.g. the group count of group norm) exist only where they apply. The
number of stages is capped by the image size so that the last feature map keeps at
least 2x2 pixels.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from automl_vision.hookspecs import hookimpl
from automl_vision.types import ModelFamily, SearchContext

ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU, "gelu": nn.GELU}


def _norm(kind: str, ch: int, groups: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(ch)
    g = math.gcd(ch, groups)
    return nn.GroupNorm(g, ch)


class ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, kernel: int, norm: str, groups: int, act: str, residual: bool):
        super().__init__()
        pad = kernel // 2
        self.conv1 = nn.Conv2d(cin, cout, kernel, stride, pad, bias=False)
        self.n1 = _norm(norm, cout, groups)
        self.a1 = ACTIVATIONS[act]()
        self.residual = residual
        if residual:
            self.conv2 = nn.Conv2d(cout, cout, kernel, 1, pad, bias=False)
            self.n2 = _norm(norm, cout, groups)
            self.a2 = ACTIVATIONS[act]()
            self.shortcut: nn.Module = nn.Identity()
            if stride != 1 or cin != cout:
                self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _norm(norm, cout, groups))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a1(self.n1(self.conv1(x)))
        if self.residual:
            y = self.a2(self.n2(self.conv2(y)) + self.shortcut(x))
        return y


class CustomCNN(nn.Module):
    def __init__(self, in_chans: int, num_classes: int, stages: int, blocks: int, width: int, kernel: int,
                 block: str, norm: str, groups: int, act: str, dropout: float, pool: str, stem_stride: int = 1,
                 down: str = "stride"):
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_chans, width, 3, stem_stride, 1, bias=False),
            _norm(norm, width, groups),
            ACTIVATIONS[act](),
        ]
        cin = width
        # like timm's feature_info: where each stage ends (used by --freeze-stages)
        self.feature_info: list[dict[str, Any]] = []
        for s in range(stages):
            cout = min(width * 2**s, 512)
            for b in range(blocks):
                # downsampling: the first block of each later stage has stride 2, or ("maxpool") every stage
                # ends with a 2x2 max-pool, as in the classic plain CNN
                stride = 2 if (b == 0 and s > 0 and down == "stride") else 1
                layers.append(ConvBlock(cin, cout, stride, kernel, norm, groups, act, block == "residual"))
                cin = cout
            self.feature_info.append({"module": f"features.{len(layers) - 1}", "num_chs": cout, "reduction": stem_stride * 2**s})
            if down == "maxpool":
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.pool = pool
        feat = cin * (2 if pool == "avgmax" else 1)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(feat, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        if self.pool == "avgmax":
            x = torch.cat([x.mean((2, 3)), x.amax((2, 3))], dim=1)
        else:
            x = x.mean((2, 3))
        return self.head(x)


def max_stages(image_size: int, stem_stride: int = 1) -> int:
    return max(1, min(5, int(math.log2(max(image_size // stem_stride, 4) / 2))))


# from this input size on, a stride-2 stem is searched: the first stage at full
# resolution costs as much as all later stages together, and on a CPU that decides
# how many epochs fit in the budget
STEM_STRIDE_MIN_SIZE = 48
# how a stage halves the resolution: a stride-2 first convolution, or a 2x2 max-pool after the stage.
# Measured on cats-vs-dogs photos at 64 px, 60 epochs on 1,428 images, crop + flip: the max-pool CNN of a
# hand-written loop reached 0.83 on the evaluation folder where the strided one reached 0.80
DOWNSAMPLING = ("stride", "maxpool")


def suggest(trial, ctx: SearchContext) -> dict[str, Any]:
    top = max_stages(ctx.image_size)
    p: dict[str, Any] = {
        "cnn.block": trial.suggest_categorical("cnn.block", ["plain", "residual"]),
        "cnn.stages": trial.suggest_int("cnn.stages", min(2, top), top),
        "cnn.blocks": trial.suggest_int("cnn.blocks", 1, 2),
        "cnn.width": trial.suggest_categorical("cnn.width", [16, 24, 32, 48, 64]),
        "cnn.kernel": trial.suggest_categorical("cnn.kernel", [3, 5]),
        "cnn.norm": trial.suggest_categorical("cnn.norm", ["batch", "group"]),
        "cnn.act": trial.suggest_categorical("cnn.act", ["relu", "silu", "gelu"]),
        "cnn.dropout": trial.suggest_float("cnn.dropout", 0.0, 0.4),
        "cnn.pool": trial.suggest_categorical("cnn.pool", ["avg", "avgmax"]),
        "cnn.down": trial.suggest_categorical("cnn.down", list(DOWNSAMPLING)),
    }
    if p["cnn.norm"] == "group":
        p["cnn.groups"] = trial.suggest_categorical("cnn.groups", [4, 8, 16])
    if ctx.image_size >= STEM_STRIDE_MIN_SIZE:
        p["cnn.stem_stride"] = trial.suggest_categorical("cnn.stem_stride", [1, 2])
    return p


def build(params: dict[str, Any], in_chans: int, image_size: int, num_classes: int) -> nn.Module:
    return CustomCNN(
        in_chans=in_chans,
        num_classes=num_classes,
        stages=min(int(params["cnn.stages"]), max_stages(image_size, int(params.get("cnn.stem_stride", 1)))),
        blocks=int(params["cnn.blocks"]),
        width=int(params["cnn.width"]),
        kernel=int(params["cnn.kernel"]),
        block=params["cnn.block"],
        norm=params["cnn.norm"],
        groups=int(params.get("cnn.groups", 8)),
        act=params["cnn.act"],
        dropout=float(params["cnn.dropout"]),
        pool=params["cnn.pool"],
        stem_stride=int(params.get("cnn.stem_stride", 1)),
        down=params.get("cnn.down", "stride"),  # trials of earlier versions had no choice: stride
    )


def describe(params: dict[str, Any]) -> str:
    kind = "res" if params.get("cnn.block") == "residual" else "plain"
    stem = "/2" if int(params.get("cnn.stem_stride", 1)) == 2 else ""
    pool = " maxpool" if params.get("cnn.down") == "maxpool" else ""
    return f"cnn-{kind} s{params.get('cnn.stages')}x{params.get('cnn.blocks')} w{params.get('cnn.width')}{stem}{pool}"


FAMILY = ModelFamily(
    name="cnn",
    suggest=suggest,
    build=build,
    describe=describe,
    description="searchable custom CNN (plain or residual blocks, stages, width, kernel, norm, activation)",
    param_values={"cnn.block": ["plain", "residual"], "cnn.norm": ["batch", "group"], "cnn.act": list(ACTIVATIONS),
                  "cnn.pool": ["avg", "avgmax"], "cnn.down": list(DOWNSAMPLING)},
)


@hookimpl
def register_model_families(register):
    register(FAMILY)
