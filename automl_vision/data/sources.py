"""Resolving a data location to a dataset through the registered dataset sources."""

from __future__ import annotations

import re

from automl_vision.plugins import PluginManager
from automl_vision.types import Dataset, DatasetSource, DataError, UsageError

_SCHEME = re.compile(r"^([a-z][a-z0-9_-]*):(?!//)(.*)$", re.I)


def resolve_source(location: str, pm: PluginManager) -> tuple[DatasetSource, str]:
    """The source for ``location`` and the location to pass it (scheme removed).

    ``NAME:REST`` goes to the source NAME (a single letter is a Windows drive, not a
    scheme); anything else to the first source whose ``detect`` accepts it.
    """
    m = _SCHEME.match(location)
    if m and len(m.group(1)) > 1:
        name, rest = m.group(1).lower(), m.group(2)
        if name in pm.datasets:
            return pm.datasets.get(name), rest
        raise UsageError(pm.datasets.unknown_message(name) + " Install the plugin that provides it, or pass a folder.")
    for name, source in pm.datasets.items():
        if source.detect is not None:
            try:
                if source.detect(location):
                    return source, location
            except Exception:
                continue
    raise UsageError(f"no dataset source understands {location!r}; known sources: {', '.join(pm.datasets)}")


def load_dataset(location: str, pm: PluginManager) -> Dataset:
    source, rest = resolve_source(location, pm)
    try:
        dataset = source.load(rest)
    except (UsageError, DataError):
        raise
    except Exception as exc:
        plugin = pm.datasets.plugin_of(source.name)
        raise DataError(f"dataset source {source.name!r} (plugin {plugin}) failed to load {location!r}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(dataset, Dataset):
        raise DataError(f"dataset source {source.name!r} returned {type(dataset).__name__}, expected automl_vision.types.Dataset")
    return dataset
