"""A test kit for plugin authors: conformance checks for what a plugin registers.

Use it in a plugin's own tests (pytest or not); every check raises
:class:`PluginCheckError` (an ``AssertionError``) with a message saying what is wrong::

    from automl_vision.testing import check_plugin

    def test_my_plugin_conforms():
        pm = check_plugin("my_plugin")           # loads it next to the built-ins
        assert "mixer" in pm.model_families

:func:`check_plugin` loads the plugin (an import path, a ``.py`` file or a module
object) into a fresh plugin manager next to the built-ins, fails if the plugin is
broken, and runs the matching check on every model family and metric it registered:
:func:`check_model_family` samples the family's space with a real Optuna trial, builds
the module for greyscale and colour inputs and runs a forward and a backward pass;
:func:`check_metric` checks the value type and that perfect predictions score better
than wrong ones. Dataset sources need a location to read, so call
:func:`check_dataset_source` yourself with one.
"""

from __future__ import annotations

import json
import math
from types import ModuleType
from typing import Any, Iterable

import numpy as np

from automl_vision.plugins import PluginManager
from automl_vision.types import Dataset, DatasetSource, Metric, ModelFamily, SearchContext, SPLITS

__all__ = [
    "PluginCheckError",
    "check_dataset_source",
    "check_metric",
    "check_model_family",
    "check_plugin",
    "load_plugin",
]


class PluginCheckError(AssertionError):
    """A registered object does not behave as the hook specification asks."""


def _fail(what: str, message: str) -> None:
    raise PluginCheckError(f"{what}: {message}")


def load_plugin(plugin: str | ModuleType | Any, builtins: bool = True, name: str | None = None) -> PluginManager:
    """A fresh plugin manager with the built-ins (optional) and ``plugin``.

    Installed plugins (entry points) are not loaded, so the result does not depend on
    what else is installed. The plugin may be broken: look at ``pm.plugins[name]``.

    Args:
        plugin: import path (``"my_plugin"``), ``.py`` file path, or an object with
            hook implementations (a module or a class instance).
        builtins: also load automl-vision's built-in plugins.
        name: plugin name for an object (default: its module name).
    """
    import os

    from automl_vision import plugins as plugins_mod

    pm = PluginManager()
    saved = os.environ.get(plugins_mod.ENV_PLUGINS)
    os.environ.pop(plugins_mod.ENV_PLUGINS, None)  # only the plugin under test
    try:
        if builtins:
            pm.load(entry_points=False)
    finally:
        if saved is not None:
            os.environ[plugins_mod.ENV_PLUGINS] = saved
    if isinstance(plugin, str) and plugin in plugins_mod.BUILTIN_PLUGINS and builtins:
        pass  # already loaded with the built-ins
    elif isinstance(plugin, str):
        pm._load_module(pm._module_plugin_name(plugin), plugin, origin="module")
    else:
        pm.add_plugin(plugin, name=name)
    return pm


def check_plugin(plugin: str | ModuleType | Any, name: str | None = None) -> PluginManager:
    """Load ``plugin`` next to the built-ins, fail if it is broken, check what it registered.

    Returns:
        the plugin manager, to look at the registries.

    Raises:
        PluginCheckError: the plugin is broken, registers nothing and implements no
            event hook, or a family or metric it registered fails its check.
    """
    pm = load_plugin(plugin, builtins=True, name=name)
    module = plugin if isinstance(plugin, str) else None
    info = next((p for p in pm.plugins.values() if module is not None and p.module == module),
                list(pm.plugins.values())[-1])
    if info.broken:
        _fail(f"plugin {info.name}", "broken:\n  " + "\n  ".join(info.errors))
    if not info.hooks:
        _fail(f"plugin {info.name}", "implements no hook (did you forget @hookimpl?)")
    for family_name in info.registered.get("model_families", []):
        check_model_family(pm.model_families.get(family_name))
    for metric_name in info.registered.get("metrics", []):
        check_metric(pm.metrics.get(metric_name))
    return pm


def check_model_family(
    family: ModelFamily,
    trials: int = 3,
    in_chans: Iterable[int] = (1, 3),
    image_size: int = 16,
    num_classes: int = 3,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Sample, build, run forward and backward: what a search does with a family.

    For each of ``trials`` random Optuna trials and each input channel count: the
    parameters are a dict of JSON values whose names start with ``"<family>."``, the
    module maps ``(2, C, S, S)`` floats to finite ``(2, num_classes)`` logits, gradients
    reach its parameters, and ``describe`` (if any) gives a string.

    Returns:
        the sampled parameter dicts.
    """
    import optuna
    import torch

    what = f"model family {family.name!r}"
    if not isinstance(family, ModelFamily):
        _fail(what, f"expected a ModelFamily, got {type(family).__name__}")
    prefix = family.name + "."
    for key, values in family.param_values.items():
        if not key.startswith(prefix) or not isinstance(values, (list, tuple)) or not values:
            _fail(what, f"param_values[{key!r}] must name one of its own parameters ({prefix}<name>) and list its "
                        "possible values")
    if family.model_param and (not family.model_param.startswith(prefix) or family.resolve_models is None):
        _fail(what, f"model_param {family.model_param!r} must be one of its own parameters ({prefix}<name>) and "
                    "needs resolve_models to check a space file's model names")
    if family.default_models is not None:
        defaults = family.default_models(image_size, "balanced")
        if not isinstance(defaults, list) or not all(isinstance(n, str) for n in defaults):
            _fail(what, "default_models(image_size, preset) must return a list of model names (str)")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    sampled = []
    for _ in range(trials):
        for chans in in_chans:
            trial = study.ask()
            ctx = SearchContext(num_classes=num_classes, in_chans=chans, image_size=image_size, num_train=64)
            params = family.suggest(trial, ctx)
            if not isinstance(params, dict):
                _fail(what, f"suggest() returned {type(params).__name__}, expected a dict of parameters")
            try:
                json.dumps(params)
            except (TypeError, ValueError) as exc:
                _fail(what, f"suggest() returned parameters that are not JSON values ({exc}); they are stored in config.json")
            for key in list(params) + list(trial.params):
                if not key.startswith(prefix):
                    _fail(what, f"parameter {key!r} must be named {prefix}<name> so that it never clashes with "
                                f"training hyperparameters or other families")
            for key, values in family.param_values.items():
                if key in trial.params and trial.params[key] not in values:
                    _fail(what, f"suggest() sampled {key}={trial.params[key]!r}, which its param_values "
                                f"({list(values)}) do not list: a space file could not ask for it")
            torch.manual_seed(seed)
            model = family.build(params, in_chans=chans, image_size=image_size, num_classes=num_classes)
            if not isinstance(model, torch.nn.Module):
                _fail(what, f"build() returned {type(model).__name__}, expected a torch.nn.Module")
            model.train()
            x = torch.randn(2, chans, image_size, image_size)
            logits = model(x)
            if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (2, num_classes):
                shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
                _fail(what, f"module maps (2, {chans}, {image_size}, {image_size}) to {shape}, expected (2, {num_classes}) "
                            f"logits (params {params})")
            if not torch.isfinite(logits).all():
                _fail(what, f"module gives non-finite logits (params {params})")
            logits.float().logsumexp(1).sum().backward()
            if not any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters()):
                _fail(what, f"no gradient reaches the module's parameters (params {params})")
            if family.describe is not None and not isinstance(family.describe(params), str):
                _fail(what, "describe() must return a str")
            study.tell(trial, 0.0)
            sampled.append(params)
    if family.recipe:
        _check_recipe(family, what)
    return sampled


def _check_recipe(family: ModelFamily, what: str) -> None:
    """Every key of the family's recipe is a parameter of the training space, and the recipe
    samples: a misspelt key (``optimiser``) would otherwise be ignored without a word."""
    from automl_vision.plugins import PluginManager
    from automl_vision.search.space import explore
    from automl_vision.settings import SearchSettings

    pm = PluginManager().load(entry_points=False)
    pm.model_families.add(family.name, family, "recipe-check")
    settings = SearchSettings(data=".", run_dir=".", study_name="check", models=[family.name], image_sizes=[16])
    try:
        found = explore(settings, pm)
    except Exception as exc:  # noqa: BLE001 - reported as the check's failure
        _fail(what, f"sampling with its recipe failed: {type(exc).__name__}: {exc}")
    for key in family.recipe:
        if key not in found and f"{family.name}.{key}" not in found:
            _fail(what, f"recipe key {key!r} is not a parameter of the training space (automl-vision space show "
                        "lists them)")


def check_metric(metric: Metric, num_classes: int | None = None, n: int = 60, seed: int = 0) -> None:
    """Call the metric on perfect, wrong and random predictions.

    Checks the direction, that the value is a finite number, and that perfect
    predictions score better than (or equal to) predictions that are always wrong.
    """
    what = f"metric {metric.name!r}"
    if not isinstance(metric, Metric):
        _fail(what, f"expected a Metric, got {type(metric).__name__}")
    k = max(num_classes or 3, metric.min_classes)
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    perfect = np.full((n, k), 0.02 / max(k - 1, 1))
    perfect[np.arange(n), y] = 0.98
    wrong = np.full((n, k), 0.02 / max(k - 1, 1))
    wrong[np.arange(n), (y + 1) % k] = 0.98
    random = rng.dirichlet(np.ones(k), size=n)
    values = {}
    for name, probs in (("perfect", perfect), ("wrong", wrong), ("random", random)):
        try:
            value = metric.fn(y, probs)
        except Exception as exc:
            _fail(what, f"fn raised {type(exc).__name__}: {exc} on {name} predictions of {k} classes")
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
            _fail(what, f"fn returned {type(value).__name__}, expected a float")
        if not math.isfinite(float(value)):
            _fail(what, f"fn returned {value} on {name} predictions")
        values[name] = float(value)
    better = values["perfect"] >= values["wrong"] if metric.direction == "maximize" else values["perfect"] <= values["wrong"]
    if not better or values["perfect"] == values["wrong"]:
        _fail(what, f"direction is {metric.direction!r} but perfect predictions score {values['perfect']} and "
                    f"always-wrong ones {values['wrong']}")


def _call(what: str, name: str, fn, *args):
    """``fn(*args)``; whatever the plugin's code raises becomes a :class:`PluginCheckError` naming it."""
    try:
        return fn(*args)
    except PluginCheckError:
        raise
    except Exception as exc:
        _fail(what, f"{name}({', '.join(map(repr, args))}) raised {type(exc).__name__}: {exc}")


def check_dataset_source(source: DatasetSource, location: str, detect: bool | None = None) -> Dataset:
    """Load ``location`` (without the ``NAME:`` scheme) and check the dataset.

    Checks: a :class:`Dataset` with at least two classes and one sample; unique keys;
    labels index the classes; each sample has exactly one of ``path`` (an existing
    file) and ``array`` (``uint8``, ``(H, W)`` or ``(H, W, C)`` with C in 1, 3, 4); a
    fixed split is one of train/val/test. With ``detect`` given, ``source.detect``
    must answer it for ``location``.

    Returns:
        the dataset, for further checks of your own.
    """
    what = f"dataset source {source.name!r}"
    if not isinstance(source, DatasetSource):
        _fail(what, f"expected a DatasetSource, got {type(source).__name__}")
    if detect is not None:
        got = bool(_call(what, "detect", source.detect, location)) if source.detect else False
        if got != detect:
            _fail(what, f"detect({location!r}) is {got}, expected {detect}")
    ds = _call(what, "load", source.load, location)
    if not isinstance(ds, Dataset):
        _fail(what, f"load() returned {type(ds).__name__}, expected automl_vision.types.Dataset")
    if len(ds.classes) < 2:
        _fail(what, f"{len(ds.classes)} class(es); a classification dataset needs at least 2")
    if not ds.samples:
        _fail(what, "no samples")
    keys = set()
    for s in ds.samples:
        if s.key in keys:
            _fail(what, f"sample key {s.key!r} is not unique")
        keys.add(s.key)
        if isinstance(s.label, bool) or not hasattr(s.label, "__index__") or not 0 <= int(s.label) < len(ds.classes):
            _fail(what, f"sample {s.key!r}: label {s.label} is not an index into {len(ds.classes)} classes")
        if (s.path is None) == (s.array is None):
            _fail(what, f"sample {s.key!r}: exactly one of path and array must be set")
        if s.path is not None and not s.path.is_file():
            _fail(what, f"sample {s.key!r}: {s.path} is not a file")
        if s.array is not None:
            a = s.array
            if a.dtype != np.uint8 or a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (1, 3, 4)):
                _fail(what, f"sample {s.key!r}: array {a.dtype} {a.shape}; expected uint8 (H, W) or (H, W, C)")
        if s.split is not None and s.split not in SPLITS:
            _fail(what, f"sample {s.key!r}: split {s.split!r} is not one of {', '.join(SPLITS)}")
    return ds
