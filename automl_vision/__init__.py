"""automl-vision: plugin-based AutoML model selection for image classification.

The public API is small: :func:`search` runs a search, :func:`load` opens a finished
run as a predictor, and :data:`hookimpl` marks plugin hook implementations.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from automl_vision.hookspecs import hookimpl  # noqa: E402  (cheap: pluggy only)
from automl_vision import search  # noqa: E402  (a callable package: automl_vision.search(data, ...))

if TYPE_CHECKING:  # pragma: no cover
    from automl_vision.predict import Predictor

__all__ = ["__version__", "hookimpl", "search", "load"]


def load(run_dir: str, model: str = "auto", plugins: list[str] | None = None) -> "Predictor":
    """Open a finished run as a predictor with ``predict`` and ``predict_proba``.

    Opening a run never runs code from it: a plugin the run was searched with (a model
    family of its own) is loaded only when installed or named in ``plugins`` (module
    names or ``.py`` files, as ``--plugin``).
    """
    from automl_vision.predict import Predictor

    return Predictor.from_run(run_dir, model=model, plugins=plugins)
