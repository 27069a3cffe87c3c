"""Reading a space file (``--space``): YAML text to ``{"a.b": value}``, nothing more.

Kept apart from :mod:`automl_vision.search.space_file` (which checks the values against the
effective space and applies them), so that resolving the settings (``settings.py``) can read
the file at once, exit 2 on bad YAML, without importing the search.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from automl_vision.types import UsageError

RANGE_KEYS = ("low", "high", "log", "step")


def load(source: str | Path | dict[str, Any]) -> dict[str, Any]:
    """Read a space file (or take a mapping) and flatten it to ``{"a.b": value}``.

    Raises:
        UsageError: the file is missing, is not YAML, or is not a mapping.
    """
    import yaml

    where = "space"
    if isinstance(source, dict):
        raw = source
    else:
        path = Path(source)
        where = str(path)
        if not path.is_file():
            raise UsageError(f"--space {path}: no such file; write a YAML mapping of parameter names, "
                             "see 'automl-vision space show' for the names")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            raise UsageError(f"{path}: not valid YAML{at}: {getattr(exc, 'problem', None) or exc}") from None
        except UnicodeDecodeError:
            raise UsageError(f"{path}: not a text file (expected YAML)") from None
        if raw is None:
            raw = {}
    if not isinstance(raw, dict):
        raise UsageError(f"{where}: expected a mapping of parameter names to values, got {type(raw).__name__}")
    flat: dict[str, Any] = {}
    _flatten(raw, "", flat, where)
    return flat


def _is_range(value: Any) -> bool:
    """A mapping with ``low`` or ``high`` is a range (its other keys are checked later);
    any other mapping is a group of parameters (``lr: {adamw: ...}``)."""
    return isinstance(value, dict) and any(k in value for k in ("low", "high"))


def _flatten(node: dict[str, Any], prefix: str, out: dict[str, Any], where: str) -> None:
    for key, value in node.items():
        if not isinstance(key, str) or not key:
            raise UsageError(f"{where}: {prefix}{key!r}: keys must be parameter names (text)")
        name = f"{prefix}{key}"
        if isinstance(value, dict) and not _is_range(value):
            if not value:
                raise UsageError(f"{where}: {name}: empty mapping; give choices, a value or {{low, high}}")
            _flatten(value, name + ".", out, where)
        else:
            out[name] = value
