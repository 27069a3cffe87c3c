"""Registries of what plugins add: dataset sources, model families and metrics.

Like timm's model registry: lookup by name, wildcard listing, and errors that suggest
close valid names. Every entry remembers the plugin that registered it, so that a
conflict names both plugins.
"""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass
from typing import Generic, Iterator, TypeVar

from automl_vision.types import UsageError

T = TypeVar("T")


class ConflictError(UsageError):
    """Two plugins registered the same name."""


@dataclass
class Entry(Generic[T]):
    name: str
    obj: T
    plugin: str


class Registry(Generic[T]):
    """Named objects of one kind, in registration order."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}
        self._conflicts: dict[str, list[Entry[T]]] = {}
        self.preferred: dict[str, str] = {}  # name -> plugin the user picked on conflict

    def add(self, name: str, obj: T, plugin: str) -> None:
        entry = Entry(name, obj, plugin)
        if name in self._entries and self._entries[name].plugin != plugin:
            self._conflicts.setdefault(name, [self._entries[name]]).append(entry)
            return
        self._entries[name] = entry

    def _resolve(self, name: str) -> Entry[T]:
        if name in self._conflicts:
            candidates = self._conflicts[name]
            pick = self.preferred.get(name)
            for entry in candidates:
                if entry.plugin == pick:
                    return entry
            owners = ", ".join(e.plugin for e in candidates)
            raise ConflictError(
                f"{self.kind} {name!r} is registered by more than one plugin ({owners}). "
                f"Pick one with --prefer {name}=PLUGIN, or uninstall one of them."
            )
        return self._entries[name]

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise UsageError(self.unknown_message(name))
        return self._resolve(name).obj

    def plugin_of(self, name: str) -> str:
        return self._resolve(name).plugin

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(name, list(self._entries), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        known = ", ".join(sorted(self._entries)) or "none"
        return f"unknown {self.kind} {name!r}.{hint} Known: {known}."

    def names(self, pattern: str = "*") -> list[str]:
        return [n for n in self._entries if fnmatch.fnmatchcase(n, pattern)]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return [(n, self._resolve(n).obj) for n in self._entries if n not in self._conflicts or n in self.preferred]

    def by_plugin(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for entry in self._entries.values():
            out.setdefault(entry.plugin, []).append(entry.name)
        for name, entries in self._conflicts.items():
            for entry in entries[1:]:
                out.setdefault(entry.plugin, []).append(name)
        return out

    def conflicts(self) -> dict[str, list[str]]:
        return {n: [e.plugin for e in es] for n, es in self._conflicts.items()}
