"""The plugin manager: built-ins, installed entry points, and ``--plugin`` modules.

Plugins are loaded in this order, once and lazily (``automl-vision --help`` never pays
for it):

1. the built-ins listed in :data:`BUILTIN_PLUGINS`, registered like any other plugin;
2. installed distributions that declare an entry point in the group ``automl_vision``;
3. modules named with ``--plugin module.path`` (or ``--plugin path/to/file.py``) or in
   the environment variable ``AUTOML_VISION_PLUGINS`` (comma separated), for local
   development.

Nothing else is ever imported. In particular a run directory is data: the plugins its
``run.json`` names (the search's ``--plugin`` modules) are only matched against what is
loaded (:func:`run_plugin_manager`, :func:`require_registered`), so opening a run
received from someone else never runs their code.

A plugin that fails to import, whose registration hook raises, that registers an
object of the wrong type or with a bad name, or that implements a hook that does not
exist is recorded as broken with a message naming the plugin, the hook and what was
wrong; every other plugin keeps working, and so does whatever the broken plugin
registered correctly. ``AUTOML_VISION_DISABLE_ENTRYPOINTS=1`` skips installed plugins
(the test suite uses it to stay hermetic), ``AUTOML_VISION_BLOCK=name,name`` blocks
plugins by name, and ``AUTOML_VISION_TRACE_PLUGINS=1`` prints every event hook call.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import logging
import os
import re
import sys
import time
import types
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import pluggy

from automl_vision import hookspecs
from automl_vision.registry import Registry
from automl_vision.types import DatasetSource, Metric, ModelFamily, UsageError

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "automl_vision"
ENV_PLUGINS = "AUTOML_VISION_PLUGINS"
ENV_DISABLE_ENTRYPOINTS = "AUTOML_VISION_DISABLE_ENTRYPOINTS"
ENV_BLOCK = "AUTOML_VISION_BLOCK"
ENV_TRACE = "AUTOML_VISION_TRACE_PLUGINS"

BUILTIN_PLUGINS = (
    "automl_vision.builtin.image_folder",
    "automl_vision.builtin.csv_manifest",
    "automl_vision.builtin.custom_cnn",
    "automl_vision.builtin.timm_backbones",
    "automl_vision.builtin.classification_metrics",
)

# Naming rules, checked when a thing is registered. Dataset sources are typed as
# ``NAME:location`` (one letter would be a Windows drive); families and metrics are
# typed in comma-separated lists and metrics become ``val_<name>`` leaderboard columns.
NAME_RULES: dict[str, tuple[re.Pattern[str], str]] = {
    "datasets": (re.compile(r"^[a-z][a-z0-9_-]+$"), "two or more of a-z 0-9 _ -, starting with a letter"),
    "model_families": (re.compile(r"^[a-z][a-z0-9_-]*$"), "a-z 0-9 _ -, starting with a letter"),
    "metrics": (re.compile(r"^[a-z][a-z0-9_]*$"), "a-z 0-9 _, starting with a letter"),
}
# objectives that are not metrics of predictions (multi-objective search)
RESERVED_METRIC_NAMES = frozenset({"params", "latency", "macs", "value"})


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
    duplicate_of: str | None = None  # the same module given twice (installed and --plugin): loaded once

    @property
    def broken(self) -> bool:
        return bool(self.errors)

    @property
    def status(self) -> str:
        return "broken" if self.broken else "duplicate" if self.duplicate_of else "ok"

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "origin": self.origin,
            "module": self.module,
            "distribution": self.distribution,
            "version": self.version,
            "hooks": self.hooks,
            "registered": self.registered,
            "status": self.status,
            "errors": self.errors,
            "duplicate_of": self.duplicate_of,
        }


_REGISTER_HOOKS: dict[str, tuple[str, type]] = {
    "register_datasets": ("datasets", DatasetSource),
    "register_model_families": ("model_families", ModelFamily),
    "register_metrics": ("metrics", Metric),
}
# callables each registered object must carry (optional ones may be None)
_CALLABLES: dict[type, tuple[tuple[str, bool], ...]] = {
    DatasetSource: (("load", True), ("detect", False)),
    ModelFamily: (("suggest", True), ("build", True), ("describe", False)),
    Metric: (("fn", True),),
}


class PluginManager:
    """Loads plugins and holds what they registered.

    The core talks to plugins only through this class: the registries
    (:attr:`datasets`, :attr:`model_families`, :attr:`metrics`) and one typed method
    per event hook, so no untyped ``pm.hook.*`` call is spread through the code.

    Event hooks (``on_search_start``, ``on_epoch_end``, ``on_trial_end``,
    ``on_search_end``) are called through pluggy, so ``tryfirst``/``trylast`` and hook
    wrappers (``wrapper=True``) work as pluggy documents; each plain implementation is
    guarded, so one that raises is reported and the others still run (a plain pluggy call
    stops at the first exception). Registration hooks are called once per plugin, as it
    loads, so that what each plugin registered is known and a broken one is named.
    """

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.datasets: Registry[DatasetSource] = Registry("dataset source")
        self.model_families: Registry[ModelFamily] = Registry("model family")
        self.metrics: Registry[Metric] = Registry("metric")
        self.plugins: dict[str, PluginInfo] = {}
        self._event_failures: dict[tuple[str, str], int] = {}
        self._objects: dict[int, tuple[str, Any]] = {}  # id of a registered plugin object -> its name, it

    # ---------------------------------------------------------------- loading
    def load(self, extra_modules: list[str] | None = None, entry_points: bool | None = None) -> "PluginManager":
        """Load the built-ins, then installed entry points, then ``extra_modules``.

        Args:
            extra_modules: import paths (or ``.py`` files) given with ``--plugin``;
                ``$AUTOML_VISION_PLUGINS`` is read too.
            entry_points: load installed plugins; default: unless
                ``$AUTOML_VISION_DISABLE_ENTRYPOINTS`` is set.
        """
        blocked = {b.strip() for b in os.environ.get(ENV_BLOCK, "").split(",") if b.strip()}
        for module in BUILTIN_PLUGINS:
            short = module.rsplit(".", 1)[-1]
            if short in blocked or module in blocked:
                continue
            self._load_module(short, module, origin="builtin", distribution="automl-vision")
        if entry_points is None:
            entry_points = os.environ.get(ENV_DISABLE_ENTRYPOINTS, "").lower() not in ("1", "true", "yes")
        if entry_points:
            seen: set[tuple[str, str]] = set()
            for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
                # a distribution visible twice on sys.path lists its entry points twice
                if ep.name in blocked or (ep.name, ep.value) in seen:
                    continue
                seen.add((ep.name, ep.value))
                dist = getattr(ep, "dist", None)
                self._load_entry_point(ep, dist.name if dist else None, dist.version if dist else None)
        modules = [m.strip() for m in os.environ.get(ENV_PLUGINS, "").split(",") if m.strip()]
        modules += list(extra_modules or [])
        for module in dict.fromkeys(modules):
            if module in blocked:
                continue
            self._load_module(self._module_plugin_name(module), module, origin="module")
        return self

    def add_plugin(self, obj: Any, name: str | None = None) -> PluginInfo:
        """Register an already imported object (a module or a class instance) as a plugin.

        For the Python API and tests; the command line loads plugins by name.
        """
        module = getattr(obj, "__name__", None) or type(obj).__module__
        info = self._new_info(name or module, origin="object", module=module)
        if not info.broken:
            self._register(info, obj)
        return info

    @staticmethod
    def _module_plugin_name(module: str) -> str:
        if module.endswith(".py"):
            return Path(module).stem
        return module

    def _new_info(self, name: str, **kwargs: Any) -> PluginInfo:
        info = PluginInfo(name=name, **kwargs)
        if name in self.plugins:
            # two plugins with one name: keep both visible, and say so
            other = self.plugins[name]
            info.name = f"{name}#{sum(1 for n in self.plugins if n.split('#')[0] == name) + 1}"
            info.errors.append(
                f"plugin name {name!r} is already used by {other.module!r} ({other.origin}); "
                f"this one was not loaded. Rename its entry point or module."
            )
        self.plugins[info.name] = info
        return info

    def _load_entry_point(self, ep: metadata.EntryPoint, dist: str | None, version: str | None) -> None:
        info = self._new_info(ep.name, origin="entrypoint", module=ep.value, distribution=dist, version=version)
        if info.broken:
            return
        try:
            obj = ep.load()
        except Exception as exc:  # a broken plugin must not take the others down
            self._error(info, f"import of {ep.value!r} failed: {type(exc).__name__}: {exc}")
            return
        self._register(info, obj)

    def _load_module(self, name: str, module: str, origin: str, distribution: str | None = None) -> None:
        version = None
        if distribution == "automl-vision":
            from automl_vision import __version__ as version
        info = self._new_info(name, origin=origin, module=module, distribution=distribution, version=version)
        if info.broken:
            return
        try:
            obj = _import(module)
        except Exception as exc:
            hint = ""
            if isinstance(exc, ModuleNotFoundError) and exc.name and module.startswith(exc.name):
                hint = " (is it installed, or on PYTHONPATH? A file can be given as path/to/plugin.py)"
            self._error(info, f"import of {module!r} failed{hint}: {type(exc).__name__}: {exc}")
            return
        self._register(info, obj)

    def _error(self, info: PluginInfo, message: str) -> None:
        info.errors.append(message)
        log.info("plugin %s is broken: %s", info.name, message)

    def _register(self, info: PluginInfo, obj: Any) -> None:
        if id(obj) in self._objects:
            # the same module already loaded under another name (installed, and given with --plugin
            # too): it works, once; say so instead of calling it broken
            info.duplicate_of = self._objects[id(obj)][0]
            return
        hooks = {name: value for name in dir(obj) if _is_hookimpl(value := _safe_getattr(obj, name))}
        try:
            # pluggy sees a namespace of the plugin's hook implementations, the event ones guarded
            self.pm.register(types.SimpleNamespace(**{name: self._guard(info.name, name, fn) for name, fn in hooks.items()}),
                             name=info.name)
        except (ValueError, pluggy.PluginValidationError) as exc:
            self._error(info, f"invalid hook implementation: {exc}")
            return
        self._objects[id(obj)] = (info.name, obj)  # kept alive, so its id stays its own
        info.hooks = sorted(hooks)
        unknown = [h for h in info.hooks if h not in _HOOK_NAMES]
        for hook in unknown:
            close = [h for h in _HOOK_NAMES if _close(hook, h)]
            hint = f" Did you mean {close[0]}?" if close else f" Known hooks: {', '.join(sorted(_HOOK_NAMES))}."
            self._error(info, f"implements unknown hook {hook!r}: it is never called.{hint}")
        for hook_name, (kind, expected) in _REGISTER_HOOKS.items():
            if hook_name in info.hooks:
                self._call_register(info, hook_name, getattr(obj, hook_name), kind, expected)

    def _call_register(self, info: PluginInfo, hook: str, impl: Callable, kind: str, expected: type) -> None:
        registry: Registry = getattr(self, kind)
        added: list[str] = []
        where = f"hook {hook}"

        def register(obj: Any) -> None:
            # A bad object is reported and skipped, not raised: the plugin's other
            # registrations still count, and the plugin is shown as broken.
            problem = _check_object(obj, kind, expected)
            if problem is None:
                try:
                    registry.add(obj.name, obj, info.name)
                except ValueError as exc:
                    problem = str(exc)
            if problem is not None:
                self._error(info, f"{where}: {problem}")
                return
            added.append(obj.name)

        try:
            returned = impl(register=register)
        except Exception as exc:
            self._error(info, f"{where} raised {type(exc).__name__}: {exc}")
        else:
            if returned is not None:
                self._error(
                    info,
                    f"{where} returned a {type(returned).__name__}, which is ignored: "
                    f"call register(obj) once per {expected.__name__} instead of returning them",
                )
        if added:
            info.registered.setdefault(kind, []).extend(added)

    # ---------------------------------------------------------------- choices
    def apply_preferences(self, prefer: dict[str, str] | None, strict: bool = True) -> None:
        """Resolve conflicts with the user's picks (``--prefer NAME=PLUGIN``).

        Args:
            prefer: name -> plugin.
            strict: raise for a pick that matches no registration; ``False`` skips it
                (picks stored with a run, read back after a plugin was uninstalled).

        Raises:
            UsageError: a name nobody registered twice, or a plugin that did not
                register that name.
        """
        for name, plugin in (prefer or {}).items():
            found = False
            for registry in (self.datasets, self.model_families, self.metrics):
                owners = [e.plugin for e in registry.candidates(name)]
                if not owners:
                    continue
                found = True
                if plugin not in owners:
                    if not strict:
                        continue
                    raise UsageError(
                        f"--prefer {name}={plugin}: plugin {plugin!r} does not register the {registry.kind} "
                        f"{name!r}; it is registered by {', '.join(owners)}."
                    )
                registry.preferred[name] = plugin
            if not found and strict:
                raise UsageError(
                    f"--prefer {name}={plugin}: no plugin registers anything called {name!r}; "
                    f"'automl-vision plugins' lists what each plugin registers."
                )

    def unresolved_conflicts(self) -> list[str]:
        """One message per name registered by several plugins and not picked."""
        return [
            registry.conflict_message(name)
            for registry in (self.datasets, self.model_families, self.metrics)
            for name in registry.unresolved()
        ]

    # ---------------------------------------------------------------- events
    def _guard(self, plugin: str, hook: str, fn: Callable) -> Callable:
        """``fn`` as pluggy calls it: an event implementation that raises is counted and
        logged, never raised (integrations never stop a search); others are left as they are."""
        if hook not in _EVENT_HOOKS or _impl_opts(fn).get("wrapper") or _impl_opts(fn).get("hookwrapper"):
            return fn

        @functools.wraps(fn)  # keeps pluggy's marker (tryfirst, ...) and the signature it reads
        def guarded(*args: Any, **kwargs: Any) -> Any:
            trace = os.environ.get(ENV_TRACE, "").lower() in ("1", "true", "yes")
            started = time.perf_counter()
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:
                if trace:
                    print(f"[plugin trace] {plugin}.{hook} raised {type(exc).__name__}: {exc}", file=sys.stderr)
                self._failed(plugin, hook, exc)
                return None
            if trace:
                print(f"[plugin trace] {plugin}.{hook}({', '.join(inspect.signature(fn).parameters)}) "
                      f"ok in {time.perf_counter() - started:.3f}s", file=sys.stderr)
            return result

        return guarded

    def _failed(self, plugin: str, hook: str, exc: BaseException) -> None:
        key = (plugin, hook)
        self._event_failures[key] = self._event_failures.get(key, 0) + 1
        # the first failure is shown; repeats are only logged, to keep the display readable
        level = logging.WARNING if self._event_failures[key] == 1 else logging.DEBUG
        log.log(level, "plugin %s: hook %s raised %s: %s (the search goes on)", plugin, hook, type(exc).__name__, exc)

    def _notify(self, hook: str, **kwargs: Any) -> None:
        try:
            getattr(self.pm.hook, hook)(**kwargs)
        except Exception as exc:  # only a hook wrapper gets here: plain implementations are guarded
            wrappers = [i.plugin_name for i in getattr(self.pm.hook, hook).get_hookimpls() if i.wrapper or i.hookwrapper]
            self._failed(",".join(wrappers) or "?", hook, exc)

    def on_search_start(self, run_dir: str, settings: dict[str, Any]) -> None:
        """Tell every plugin that a search starts."""
        self._notify("on_search_start", run_dir=run_dir, settings=settings)

    def on_trial_end(self, run_dir: str, trial: Any, record: dict[str, Any]) -> None:
        """Tell every plugin that a trial has finished."""
        self._notify("on_trial_end", run_dir=run_dir, trial=trial, record=record)

    def on_epoch_end(self, run_dir: str, trial_number: int, epoch: int, epochs: int, record: dict[str, Any]) -> None:
        """Tell every plugin that an epoch of a trial has finished."""
        self._notify("on_epoch_end", run_dir=run_dir, trial_number=trial_number, epoch=epoch, epochs=epochs,
                     record=record)

    def on_search_end(self, run_dir: str, study: Any, summary: dict[str, Any]) -> None:
        """Tell every plugin that the search has finished."""
        self._notify("on_search_end", run_dir=run_dir, study=study, summary=summary)

    def event_failures(self) -> dict[str, int]:
        """``"plugin:hook"`` -> how many times that event hook raised."""
        return {f"{p}:{h}": n for (p, h), n in self._event_failures.items()}

    # ---------------------------------------------------------------- info
    def broken(self) -> list[PluginInfo]:
        """Plugins with at least one error."""
        return [p for p in self.plugins.values() if p.broken]

    def fingerprint(self) -> dict[str, str]:
        """Name -> version of every loaded plugin, stored with a study so workers can check it."""
        return {p.name: p.version or "" for p in self.plugins.values() if not p.broken}


_HOOK_NAMES = frozenset(
    name for name in dir(hookspecs) if hasattr(getattr(hookspecs, name), hookspecs.PROJECT_NAME + "_spec")
)


_EVENT_HOOKS = _HOOK_NAMES - set(_REGISTER_HOOKS)


def _impl_opts(fn: Any) -> dict[str, Any]:
    return getattr(fn, hookspecs.PROJECT_NAME + "_impl", None) or {}


def _close(a: str, b: str) -> bool:
    import difflib

    return difflib.SequenceMatcher(None, a, b).ratio() > 0.75


def _safe_getattr(obj: Any, name: str) -> Any:
    try:
        return getattr(obj, name, None)
    except Exception:  # a property of a plugin object may raise; it is not a hook then
        return None


def _is_hookimpl(obj: Any) -> bool:
    return callable(obj) and hasattr(obj, hookspecs.PROJECT_NAME + "_impl")


def _check_object(obj: Any, kind: str, expected: type) -> str | None:
    """What is wrong with a registered object, or None."""
    if not isinstance(obj, expected):
        return (
            f"register() expects a {expected.__module__}.{expected.__name__}, got {type(obj).__module__}."
            f"{type(obj).__name__} ({obj!r:.60})"
        )
    pattern, rule = NAME_RULES[kind]
    name = getattr(obj, "name", None)
    if not isinstance(name, str) or not pattern.match(name):
        return f"{expected.__name__} name {name!r} is not allowed: use {rule}"
    if kind == "metrics" and name in RESERVED_METRIC_NAMES:
        return f"metric name {name!r} is reserved; pick another name"
    for attr, required in _CALLABLES[expected]:
        value = getattr(obj, attr, None)
        if (value is not None or required) and not callable(value):
            return f"{expected.__name__} {name!r}: {attr} must be callable, got {type(value).__name__}"
    return None


def _import(module: str) -> Any:
    """Import a module by dotted path, or a ``.py`` file by path."""
    if module.endswith(".py") or os.sep in module:
        path = Path(module).expanduser()
        if not path.is_file():
            raise ModuleNotFoundError(f"no plugin file {str(path)!r}", name=module)
        mod_name = f"automl_vision_local_plugin_{path.stem}"
        spec = importlib.util.spec_from_file_location(mod_name, path)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = mod
        try:
            spec.loader.exec_module(mod)
        except BaseException:
            sys.modules.pop(mod_name, None)
            raise
        return mod
    return importlib.import_module(module)


_MANAGER: PluginManager | None = None
_MANAGER_KEY: tuple[str, ...] | None = None


def get_plugin_manager(extra_modules: list[str] | None = None, reload: bool = False,
                       prefer: dict[str, str] | None = None, strict: bool = True) -> PluginManager:
    """The process-wide plugin manager, loaded on first use.

    Broken plugins and conflicts nobody resolved are reported once on stderr when it
    loads; they do not stop anything that does not use them.

    Args:
        extra_modules: ``--plugin`` modules; a different list loads again.
        reload: load again even if loaded.
        prefer: ``NAME -> PLUGIN`` picks for names registered by several plugins.
        strict: see :meth:`PluginManager.apply_preferences`; ``False`` for picks read
            back from a run directory.

    Raises:
        UsageError: a pick in ``prefer`` that matches no registration.
    """
    global _MANAGER, _MANAGER_KEY
    key = tuple(extra_modules or ())
    if _MANAGER is None or reload or key != _MANAGER_KEY:
        if extra_modules and os.getcwd() not in sys.path:
            # make modules in the current directory importable, as for `python -m`
            sys.path.insert(0, os.getcwd())
        _MANAGER = PluginManager().load(extra_modules)
        _MANAGER_KEY = key
        for info in _MANAGER.broken():
            for err in info.errors:
                print(f"warning: plugin {info.name!r} is broken: {err}", file=sys.stderr)
    if prefer is not None:
        # picks belong to one search or run: a later call with its own picks replaces them
        for registry in (_MANAGER.datasets, _MANAGER.model_families, _MANAGER.metrics):
            registry.preferred.clear()
        _MANAGER.apply_preferences(prefer, strict=strict)
    if prefer is not None or reload:
        for message in _MANAGER.unresolved_conflicts():
            print(f"warning: {message} Until then it is not used.", file=sys.stderr)
    return _MANAGER


# ---------------------------------------------------------------- opening a recorded run
def run_plugin_manager(run: dict[str, Any], plugins: list[str] | None = None) -> PluginManager:
    """The plugin manager to open a recorded run (``predict``, ``export``, ``ensemble``, ``load``).

    It holds the built-ins, installed plugins, ``plugins`` (the command's ``--plugin``) and
    ``$AUTOML_VISION_PLUGINS``; never a module the run's ``run.json`` names, which could be
    anyone's code. The search's ``--prefer`` picks are applied where they still match.
    """
    settings = run.get("settings") or {}
    return get_plugin_manager(list(plugins or []), prefer=settings.get("prefer") or None, strict=False)


def require_registered(pm: PluginManager, run: dict[str, Any], kind: str, name: str, where: str) -> None:
    """Raise UsageError, saying which plugin to provide and how, when the run needs ``name`` and no
    loaded plugin registers it.

    Args:
        kind: ``"datasets"``, ``"model_families"`` or ``"metrics"``.
        where: the run file that needs it, for the message.
    """
    registry: Registry = getattr(pm, kind)
    if name in registry:
        return
    settings = run.get("settings") or {}
    given = {PluginManager._module_plugin_name(m): m for m in settings.get("plugins") or []}
    absent = [n for n in (run.get("plugins") or {}) if n not in pm.plugins or pm.plugins[n].broken]
    absent += [n for n in given if n not in absent and (n not in pm.plugins or pm.plugins[n].broken)]
    if absent:
        described = ", ".join(f"{n} (the search had --plugin {given[n]})" if n in given else
                              f"{n} {run['plugins'].get(n) or ''}".rstrip() for n in absent)
        which = f"; the search used plugin(s) not loaded here: {described}"
    else:
        which = ""
    raise UsageError(
        f"{where}: the run needs the {registry.kind} {name!r}, which no loaded plugin registers{which}. Plugins are "
        "never loaded from a run directory: give the plugin with --plugin PATH_OR_MODULE (or $AUTOML_VISION_PLUGINS) "
        "or install it (pip install DISTRIBUTION); 'automl-vision plugins' lists what is loaded."
    )
