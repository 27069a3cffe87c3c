"""The objects that plugins register and that flow through the pipeline.

These are the only types a plugin author needs: :class:`DatasetSource`,
:class:`ModelFamily` and :class:`Metric` are registered through the hooks in
:mod:`automl_vision.hookspecs`; :class:`Sample` and :class:`Dataset` are what a dataset
source returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # pragma: no cover  (numpy only in annotations: keeps `--help` from importing it)
    import numpy as np
    import optuna
    from torch import nn


class UsageError(Exception):
    """An error in what the user asked for: printed without a traceback, exit status 2."""


class DataError(UsageError):
    """The data cannot be used as given (no images, one class, a split missing a class)."""


SPLITS = ("train", "val", "test")


@dataclass
class Sample:
    """One labelled image.

    Exactly one of ``path`` and ``array`` is set. ``key`` identifies the sample in
    reports and predictions (a path relative to the dataset root, or ``name/index``).

    Attributes:
        key: stable identifier, unique within the dataset.
        label: class index into :attr:`Dataset.classes`.
        path: an image file on disk.
        array: an in-memory image, ``uint8`` ``(H, W)`` or ``(H, W, C)``.
        split: ``"train"``, ``"val"`` or ``"test"`` when the source fixes the split;
            ``None`` lets automl-vision split stratified with the run's seed.
    """

    key: str
    label: int
    path: Path | None = None
    array: np.ndarray | None = None
    split: str | None = None


@dataclass
class Dataset:
    """What a dataset source returns.

    Attributes:
        classes: class names, indexed by :attr:`Sample.label`.
        samples: every sample found.
        root: the location it was loaded from, for people: shown in reports and the
            dashboard (which reads an image from ``root / key`` when its cache lacks it). Later
            commands (``ensemble``, a refit, a worker) never load data from it: they ask
            the same source again, by name, with the location the user gave the search
            (a relative path made absolute), so any string is fine here.
        skipped: files the source itself rejected, as ``{"path": ..., "reason": ...}``.
        notes: remarks for the data report (e.g. "symlink followed").
    """

    classes: list[str]
    samples: list[Sample]
    root: str = ""
    skipped: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class DatasetSource:
    """A named way to turn a location string into a :class:`Dataset`.

    Attributes:
        name: the scheme users type (``NAME:location``); lower case, ``[a-z0-9_-]``.
        load: ``load(location) -> Dataset``; raise :class:`DataError` with a clear
            message for a location that cannot be used.
        detect: optional ``detect(location) -> bool`` for locations without a scheme.
        description: one line for ``automl-vision plugins``.
    """

    name: str
    load: Callable[[str], Dataset]
    detect: Callable[[str], bool] | None = None
    description: str = ""


@dataclass
class SearchContext:
    """What a model family may look at while suggesting hyperparameters or building.

    Attributes:
        num_classes: number of classes.
        in_chans: 1 for greyscale data, 3 for colour.
        image_size: side of the square input, in pixels.
        num_train: number of training images.
        device: ``"cpu"``, ``"cuda"``, ...
        options: the search's other settings as a dict (run.json's ``settings.options``,
            plus ``preset`` and ``min_image_size`` for plugins written before those fields).
        models: this family's models that the user named (``--models`` items that the
            family's ``resolve_models`` claimed, resolved); empty: the family's own choice.
        preset: the search preset (``fast``, ``balanced``, ``best``).
        min_image_size: the smallest image size the search trains at. Choices that must not
            change between trials (Optuna keeps one list per parameter) depend on this, not
            on ``image_size``; 0 when unknown.
    """

    num_classes: int
    in_chans: int
    image_size: int
    num_train: int = 0
    device: str = "cpu"
    options: dict[str, Any] = field(default_factory=dict)
    models: list[str] = field(default_factory=list)
    preset: str = "balanced"
    min_image_size: int = 0


@dataclass
class ModelFamily:
    """A family of architectures with its own search space.

    Attributes:
        name: the family's name, used in ``--models`` and in the leaderboard.
        suggest: ``suggest(trial, context) -> dict`` samples the family's
            hyperparameters with ``trial.suggest_*``. Prefix parameter names with the
            family name (``"cnn.depth"``) so that families never share a parameter.
        build: ``build(params, in_chans, image_size, num_classes) -> nn.Module``. A
            network trained on random-resized crops is given whole images at
            ``image_size`` and a little larger for predictions, and crops of
            ``image_size`` cut from the largest, averaged (``eval_sizes`` and
            ``eval_crops`` in model.json, training/augment.py); one that raises on the
            largest of those sides (a fixed input size) is kept at ``image_size``, so any
            network works.
        describe: optional ``describe(params) -> str``, a short model name for tables
            (e.g. ``"resnet18"`` or ``"cnn d3 w32"``).
        description: one line for ``automl-vision plugins``.
        recipe: optional training recipe for this family's trials, in space-file terms
            (docs/search-space.md): a parameter name of the training part of the space
            (``optimizer``, ``lr.adamw``, ``weight_decay``, ``schedule``, ``aug.preset``,
            ``label_smoothing``, ...) mapped to a list of choices, a fixed value, or
            ``{"low": ..., "high": ...}`` for a numeric range. Choices and fixed values
            are sampled as ``<family>.<name>`` (e.g. ``vit.optimizer``); ranges keep the
            name. The user's ``--space`` file overrides the recipe.
        resolve_models: optional ``resolve_models(names, what) -> list[str]``: the family
            offers named models. ``--models`` items that are not family names are given to
            the families that have it (in registration order; the first that does not raise
            claims an item): it expands names and wildcards into its model names, or raises
            :class:`UsageError` (``what`` names the option or file key, with close matches).
            The family's ``suggest`` finds the resolved names in ``SearchContext.models``.
        default_models: optional ``default_models(image_size, preset) -> list[str]``: the
            models searched when none is named (checked before a ``--pretrained`` search).
        model_param: the family's parameter whose values are model names (e.g.
            ``timm.arch``): a space file's values for it go through ``resolve_models``.
        param_values: closed sets of values of the family's categorical parameters, for the
            checks of a space file (e.g. ``{"cnn.block": ["plain", "residual"]}``); a
            parameter not listed accepts values of the type of its choices.
        pretrained: the family's ``build`` takes ``pretrained=True`` and can start from
            published weights (``--pretrained``, ``--weights``).
    """

    name: str
    suggest: Callable[["optuna.trial.BaseTrial", SearchContext], dict[str, Any]]
    build: Callable[..., "nn.Module"]
    describe: Callable[[dict[str, Any]], str] | None = None
    description: str = ""
    recipe: dict[str, Any] = field(default_factory=dict)
    resolve_models: Callable[[list[str], str], list[str]] | None = None
    default_models: Callable[[int, str], list[str]] | None = None
    model_param: str = ""
    param_values: dict[str, list[Any]] = field(default_factory=dict)
    pretrained: bool = False

    def label(self, params: dict[str, Any]) -> str:
        """Short human name of the model built from ``params``."""
        if self.describe is not None:
            try:
                return str(self.describe(params))
            except Exception:  # a broken describe must not break a table
                pass
        return self.name


@dataclass
class Metric:
    """An evaluation metric of labels and class probabilities.

    Attributes:
        name: used with ``--metric`` and as a leaderboard column.
        direction: ``"maximize"`` or ``"minimize"``.
        fn: ``fn(y_true, probs) -> float``; ``y_true`` is ``int`` ``(N,)``, ``probs`` is
            ``float`` ``(N, K)`` with rows summing to one.
        min_classes: the metric is only computed when there are at least this many
            classes (e.g. top-5 accuracy needs more than 5).
        description: one line for ``automl-vision plugins``.
    """

    name: str
    direction: str
    fn: Callable[[np.ndarray, np.ndarray], float]
    min_classes: int = 2
    description: str = ""

    def __post_init__(self) -> None:
        if self.direction not in ("maximize", "minimize"):
            raise ValueError(f"metric {self.name!r}: direction must be 'maximize' or 'minimize', got {self.direction!r}")
