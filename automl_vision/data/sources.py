"""Resolving a data location to a dataset through the registered dataset sources.

``NAME:REST`` goes to the source registered as ``NAME``; any other location is offered
to each source's ``detect`` in registration order (built-ins first, then installed
plugins, then ``--plugin`` modules). What a source returns is checked here, so a broken
source fails with its plugin's name instead of somewhere deep in data preparation.
"""

from __future__ import annotations

import os

import re

from automl_vision.plugins import PluginManager
from automl_vision.types import Dataset, DatasetSource, DataError, UsageError

_SCHEME = re.compile(r"^([a-z][a-z0-9_-]*):(?!//)(.*)$", re.I)


def resolve_source(location: str, pm: PluginManager) -> tuple[DatasetSource, str]:
    """The source for ``location`` and the location to pass it (scheme removed).

    ``NAME:REST`` goes to the source NAME (a single letter is a Windows drive, not a
    scheme); anything else to the first source whose ``detect`` accepts it.

    Raises:
        UsageError: no source fits (the message lists the known ones), or the source
            is registered by two plugins and the user has not picked one.
    """
    m = _SCHEME.match(location)
    if m and len(m.group(1)) > 1:
        name, rest = m.group(1).lower(), m.group(2)
        if name in pm.datasets:
            return pm.datasets.get(name), rest
        raise UsageError(f"data {location!r}: " + pm.datasets.unknown_message(name))
    for name in pm.datasets.all_names():
        for entry in pm.datasets.candidates(name):
            source = entry.obj
            if source.detect is None:
                continue
            try:
                accepted = bool(source.detect(location))
            except Exception:  # a detect that cannot tell is a "no"
                continue
            if accepted:
                # a conflicting name raises here, naming both plugins
                return pm.datasets.get(name), location
    raise UsageError(
        f"no dataset source understands {location!r}: give a folder of class sub-folders, a .csv manifest, or "
        f"NAME:LOCATION for one of the sources {', '.join(pm.datasets.all_names())}."
    )


def reloadable(location: str, pm: PluginManager) -> str:
    """``location`` as later commands can load it again from any working directory:
    ``NAME:REST`` naming the source that reads it now (so a later ``detect`` cannot pick
    another one), with ``REST`` made absolute when it is a relative path that exists."""
    source, rest = resolve_source(location, pm)
    if rest and not os.path.isabs(rest) and os.path.exists(rest):
        rest = os.path.abspath(rest)
    return f"{source.name}:{rest}"


def load_dataset(location: str, pm: PluginManager) -> Dataset:
    """Load ``location`` with its dataset source and check what the source returned.

    Raises:
        UsageError: no source fits.
        DataError: the source failed or returned something that is not a dataset.
    """
    source, rest = resolve_source(location, pm)
    plugin = pm.datasets.plugin_of(source.name)
    what = f"dataset source {source.name!r} (plugin {plugin})"
    try:
        dataset = source.load(rest)
    except (UsageError, DataError):
        raise
    except Exception as exc:
        raise DataError(f"{what} failed to load {location!r}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(dataset, Dataset):
        raise DataError(f"{what} returned {type(dataset).__name__}, expected automl_vision.types.Dataset")
    n = len(dataset.classes)
    for sample in dataset.samples:
        if not isinstance(sample.label, (int,)) and not hasattr(sample.label, "__index__"):
            raise DataError(f"{what}: sample {sample.key!r} has label {sample.label!r}; labels are class indices")
        if not 0 <= int(sample.label) < n:
            raise DataError(f"{what}: sample {sample.key!r} has label {sample.label} but there are {n} classes")
        if (sample.path is None) == (sample.array is None):
            raise DataError(f"{what}: sample {sample.key!r} must have exactly one of path and array")
    return dataset
