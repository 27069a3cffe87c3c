"""Augmentation policies applied to whole batches on the training device.

Geometry (random-resized crop, flip, rotation, translation) is one affine warp per
sample done for the whole batch with a single ``grid_sample``; colour jitter is a few
per-sample tensor ops; TrivialAugment / RandAugment come from torchvision's v2
transforms on uint8 sub-batches; mixup/cutmix (with label smoothing) and random
erasing come from timm. So augmentation runs where the model runs (the GPU when there
is one) and never starves it.

Named presets are points of the same space: ``none``, ``light``, ``medium`` and
``heavy``; ``custom`` lets the search set every knob.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugPolicy:
    flip: bool = False
    crop_scale: float = 1.0  # smallest area share kept by random-resized crop (1 = no crop)
    rotate: float = 0.0  # max degrees
    translate: float = 0.0  # max shift as a share of the side
    color: float = 0.0  # brightness/contrast/saturation jitter strength
    auto: str = "none"  # none, trivial, rand
    auto_magnitude: int = 9  # RandAugment magnitude (0-30)
    mixup: float = 0.0  # mixup alpha (0 = off)
    cutmix: float = 0.0  # cutmix alpha (0 = off)
    erase: float = 0.0  # random erasing probability

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def mixes(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0


PRESETS: dict[str, AugPolicy] = {
    "none": AugPolicy(),
    "light": AugPolicy(flip=True, crop_scale=0.7, translate=0.05),
    "medium": AugPolicy(flip=True, crop_scale=0.35, rotate=10, translate=0.1, color=0.2),
    "heavy": AugPolicy(flip=True, crop_scale=0.25, rotate=15, translate=0.1, color=0.3, auto="trivial", mixup=0.2, cutmix=1.0, erase=0.25),
}


def _enlargement(crop_scale: float) -> float:
    """``1 / E[sqrt(a)]`` for a crop's area share ``a ~ U(crop_scale, 1)``: how much larger objects
    look in training than in a whole image at the same side ("FixRes", Touvron et al., 2019)."""
    c = min(max(float(crop_scale), 0.0), 1.0)
    if c >= 1.0:
        return 1.0
    return 1.0 / ((2.0 / 3.0) * (1.0 - c ** 1.5) / (1.0 - c))


def _side(image_size: int, factor: float) -> int:
    return max(int(image_size), int(round(image_size * factor / 4.0)) * 4)


def eval_size(image_size: int, crop_scale: float) -> int:
    """The one side at which a network trained on random-resized crops of ``image_size`` px is
    best given whole images when it gets a single input (``eval_size`` in model.json).

    A crop keeps an area share ``a`` drawn uniformly from ``[crop_scale, 1]`` and is resized to
    ``image_size``, so objects look ``f = 1 / E[sqrt(a)]`` times larger in training than in a
    whole image at ``image_size`` (1.23x with the medium policy's 0.35). Decoding the image
    larger undoes part of that. Half the enlargement is used, rounded to a multiple of 4 px
    (medium: 64 -> 72, 96 -> 108, 128 -> 144): on the deliverables of 46 finished searches on
    seven real-photo sets (benchmarks/bench_eval_resolution.py, benchmarks/README.md section 7),
    decoding at 1.125x raised accuracy on the evaluation folders in 27 runs and lowered it in 9
    (+0.46 points); the full 1.25x only +0.05. On trial networks scored on their runs' own
    held-out photos it did not help (-0.11), so predictions average :func:`eval_sizes`; this
    side is what a single input gets (preprocessing.json). ``image_size`` itself when training
    does not crop.
    """
    return _side(image_size, 1.0 + (_enlargement(crop_scale) - 1.0) / 2.0)


def eval_sizes(image_size: int, crop_scale: float) -> list[int]:
    """The sides whose predictions are averaged (``eval_sizes`` in model.json): the training
    side, :func:`eval_size` and the full enlargement, so whole images cover the range of object
    sizes the network saw in its crops (medium: 64/72/80, 96/108/120, 128/144/156 px).

    Measured (benchmarks/README.md section 7): on the same 46 deliverables, averaging the three
    sides' probabilities scored +0.71 points over the training side (36 runs up, 4 down) and
    +0.24 over :func:`eval_size` alone (22 up, 6 down); on 92 of the searches' trial networks,
    scored on their runs' own validation and test photos (which no choice of sides saw), +0.37
    over the training side (50 up, 25 down) and +0.47 over :func:`eval_size` alone. One side
    when training does not crop.
    """
    return sorted({int(image_size), eval_size(image_size, crop_scale), _side(image_size, _enlargement(crop_scale))})


# the training images of a network trained on random-resized crops are decoded at this many times its
# side (train_side), up to sides of TRAIN_DECODE_UP_TO px
TRAIN_DECODE = 1.5
TRAIN_DECODE_UP_TO = 128


def train_side(image_size: int, crop_scale: float) -> int:
    """The side a network's training images are decoded at: ``TRAIN_DECODE`` times its input side
    when it trains on random-resized crops (a multiple of 8), so that a crop cut from an image keeps
    its detail (the trainer resamples it to ``image_size``) instead of being upsampled from an image
    decoded at ``image_size`` (a crop of 35% of the area, medium's smallest, is then enlarged 1.7x);
    ``image_size`` itself when training does not crop, and above ``TRAIN_DECODE_UP_TO`` px (what
    was measured is 64 px; the cache grows with the square of the side).

    Measured (benchmarks/bench_recipes.py, benchmarks/README.md section 47; the first portfolio CNN
    at 64 px, one network of 120 s on every train photo, scored on the evaluation folder as predict
    scores it): against photos decoded at the side, +40 photos over 16 pairs (four sets, seeds 1-4;
    11 up, 1 level, 4 down): flowers17 +11 of 4 x 272, flowers12 +16 of 4 x 192, cats-vs-dogs +17 of
    4 x 356, the ants/bees -4 of 4 x 153. The pairs in which it trained second, with up to 24% more
    epochs than the first network of the process, account for +37; those in which it trained first,
    with 1-8% fewer, for +3. 1.25x was +8 photos over four pairs where 1.5x was +9. At 96 px (144 against
    96, trashnet, one seed) level.
    """
    if float(crop_scale) >= 1.0 or int(image_size) > TRAIN_DECODE_UP_TO:
        return int(image_size)
    return decoded_side(image_size, TRAIN_DECODE)


def decoded_side(image_size: int, factor: float) -> int:
    """``factor`` times ``image_size``, a multiple of 8, never below ``image_size``."""
    return max(int(image_size), int(round(image_size * float(factor) / 8.0)) * 8)


# the crops of eval_crops: the centre and the four corners (models.crop_offsets)
EVAL_CROPS = 5


def eval_crops(image_size: int, crop_scale: float) -> int:
    """How many crops of ``image_size`` px, cut from the image decoded at the largest of
    :func:`eval_sizes` (the centre and the four corners), a network trained on random-resized
    crops also averages its predictions over (``eval_crops`` in model.json): whole images at
    several sides show it objects as large as its crops did on average, crops show them as
    large *and* cut as they were in training. 0 when training does not crop.

    Measured (benchmarks/bench_eval_crops.py, benchmarks/README.md section 44), nothing trained: the
    deliverables of 36 finished searches (six real-photo sets, 3 and 10 minutes, seeds 0-2) scored
    their evaluation folders +0.61 points over their sides alone (+57 photos; 24 runs up, 5 down,
    no set below: trashnet +0.1, the hand signs level); their 72 best trial networks, on their runs'
    own validation and test photos (which no choice here saw), +0.42 points (+124 photos; 44 up,
    14 down; the ants/bees -5 photos over 12 networks of 72 photos, every other set up). In a first
    version of the script the crops without the sides (+46 photos on the folders, +119 held out) and
    the centre crop alone (+40, +55) were less consistent; crops from a 1.375x side (+65 on the
    folders, not checked held out) would need one more decoded side. Prediction costs 2.7x the
    forward passes of the sides alone (16 with flip TTA instead of 6).
    """
    return EVAL_CROPS if max(eval_sizes(image_size, crop_scale)) > int(image_size) else 0


def suggest_policy(trial, choices: list[str] | None = None) -> tuple[str, AugPolicy]:
    """Sample a preset or, for ``custom``, every knob (define-by-run)."""
    names = choices or ["none", "light", "medium", "heavy", "custom"]
    name = trial.suggest_categorical("aug.preset", names)
    if name != "custom":
        return name, PRESETS[name]
    flip = trial.suggest_categorical("aug.flip", [True, False])
    crop = trial.suggest_float("aug.crop_scale", 0.2, 1.0)
    rotate = trial.suggest_float("aug.rotate", 0.0, 30.0)
    translate = trial.suggest_float("aug.translate", 0.0, 0.2)
    color = trial.suggest_float("aug.color", 0.0, 0.4)
    auto = trial.suggest_categorical("aug.auto", ["none", "trivial", "rand"])
    magnitude = trial.suggest_int("aug.auto_magnitude", 5, 15) if auto == "rand" else 9
    mix = trial.suggest_categorical("aug.mix", ["none", "mixup", "cutmix", "both"])
    mixup = trial.suggest_float("aug.mixup_alpha", 0.1, 1.0) if mix in ("mixup", "both") else 0.0
    cutmix = trial.suggest_float("aug.cutmix_alpha", 0.2, 1.0) if mix in ("cutmix", "both") else 0.0
    erase = trial.suggest_float("aug.erase", 0.0, 0.5)
    return name, AugPolicy(flip, crop, rotate, translate, color, auto, magnitude, mixup, cutmix, erase)


class BatchAugmenter:
    """Applies an :class:`AugPolicy` to float batches in [0, 1] (N, C, H, W)."""

    def __init__(self, policy: AugPolicy, num_classes: int, label_smoothing: float, generator: torch.Generator | None = None):
        self.policy = policy
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self.generator = generator
        self._auto = None
        if policy.auto != "none":
            from torchvision.transforms import v2

            self._auto = v2.TrivialAugmentWide() if policy.auto == "trivial" else v2.RandAugment(magnitude=policy.auto_magnitude)
        self._mix = None
        if policy.mixes:
            from timm.data import Mixup

            self._mix = Mixup(
                mixup_alpha=policy.mixup,
                cutmix_alpha=policy.cutmix,
                label_smoothing=label_smoothing,
                num_classes=num_classes,
                mode="batch",
            )
        self._erase = None
        if policy.erase > 0:
            from timm.data.random_erasing import RandomErasing

            self._erase = RandomErasing(probability=policy.erase, mode="pixel", device="cpu")

    def _rand(self, n: int, device) -> torch.Tensor:
        return torch.rand(n, generator=self.generator).to(device)

    def uint8_stage(self, x: torch.Tensor) -> torch.Tensor:
        """Ops that need uint8 (TrivialAugment/RandAugment), per sub-batch of 8."""
        if self._auto is None or x.shape[1] not in (1, 3):
            return x
        chunks = [self._auto(c) for c in x.split(8)]
        return torch.cat(chunks)

    def geometry(self, x: torch.Tensor, side: int | None = None) -> torch.Tensor:
        """The policy's flip, crop, rotation and shift, resampled at ``side``: the input's own side
        unless given (the trainer gives the network's side where the training images were decoded
        larger, :func:`train_side`; without geometry they are then just resized)."""
        p = self.policy
        out = list(x.shape) if side is None else [x.shape[0], x.shape[1], int(side), int(side)]
        if not (p.flip or p.crop_scale < 1.0 or p.rotate or p.translate):
            if out[2:] == list(x.shape[2:]):
                return x
            return F.interpolate(x, size=out[2:], mode="bilinear", antialias=True, align_corners=False)
        n, device = x.shape[0], x.device
        area = p.crop_scale + (1 - p.crop_scale) * self._rand(n, device)
        log_ratio = (self._rand(n, device) * 2 - 1) * math.log(4 / 3)
        ratio = torch.exp(log_ratio)
        sx = torch.sqrt(area * ratio).clamp(max=1.0)
        sy = torch.sqrt(area / ratio).clamp(max=1.0)
        tx = (1 - sx) * (self._rand(n, device) * 2 - 1) + p.translate * (self._rand(n, device) * 2 - 1) * 2
        ty = (1 - sy) * (self._rand(n, device) * 2 - 1) + p.translate * (self._rand(n, device) * 2 - 1) * 2
        angle = (self._rand(n, device) * 2 - 1) * math.radians(p.rotate)
        flip = torch.where(self._rand(n, device) < 0.5, -1.0, 1.0) if p.flip else torch.ones(n, device=device)
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.stack(
            [
                torch.stack([sx * cos * flip, -sy * sin, tx], dim=1),
                torch.stack([sx * sin * flip, sy * cos, ty], dim=1),
            ],
            dim=1,
        ).to(x.dtype)
        grid = F.affine_grid(theta, out, align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    def colour(self, x: torch.Tensor) -> torch.Tensor:
        s = self.policy.color
        if s <= 0:
            return x
        n, device = x.shape[0], x.device
        shape = (n, 1, 1, 1)
        bright = (1 + (self._rand(n, device) * 2 - 1) * s).view(shape).to(x.dtype)
        contrast = (1 + (self._rand(n, device) * 2 - 1) * s).view(shape).to(x.dtype)
        x = x * bright
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * contrast + mean
        if x.shape[1] == 3:
            sat = (1 + (self._rand(n, device) * 2 - 1) * s).view(shape).to(x.dtype)
            grey = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
            x = (x - grey) * sat + grey
        return x.clamp(0, 1)

    def mix(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixup/cutmix with soft targets, or one-hot targets with label smoothing."""
        if self._mix is not None and x.shape[0] % 2 == 0:
            return self._mix(x, y)
        return x, y

    def erase(self, x: torch.Tensor) -> torch.Tensor:
        if self._erase is None:
            return x
        self._erase.device = x.device
        return self._erase(x)


def policy_from_dict(d: dict[str, Any]) -> AugPolicy:
    return replace(AugPolicy(), **{k: v for k, v in d.items() if k in AugPolicy.__dataclass_fields__})
