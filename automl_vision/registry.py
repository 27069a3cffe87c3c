"""Registries of what plugins add: dataset sources, model families and metrics.

Like timm's model registry: lookup by name, wildcard listing, and errors that suggest
close valid names. Every entry remembers the plugin that registered it, so that a
conflict (two plugins registering the same name) names both plugins. A conflict is not
an error until the name is used: then the user picks one plugin with
``--prefer NAME=PLUGIN`` (kept in :attr:`Registry.preferred`), or uninstalls one.
"""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass
from typing import Generic, Iterator, TypeVar

from automl_vision.types import UsageError

T = TypeVar("T")


class ConflictError(UsageError):
    """Two plugins registered the same name and the user has not picked one."""


@dataclass
class Entry(Generic[T]):
    """One registered object and the plugin that registered it."""

    name: str
    obj: T
    plugin: str


class Registry(Generic[T]):
    """Named objects of one kind, in registration order.

    Iteration, ``len`` and :meth:`items` cover the names that can be used: a name
    registered by two plugins is left out until the user picks one of them. ``in``
    and :meth:`get` see every name, so that asking for a conflicting name explains
    the conflict instead of calling it unknown.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}
        self._conflicts: dict[str, list[Entry[T]]] = {}
        self.preferred: dict[str, str] = {}  # name -> plugin the user picked on conflict

    def add(self, name: str, obj: T, plugin: str) -> None:
        """Register ``obj`` as ``name`` for ``plugin``.

        Raises:
            ValueError: the same plugin already registered this name.
        """
        entry = Entry(name, obj, plugin)
        if name in self._entries:
            owners = [e.plugin for e in self._conflicts.get(name, [self._entries[name]])]
            if plugin in owners:
                raise ValueError(f"{self.kind} {name!r} is registered twice by the same plugin")
            self._conflicts.setdefault(name, [self._entries[name]]).append(entry)
            return
        self._entries[name] = entry

    def _usable(self, name: str) -> bool:
        if name not in self._conflicts:
            return True
        return self.preferred.get(name) in {e.plugin for e in self._conflicts[name]}

    def _resolve(self, name: str) -> Entry[T]:
        if name in self._conflicts:
            candidates = self._conflicts[name]
            pick = self.preferred.get(name)
            for entry in candidates:
                if entry.plugin == pick:
                    return entry
            raise ConflictError(self.conflict_message(name))
        return self._entries[name]

    def conflict_message(self, name: str) -> str:
        """The error shown when a name registered by several plugins is used."""
        owners = [e.plugin for e in self._conflicts.get(name, [])]
        return (
            f"{self.kind} {name!r} is registered by more than one plugin: {', '.join(owners)}. "
            f"Pick one with --prefer {name}={owners[0] if owners else 'PLUGIN'} (or uninstall one of them); "
            f"'automl-vision plugins' lists what each plugin registers."
        )

    def get(self, name: str) -> T:
        """The object registered as ``name``.

        Raises:
            UsageError: unknown name (the message suggests close names).
            ConflictError: several plugins registered it and none was picked.
        """
        if name not in self._entries:
            raise UsageError(self.unknown_message(name))
        return self._resolve(name).obj

    def plugin_of(self, name: str) -> str:
        """Name of the plugin whose object :meth:`get` returns."""
        return self._resolve(name).plugin

    def candidates(self, name: str) -> list[Entry[T]]:
        """Every registration of ``name`` (more than one on a conflict)."""
        if name in self._conflicts:
            return list(self._conflicts[name])
        return [self._entries[name]] if name in self._entries else []

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(name, list(self._entries), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        known = ", ".join(sorted(self._entries)) or "none"
        return (f"unknown {self.kind} {name!r}.{hint} Known: {known}. If a plugin provides it, install the plugin "
                f"or load it with --plugin; 'automl-vision plugins' shows what is loaded.")

    def names(self, pattern: str = "*") -> list[str]:
        """Usable names matching a shell-style wildcard, e.g. ``"f1_*"``."""
        return [n for n in self if fnmatch.fnmatchcase(n, pattern)]

    def all_names(self) -> list[str]:
        """Every registered name, conflicting ones included, in registration order."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter([n for n in self._entries if self._usable(n)])

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def items(self) -> list[tuple[str, T]]:
        """``(name, object)`` for every usable name, in registration order."""
        return [(n, self._resolve(n).obj) for n in self]

    def values(self) -> list[T]:
        """The object of every usable name, in registration order."""
        return [obj for _, obj in self.items()]

    def conflicts(self) -> dict[str, list[str]]:
        """Name -> the plugins that registered it, for every conflicting name."""
        return {n: [e.plugin for e in es] for n, es in self._conflicts.items()}

    def unresolved(self) -> list[str]:
        """Conflicting names the user has not picked a plugin for."""
        return [n for n in self._conflicts if not self._usable(n)]
