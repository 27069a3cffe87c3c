"""The search space: model family and its own space, augmentation, training hyperparameters.

Everything is define-by-run through the Optuna trial, so conditional parameters exist
only where they apply (the ``cnn.*`` parameters only for the custom CNN, the warmup
only for the cosine schedule, RandAugment's magnitude only for RandAugment). Values
that go together are sampled together: the learning rate is sampled per optimizer as a
base rate for batch 64 and scaled linearly with the batch size.

A search space file (``--space space.yaml``, see :mod:`automl_vision.search.space_file`)
restricts or extends any parameter by its name. It is applied by :class:`SpaceTrial`,
a thin wrapper around the Optuna trial that rewrites each ``suggest_*`` call, so that a
plugin's model family is restricted by the same file without knowing about it.
:func:`explore` walks the conditional space without training anything; ``automl-vision
space show`` prints what it finds and the portfolio uses it to check its entries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from automl_vision.plugins import PluginManager
from automl_vision.settings import PRESETS, SearchSettings
from automl_vision.training.augment import suggest_policy
from automl_vision.training.trainer import TrialConfig
from automl_vision.types import SearchContext, UsageError

# Base learning-rate range at batch 64, per optimizer. AdamW's range is where small
# convnets and fine-tuned backbones both train well in a handful of epochs; SGD needs
# about 20x AdamW's rate; Lion about a tenth of it (its update has unit-size entries).
LR_RANGES = {"adamw": (3e-4, 5e-3), "sgd": (1e-2, 2e-1), "lion": (3e-5, 5e-4), "lamb": (1e-3, 2e-2)}
OPTIMIZERS = ["adamw", "sgd", "lion"]
BATCH_SIZES = [32, 64, 128]
SCHEDULES = ["cosine", "onecycle"]


# ------------------------------------------------------------------ applying the space file
class SpaceTrial:
    """An Optuna trial whose ``suggest_*`` calls follow the space file's overrides.

    Every other attribute (``number``, ``report``, ``should_prune``, ...) is the wrapped
    trial's.

    Args:
        trial: the Optuna trial (or :class:`Recorder` while exploring).
        overrides: parameter name -> override, as validated by
            :func:`automl_vision.search.space_file.validate`: a list of choices, a
            fixed value, or ``{"low", "high", "log", "step"}``.
    """

    def __init__(self, trial, overrides: dict[str, Any] | None, recipe: dict[str, Any] | None = None,
                 family: str = ""):
        self._trial = trial
        self._overrides = overrides or {}
        # a family's training recipe, where the user's space file says nothing (the user wins)
        self._recipe = {k: v for k, v in (recipe or {}).items() if k not in self._overrides}
        self._family = family

    def with_recipe(self, family: str, recipe: dict[str, Any] | None) -> "SpaceTrial":
        """This trial, with ``family``'s training recipe (:attr:`ModelFamily.recipe`) applied."""
        return SpaceTrial(self._trial, self._overrides, recipe, family) if recipe else self

    def __getattr__(self, name: str):
        return getattr(self._trial, name)

    def _override(self, name: str):
        return self._overrides.get(name, _MISSING)

    def _family_choice(self, name: str):
        """A recipe's choices (or fixed value) of ``name``, sampled as ``<family>.<name>``: Optuna
        cannot change a parameter's choices from trial to trial, so the family's own choices are
        a parameter of their own (conditional on the family, like its model parameters)."""
        value = self._recipe[name]
        return self.suggest_categorical(f"{self._family}.{name}", list(value) if isinstance(value, list) else [value])

    def suggest_categorical(self, name: str, choices):
        if name in self._recipe:
            return self._family_choice(name)
        ov = self._override(name)
        if ov is not _MISSING:
            choices = list(ov) if isinstance(ov, list) else [ov]
        return self._trial.suggest_categorical(name, list(choices))

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False):
        return self._suggest_number(self._trial.suggest_float, float, name, low, high, step, log)

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False):
        return self._suggest_number(self._trial.suggest_int, int, name, low, high, step, log)

    def _suggest_number(self, suggest, cast, name: str, low, high, step, log: bool):
        """A float or int parameter (``suggest`` and ``cast`` say which): a recipe's narrower (or
        wider) range, a family's choice, the user's override (a value, a list, a range) or the
        model's own range, in that order."""
        recipe = self._recipe.get(name)
        if isinstance(recipe, dict):  # a narrower (or wider) range: Optuna allows ranges that change
            return suggest(name, cast(recipe.get("low", low)), cast(recipe.get("high", high)), step=step, log=log)
        if name in self._recipe:
            return self._family_choice(name)
        ov = self._override(name)
        if ov is _MISSING:
            return suggest(name, low, high, step=step, log=log)
        if isinstance(ov, list):
            return self._trial.suggest_categorical(name, ov)
        if isinstance(ov, dict):
            ov_step = ov.get("step", step)
            return suggest(name, cast(ov.get("low", low)), cast(ov.get("high", high)),
                           step=None if ov_step is None else cast(ov_step), log=bool(ov.get("log", log)))
        return suggest(name, cast(ov), cast(ov))


_MISSING = object()


# ------------------------------------------------------------------ what the space is
def families_and_models(settings: SearchSettings, pm: PluginManager) -> tuple[list[str], dict[str, list[str]]]:
    """Split ``--models`` into model families and the models they claim:
    ``(families, {family: resolved model names})``.

    An item that is not a family's name is offered to the families that name models
    (``ModelFamily.resolve_models``), in registration order; the first that resolves it
    claims it, and joins the families searched.
    """
    if not settings.models:
        return list(pm.model_families), {}
    families: list[str] = []
    named: dict[str, list[str]] = {}
    others = [item for item in settings.models if item not in pm.model_families]
    families = [item for item in settings.models if item in pm.model_families]
    resolvers = [f for f in pm.model_families.values() if f.resolve_models is not None]
    if others and not resolvers:
        raise UsageError(f"--models {','.join(others)}: not a model family ({', '.join(pm.model_families)}), and no "
                         "loaded family takes model names (a plugin's family needs its plugin installed or given "
                         "with --plugin; see 'automl-vision plugins')")
    for item in others:
        first_error = None
        for fam in resolvers:
            try:
                names = fam.resolve_models([item], "--models")
            except UsageError as exc:
                first_error = first_error or exc
                continue
            named.setdefault(fam.name, []).extend(n for n in names if n not in named.get(fam.name, []))
            if fam.name not in families:
                families.append(fam.name)
            break
        else:
            # the name may be a plugin's family that is not installed: say which families exist
            raise UsageError(f"{first_error} Model families loaded: {', '.join(pm.model_families)} (a plugin's "
                             "family needs its plugin installed or given with --plugin; see 'automl-vision "
                             "plugins').") from None
    return families, named


def context(settings: SearchSettings, num_classes: int, in_chans: int, image_size: int, num_train: int,
            device: str, models: list[str] | None = None) -> SearchContext:
    """What a family sees while it suggests; ``models``: the names it claimed in ``--models``."""
    smallest = min(settings.image_sizes) if settings.image_sizes else image_size
    # the dict form stays for plugins written against it; preset and min_image_size are typed fields now
    options = {**settings.options.as_dict(), "preset": settings.preset, "min_image_size": smallest}
    return SearchContext(num_classes, in_chans, image_size, num_train, device, options, list(models or []),
                         preset=settings.preset, min_image_size=smallest)


def batch_choices(num_train: int) -> list[int]:
    """Powers of two up to a quarter of the training set: an epoch has at least four batches.

    Measured (benchmarks/README.md section 19): on 244 and 300 photos at 64 px, four networks of the
    first portfolio CNN sharing 360 s, batch 32 (and so half the learning rate, scaled with the batch)
    against batch 64 (three or four steps an epoch): each network alone +0.2 to +2.4 points in four
    seed pairs, their average +1.4 points on the mean (-1.3 to +3.2). A training split of fewer than
    256 images (a folder of fewer than about 365 photos) offers batch 32 only; half the split, the
    rule before, allowed 64 from 128 images.
    """
    return [b for b in BATCH_SIZES if b <= max(BATCH_SIZES[0], num_train // 4)]  # the smallest always


def aug_presets(settings: SearchSettings) -> list[str] | None:
    """Augmentation presets the search chooses from: the preset's (a space file narrows them)."""
    return PRESETS.get(settings.preset, {}).get("aug_presets")


def sample(trial, settings: SearchSettings, pm: PluginManager, families: list[str], named: dict[str, list[str]],
           num_classes: int, in_chans: int, num_train: int, device: str, max_epochs: int) -> TrialConfig:
    """One configuration, sampled define-by-run (the space file applied)."""
    trial = SpaceTrial(trial, settings.options.space)
    image_size = int(trial.suggest_categorical("image_size", [int(s) for s in settings.image_sizes]))
    family = trial.suggest_categorical("family", list(families))
    ctx = context(settings, num_classes, in_chans, image_size, num_train, device, named.get(family))
    family_obj = pm.model_families.get(family)
    model_params: dict[str, Any] = family_obj.suggest(trial, ctx)
    if not isinstance(model_params, dict):
        raise TypeError(f"model family {family!r}: suggest() returned {type(model_params).__name__}, expected dict")
    trial = trial.with_recipe(family, family_obj.recipe)  # the training part of the space, as the family advises

    batch_size = int(trial.suggest_categorical("batch_size", [int(b) for b in settings.batch_sizes]
                                               or batch_choices(num_train)))
    optimizer = trial.suggest_categorical("optimizer", OPTIMIZERS)
    lo, hi = LR_RANGES[optimizer]
    base_lr = trial.suggest_float(f"lr.{optimizer}", lo, hi, log=True)
    lr = base_lr * batch_size / 64
    weight_decay = trial.suggest_float("weight_decay", 1e-5, 0.1, log=True)
    schedule = trial.suggest_categorical("schedule", SCHEDULES)
    warmup = trial.suggest_float("warmup", 0.0, 0.15) if schedule == "cosine" else 0.0
    ema = trial.suggest_categorical("ema", [False, True])
    grad_clip = float(trial.suggest_categorical("grad_clip", [0.0, 1.0, 5.0]))
    label_smoothing = float(trial.suggest_categorical("label_smoothing", [0.0, 0.1]))
    class_weighting = trial.suggest_categorical("class_weighting", [False, True])
    aug_preset, policy = suggest_policy(trial, aug_presets(settings))
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


# ------------------------------------------------------------------ exploring it
@dataclass
class Param:
    """One parameter of the effective space, as :func:`explore` found it.

    Attributes:
        name: the Optuna parameter name (also the key in a space file).
        kind: ``"categorical"``, ``"float"`` or ``"int"``.
        choices: the choices of a categorical parameter.
        low, high, log, step: the range of a numeric parameter.
        condition: when the parameter exists, e.g. ``{"optimizer": ["sgd"]}``; empty
            when it always does.
    """

    name: str
    kind: str
    choices: list[Any] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    condition: dict[str, list[Any]] = field(default_factory=dict)

    def distribution(self):
        import optuna.distributions as d

        if self.kind == "categorical":
            return d.CategoricalDistribution(self.choices)
        if self.kind == "int":
            return d.IntDistribution(int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return d.FloatDistribution(self.low, self.high, log=self.log, step=self.step)

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is a possible value of this parameter."""
        if self.kind == "categorical":
            return any(type(value) is type(c) and value == c for c in self.choices) or (
                isinstance(value, (int, float)) and not isinstance(value, bool)
                and any(isinstance(c, (int, float)) and not isinstance(c, bool) and value == c for c in self.choices)
            )
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind == "int" and int(value) != value:
            return False
        return self.low <= value <= self.high

    def describe(self) -> str:
        if self.kind == "categorical":
            return ", ".join(_fmt(c) for c in self.choices)
        if self.low == self.high:
            return _fmt(self.low)
        text = f"{_fmt(self.low)} .. {_fmt(self.high)}"
        if self.log:
            text += " (log)"
        if self.step not in (None, 1) or (self.kind == "float" and self.step):
            text += f" step {_fmt(self.step)}"
        return text

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind}
        if self.kind == "categorical":
            d["choices"] = self.choices
        else:
            d.update(low=self.low, high=self.high, log=self.log)
            if self.step is not None:
                d["step"] = self.step
        if self.condition:
            d["condition"] = self.condition
        return d


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


# an int parameter with at most this many values is explored value by value, so a parameter that
# exists only for some of them (a family's ``drop`` only when ``depth >= 2``) is found with its condition
EXHAUSTIVE_INTS = 16


def probe_values(param: Param) -> list[Any]:
    """The values :func:`explore` tries for ``param``: every choice, every value of a small int
    range, else the ends of the range (a parameter that exists only at one end is still found)."""
    if param.kind == "categorical":
        return list(param.choices)
    if param.kind == "int":
        step = int(param.step or 1)
        values = list(range(int(param.low), int(param.high) + 1, step))
        return values if len(values) <= EXHAUSTIVE_INTS else [values[0], values[len(values) // 2], values[-1]]
    return [param.low, param.high]


def _enumerated(param: Param) -> bool:
    """Whether every value of ``param`` is tried, so a condition on it is exact."""
    return param.kind == "categorical" or (param.kind == "int" and len(probe_values(param)) == len(
        range(int(param.low), int(param.high) + 1, int(param.step or 1))))


class Recorder:
    """A stand-in trial for :func:`explore`: answers ``suggest_*`` calls from a fixed
    assignment (first choice / lower bound otherwise) and records every distribution."""

    def __init__(self, assignment: dict[str, Any], number: int = 0):
        self.assignment = assignment
        self.number = number
        self.params: dict[str, Any] = {}
        self.seen: dict[str, Param] = {}

    def suggest_categorical(self, name: str, choices):
        choices = list(choices)
        if not choices:
            raise UsageError(f"search space: parameter {name!r} has no choices left")
        self.seen[name] = Param(name, "categorical", choices=choices)
        value = self.assignment.get(name, choices[0])
        self.params[name] = value
        return value

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False):
        self.seen[name] = Param(name, "float", low=float(low), high=float(high), log=log, step=step)
        value = float(self.assignment.get(name, low))
        self.params[name] = value
        return value

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False):
        self.seen[name] = Param(name, "int", low=int(low), high=int(high), log=log, step=step)
        value = int(self.assignment.get(name, low))
        self.params[name] = value
        return value

    def set_user_attr(self, *_a, **_k) -> None:
        pass

    def report(self, *_a, **_k) -> None:
        pass

    def should_prune(self) -> bool:
        return False


def explore(settings: SearchSettings, pm: PluginManager, families: list[str] | None = None,
            named: dict[str, list[str]] | None = None, num_classes: int = 10, in_chans: int = 3,
            num_train: int = 1000, device: str = "cpu", max_runs: int = 5000) -> dict[str, Param]:
    """The effective space: every parameter that some configuration uses, with its
    distribution and the categorical values it depends on.

    ``sample`` is run with :class:`Recorder` trials. The first run takes the first choice
    of every categorical and the low end of every range; every other value of every
    parameter met (:func:`probe_values`: each choice, each value of a small int range,
    the ends of other ranges) is then tried once on top of the run that met it, so every
    branch of the define-by-run space, a family's own included, is reached in a number
    of runs linear in the number of values. A parameter's condition is the set of
    values of a categorical or small int parameter with which it always appears.
    """
    if families is None or named is None:
        families, named = families_and_models(settings, pm)
    if not settings.image_sizes:
        settings = SearchSettings.from_dict({**settings.as_dict(), "image_sizes": [64]})
    runs: list[dict[str, Any]] = []
    found: dict[str, Param] = {}
    tried: set[tuple[str, str]] = set()
    queue: list[dict[str, Any]] = [{}]
    while queue and len(runs) < max_runs:
        assignment = queue.pop(0)
        rec = Recorder(assignment)
        sample(rec, settings, pm, families, named, num_classes, in_chans, num_train, device,
               settings.max_epochs or 1)
        runs.append(rec.params)
        for name, param in rec.seen.items():
            found.setdefault(name, param)
            for choice in probe_values(param):
                key = (name, repr(choice))
                if key in tried:
                    continue
                tried.add(key)
                if rec.params[name] != choice or type(rec.params[name]) is not type(choice):
                    queue.append({**{k: v for k, v in rec.params.items() if k in assignment}, name: choice})
    # conditions: categorical values with which the parameter always appears
    for name, param in found.items():
        present = [r for r in runs if name in r]
        if len(present) == len(runs):
            continue
        for cname, cparam in found.items():
            if not _enumerated(cparam) or cname == name:
                continue
            domain = probe_values(cparam)
            values = [v for v in domain if any(cname in r and r[cname] == v for r in present)]
            if len(values) == len(domain) or not values:
                continue
            if all(name in r for r in runs if cname in r and r[cname] in values):
                param.condition[cname] = values
        # keep only the innermost conditions: drop one implied by another
        # (cnn.groups needs cnn.norm=group, which itself needs family=cnn)
        for cname in list(param.condition):
            inner = [c for c in param.condition if c != cname and cname in found[c].condition]
            if inner:
                del param.condition[cname]
    return found
