"""The plugin manager: built-ins, installed entry points, and ``--plugin`` modules.

Plugins are loaded in this order, once and lazily (``automl-vision --help`` never pays
for it):

1. the built-ins listed in :data:`BUILTIN_PLUGINS`, registered like any other plugin;
2. installed distributions that declare an entry point in the group ``automl_vision``;
3. modules named with ``--plugin module.path`` or in the environment variable
   ``AUTOML_VISION_PLUGINS`` (comma separated), for local development.

A plugin that fails to import, whose registration hook raises, or that registers an
object of the wrong type is recorded as broken with a clear message; every other plugin
keeps working. ``AUTOML_VISION_DISABLE_ENTRYPOINTS=1`` skips installed plugins (the
test suite uses it to stay hermetic), and ``AUTOML_VISION_BLOCK=name,name`` blocks
plugins by name.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable

import pluggy

from automl_vision import hookspecs
from automl_vision.registry import Registry
from automl_vision.types import DatasetSource, Metric, ModelFamily

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "automl_vision"
ENV_PLUGINS = "AUTOML_VISION_PLUGINS"
ENV_DISABLE_ENTRYPOINTS = "AUTOML_VISION_DISABLE_ENTRYPOINTS"
ENV_BLOCK = "AUTOML_VISION_BLOCK"

BUILTIN_PLUGINS = (
    "automl_vision.builtin.image_folder",
    "automl_vision.builtin.csv_manifest",
    "automl_vision.builtin.custom_cnn",
    "automl_vision.builtin.timm_backbones",
    "automl_vision.builtin.classification_metrics",
)


@dataclass
class PluginInfo:
    """One loaded (or broken) plugin, as ``automl-vision plugins`` shows it."""

    name: str
    origin: str  # "builtin", "entrypoint" or "module"
    module: str
    distribution: str | None = None
    version: str | None = None
    hooks: list[str] = field(default_factory=list)
    registered: dict[str, list[str]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    @property
    def broken(self) -> bool:
        return bool(self.errors)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "origin": self.origin,
            "module": self.module,
            "distribution": self.distribution,
            "version": self.version,
            "hooks": self.hooks,
            "registered": self.registered,
            "status": "broken" if self.broken else "ok",
            "errors": self.errors,
        }


_REGISTER_HOOKS: dict[str, tuple[str, type]] = {
    "register_datasets": ("datasets", DatasetSource),
    "register_model_families": ("model_families", ModelFamily),
    "register_metrics": ("metrics", Metric),
}


class PluginManager:
    """Loads plugins and holds what they registered.

    The core talks to plugins only through this class: one typed method per hook, so no
    untyped ``pm.hook.*`` call is spread through the code.
    """

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.datasets: Registry[DatasetSource] = Registry("dataset source")
        self.model_families: Registry[ModelFamily] = Registry("model family")
        self.metrics: Registry[Metric] = Registry("metric")
        self.plugins: dict[str, PluginInfo] = {}

    # ---------------------------------------------------------------- loading
    def load(self, extra_modules: list[str] | None = None, entry_points: bool | None = None) -> "PluginManager":
        blocked = {b.strip() for b in os.environ.get(ENV_BLOCK, "").split(",") if b.strip()}
        for module in BUILTIN_PLUGINS:
            short = module.rsplit(".", 1)[-1]
            if short in blocked or module in blocked:
                continue
            self._load_module(short, module, origin="builtin", distribution="automl-vision")
        if entry_points is None:
            entry_points = os.environ.get(ENV_DISABLE_ENTRYPOINTS, "") not in ("1", "true", "yes")
        if entry_points:
            for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
                if ep.name in blocked:
                    continue
                dist = getattr(ep, "dist", None)
                self._load_entry_point(ep, dist.name if dist else None, dist.version if dist else None)
        modules = [m.strip() for m in os.environ.get(ENV_PLUGINS, "").split(",") if m.strip()]
        modules += list(extra_modules or [])
        for module in dict.fromkeys(modules):
            if module in blocked:
                continue
            self._load_module(module, module, origin="module")
        return self

    def _load_entry_point(self, ep: metadata.EntryPoint, dist: str | None, version: str | None) -> None:
        info = PluginInfo(name=ep.name, origin="entrypoint", module=ep.value, distribution=dist, version=version)
        self.plugins[ep.name] = info
        try:
            obj = ep.load()
        except Exception as exc:  # a broken plugin must not take the others down
            info.errors.append(f"import of {ep.value!r} failed: {type(exc).__name__}: {exc}")
            log.warning("plugin %s (%s) is broken: %s", ep.name, dist, info.errors[-1])
            return
        self._register(info, obj)

    def _load_module(self, name: str, module: str, origin: str, distribution: str | None = None) -> None:
        version = None
        if distribution == "automl-vision":
            from automl_vision import __version__ as version
        info = PluginInfo(name=name, origin=origin, module=module, distribution=distribution, version=version)
        self.plugins[name] = info
        try:
            obj = importlib.import_module(module)
        except Exception as exc:
            hint = " (is it installed, or on PYTHONPATH?)" if isinstance(exc, ModuleNotFoundError) else ""
            info.errors.append(f"import of {module!r} failed{hint}: {type(exc).__name__}: {exc}")
            log.warning("plugin %s is broken: %s", name, info.errors[-1])
            return
        self._register(info, obj)

    def _register(self, info: PluginInfo, obj: Any) -> None:
        try:
            self.pm.register(obj, name=info.name)
        except ValueError:
            # already registered under another name (e.g. a module given twice)
            info.errors.append(f"{info.module!r} is already registered as another plugin")
            return
        except pluggy.PluginValidationError as exc:
            info.errors.append(f"invalid hook implementation: {exc}")
            return
        info.hooks = sorted(
            {impl.__name__ for impl in (getattr(obj, n, None) for n in dir(obj)) if _is_hookimpl(impl)}
        )
        unknown = [h for h in info.hooks if not hasattr(hookspecs, h)]
        if unknown:
            info.errors.append(f"implements unknown hook(s) {', '.join(unknown)}; see automl_vision.hookspecs")
        for hook_name, (kind, expected) in _REGISTER_HOOKS.items():
            impl = getattr(obj, hook_name, None)
            if impl is None or not _is_hookimpl(impl):
                continue
            self._call_register(info, hook_name, impl, kind, expected)

    def _call_register(self, info: PluginInfo, hook: str, impl: Callable, kind: str, expected: type) -> None:
        registry: Registry = getattr(self, kind)
        added: list[str] = []

        def register(obj: Any) -> None:
            if not isinstance(obj, expected):
                raise TypeError(
                    f"register() expects a {expected.__module__}.{expected.__name__}, got {type(obj).__name__}"
                )
            registry.add(obj.name, obj, info.name)
            added.append(obj.name)

        try:
            impl(register=register)
        except Exception as exc:
            info.errors.append(f"hook {hook} raised {type(exc).__name__}: {exc}")
            log.warning("plugin %s: hook %s failed: %s", info.name, hook, exc)
        if added:
            info.registered.setdefault(kind, []).extend(added)

    # ---------------------------------------------------------------- events
    def _notify(self, hook: str, **kwargs: Any) -> None:
        caller = getattr(self.pm.hook, hook)
        for impl in caller.get_hookimpls():
            try:
                impl.function(**{k: kwargs[k] for k in impl.argnames})
            except Exception as exc:  # integrations never stop a search
                log.warning("plugin %s: hook %s raised %s: %s", impl.plugin_name, hook, type(exc).__name__, exc)

    def on_search_start(self, run_dir: str, settings: dict[str, Any]) -> None:
        self._notify("on_search_start", run_dir=run_dir, settings=settings)

    def on_trial_end(self, run_dir: str, trial: Any, record: dict[str, Any]) -> None:
        self._notify("on_trial_end", run_dir=run_dir, trial=trial, record=record)

    def on_search_end(self, run_dir: str, study: Any, summary: dict[str, Any]) -> None:
        self._notify("on_search_end", run_dir=run_dir, study=study, summary=summary)

    # ---------------------------------------------------------------- info
    def broken(self) -> list[PluginInfo]:
        return [p for p in self.plugins.values() if p.broken]

    def fingerprint(self) -> dict[str, str]:
        """Name -> version of every loaded plugin, stored with a study so workers can check it."""
        return {p.name: p.version or "" for p in self.plugins.values() if not p.broken}


def _is_hookimpl(obj: Any) -> bool:
    return callable(obj) and hasattr(obj, hookspecs.PROJECT_NAME + "_impl")


_MANAGER: PluginManager | None = None


def get_plugin_manager(extra_modules: list[str] | None = None, reload: bool = False) -> PluginManager:
    """The process-wide plugin manager, loaded on first use."""
    global _MANAGER
    if _MANAGER is None or reload or extra_modules:
        if extra_modules:
            # make modules in the current directory importable, as for `python -m`
            if os.getcwd() not in sys.path:
                sys.path.insert(0, os.getcwd())
        _MANAGER = PluginManager().load(extra_modules)
        for info in _MANAGER.broken():
            for err in info.errors:
                print(f"warning: plugin {info.name!r} is broken: {err}", file=sys.stderr)
    return _MANAGER
