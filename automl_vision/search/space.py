"""The search space: model family and its own space, augmentation, training hyperparameters.

Everything is define-by-run through the Optuna trial, so conditional parameters exist
only where they apply (the ``cnn.*`` parameters only for the custom CNN, the warmup
only for the cosine schedule, RandAugment's magnitude only for RandAugment). Values
that go together are sampled together: the learning rate is sampled per optimizer as a
base rate for batch 64 and scaled linearly with the batch size.
"""

from __future__ import annotations

from typing import Any

from automl_vision.plugins import PluginManager
from automl_vision.settings import SearchSettings
from automl_vision.training.augment import suggest_policy
from automl_vision.training.trainer import TrialConfig
from automl_vision.types import SearchContext, UsageError

# base learning-rate range at batch 64, per optimizer
LR_RANGES = {"adamw": (2e-4, 5e-3), "sgd": (1e-2, 2e-1), "lion": (3e-5, 1e-3), "lamb": (1e-3, 2e-2)}
OPTIMIZERS = ["adamw", "sgd", "lion"]
BATCH_SIZES = [32, 64, 128]


def families_and_models(settings: SearchSettings, pm: PluginManager) -> tuple[list[str], list[str]]:
    """Split ``--models`` into model families and timm names/patterns."""
    if not settings.models:
        return list(pm.model_families), []
    families: list[str] = []
    timm_names: list[str] = []
    for item in settings.models:
        if item in pm.model_families:
            families.append(item)
        else:
            timm_names.append(item)
    if timm_names:
        if "timm" not in pm.model_families:
            raise UsageError(f"--models {','.join(timm_names)}: the timm family is not loaded")
        from automl_vision.builtin.timm_backbones import resolve_models

        timm_names = resolve_models(timm_names)
        if "timm" not in families:
            families.append("timm")
    return families, timm_names


def context(settings: SearchSettings, num_classes: int, in_chans: int, image_size: int, num_train: int,
            device: str, timm_models: list[str]) -> SearchContext:
    options = dict(settings.options)
    options["preset"] = settings.preset
    if timm_models:
        options["timm_models"] = timm_models
    return SearchContext(num_classes, in_chans, image_size, num_train, device, options)


def sample(trial, settings: SearchSettings, pm: PluginManager, families: list[str], timm_models: list[str],
           num_classes: int, in_chans: int, num_train: int, device: str, max_epochs: int) -> TrialConfig:
    sizes = settings.image_sizes
    image_size = int(trial.suggest_categorical("image_size", sizes)) if len(sizes) > 1 else int(sizes[0])
    family = trial.suggest_categorical("family", families) if len(families) > 1 else families[0]
    ctx = context(settings, num_classes, in_chans, image_size, num_train, device, timm_models)
    model_params: dict[str, Any] = pm.model_families.get(family).suggest(trial, ctx)
    if not isinstance(model_params, dict):
        raise TypeError(f"model family {family!r}: suggest() returned {type(model_params).__name__}, expected dict")

    batch_choices = [b for b in BATCH_SIZES if b <= max(32, num_train // 2)] or [BATCH_SIZES[0]]
    batch_size = int(trial.suggest_categorical("batch_size", batch_choices))
    optimizer = trial.suggest_categorical("optimizer", OPTIMIZERS)
    lo, hi = LR_RANGES[optimizer]
    base_lr = trial.suggest_float(f"lr.{optimizer}", lo, hi, log=True)
    lr = base_lr * batch_size / 64
    weight_decay = trial.suggest_float("weight_decay", 1e-5, 0.1, log=True)
    schedule = trial.suggest_categorical("schedule", ["cosine", "onecycle"])
    warmup = trial.suggest_float("warmup", 0.0, 0.15) if schedule == "cosine" else 0.0
    ema = trial.suggest_categorical("ema", [False, True])
    grad_clip = float(trial.suggest_categorical("grad_clip", [0.0, 1.0, 5.0]))
    label_smoothing = float(trial.suggest_categorical("label_smoothing", [0.0, 0.1]))
    class_weighting = trial.suggest_categorical("class_weighting", [False, True])
    aug_preset, policy = suggest_policy(trial, settings.options.get("aug_presets"))
    return TrialConfig(
        family=family,
        model_params=model_params,
        image_size=image_size,
        batch_size=batch_size,
        optimizer=optimizer,
        lr=lr,
        weight_decay=weight_decay,
        schedule=schedule,
        warmup=warmup,
        epochs=max_epochs,
        ema=ema,
        grad_clip=grad_clip,
        label_smoothing=label_smoothing,
        class_weighting=class_weighting,
        aug_preset=aug_preset,
        aug=policy,
        seed=settings.seed * 100003 + trial.number,
    )
