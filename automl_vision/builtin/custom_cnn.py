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


def morlet(size: int, sigma: float, theta: float, xi: float, slant: float) -> torch.Tensor:
    """A complex Morlet wavelet on a ``size`` x ``size`` grid centred on the middle pixel: a Gabor
    filter (an oriented wave of frequency ``xi`` under an elliptic Gaussian) minus the multiple of its
    envelope that makes its mean zero, as in the scattering transform (Bruna and Mallat, 2013; the
    parameters are kymatio's for 8 orientations). Written out here because it is a dozen lines and
    kymatio's package, which has it, cannot be imported with current SciPy."""
    r = torch.arange(size, dtype=torch.float64) - size // 2
    y, x = torch.meshgrid(r, r, indexing="ij")
    xr = x * math.cos(theta) + y * math.sin(theta)
    yr = -x * math.sin(theta) + y * math.cos(theta)
    envelope = torch.exp(-(xr**2 + slant**2 * yr**2) / (2 * sigma**2))
    wave = torch.exp(1j * xi * xr)
    psi = envelope * wave
    psi = psi - envelope * (psi.sum() / envelope.sum())
    return psi / envelope.sum()


class ScatterStem(nn.Module):
    """A fixed first layer: the first-order scattering transform at scale 1 (J=1), per colour channel.

    Each colour is filtered by 8 oriented Morlet wavelets and the modulus taken, beside the colour
    low-passed by a Gaussian: 9 maps a colour at half the side, as the stride-2 stem's. Nothing in it
    is learnt (Oyallon et al., "Scattering networks for hybrid representation learning", 2018: with
    few images a network learns its later layers better from a fixed wavelet front than from a learnt
    first layer). The wavelet responses are computed at every second pixel only: their modulus varies
    slowly (it is the envelope of an oriented wave), so this is the transform's subsampling at a quarter
    of the cost. Plain convolutions, so it exports to ONNX and TorchScript."""

    def __init__(self, in_chans: int, orientations: int = 8, sigma: float = 0.8, size: int = 9):
        super().__init__()
        xi, slant = 3 * math.pi / 4, 4 / orientations
        psi = [morlet(size, sigma, (orientations // 2 - 1 - t) * math.pi / orientations, xi, slant)
               for t in range(orientations)]
        r = torch.arange(size, dtype=torch.float64) - size // 2
        g = torch.exp(-(r**2) / (2 * sigma**2))
        phi = g[:, None] * g[None, :] / g.sum() ** 2
        # one group a colour: the low-pass, then each wavelet's real and imaginary part
        bank = torch.stack([phi] + [part for p in psi for part in (p.real, p.imag)]).unsqueeze(1)
        self.register_buffer("bank", bank.repeat(in_chans, 1, 1, 1).float())
        self.orientations, self.pad = orientations, size // 2
        self.out_chans = in_chans * (1 + orientations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        z = nn.functional.conv2d(x, self.bank.to(x.dtype), stride=2, padding=self.pad, groups=c)
        z = z.reshape(b, c, 1 + 2 * self.orientations, *z.shape[2:])
        low = z[:, :, 0]
        u = torch.sqrt(z[:, :, 1::2] ** 2 + z[:, :, 2::2] ** 2 + 1e-6).flatten(1, 2)
        return torch.cat([low, u], dim=1)


class CustomCNN(nn.Module):
    def __init__(self, in_chans: int, num_classes: int, stages: int, blocks: int, width: int, kernel: int,
                 block: str, norm: str, groups: int, act: str, dropout: float, pool: str, stem_stride: int = 1,
                 down: str = "stride", stem: str = "conv"):
        super().__init__()
        layers: list[nn.Module]
        if stem == "scatter":  # a fixed stride-2 front (stem_stride is 2 wherever it is searched)
            scatter = ScatterStem(in_chans)
            layers = [scatter, nn.BatchNorm2d(scatter.out_chans)]
            cin = scatter.out_chans
        else:
            layers = [nn.Conv2d(in_chans, width, 3, stem_stride, 1, bias=False), _norm(norm, width, groups),
                      ACTIVATIONS[act]()]
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
# the stride-2 stem: a learnt 3x3 convolution, or a fixed wavelet front (ScatterStem)
STEMS = ("conv", "scatter")


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
        if p["cnn.stem_stride"] == 2:
            p["cnn.stem"] = trial.suggest_categorical("cnn.stem", list(STEMS))
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
        stem=params.get("cnn.stem", "conv"),
    )


def describe(params: dict[str, Any]) -> str:
    kind = "res" if params.get("cnn.block") == "residual" else "plain"
    stem = "/2" if int(params.get("cnn.stem_stride", 1)) == 2 else ""
    if params.get("cnn.stem") == "scatter":
        stem = " scatter/2"
    pool = " maxpool" if params.get("cnn.down") == "maxpool" else ""
    return f"cnn-{kind} s{params.get('cnn.stages')}x{params.get('cnn.blocks')} w{params.get('cnn.width')}{stem}{pool}"


FAMILY = ModelFamily(
    name="cnn",
    suggest=suggest,
    build=build,
    describe=describe,
    description="searchable custom CNN (plain or residual blocks, stages, width, kernel, norm, activation)",
    param_values={"cnn.block": ["plain", "residual"], "cnn.norm": ["batch", "group"], "cnn.act": list(ACTIVATIONS),
                  "cnn.pool": ["avg", "avgmax"], "cnn.down": list(DOWNSAMPLING),
                  "cnn.stem": list(STEMS)},
)


@hookimpl
def register_model_families(register):
    register(FAMILY)
