"""automl-vision: plugin-based AutoML model selection for image classification.

The public API is small: :func:`search` runs a search, :func:`load` opens a finished
run as a predictor, and :data:`hookimpl` marks plugin hook implementations.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from automl_vision.hookspecs import hookimpl  # noqa: E402  (cheap: pluggy only)

if TYPE_CHECKING:  # pragma: no cover
    from automl_vision.predict import Predictor

__all__ = ["__version__", "hookimpl", "search", "load"]


def search(data: str, out: str | None = None, **options: Any) -> dict[str, Any]:
    """Run a search on ``data`` and return the final report (``final/report.json``).

    Keyword options are the command line's, with underscores: ``time_budget="5m"``,
    ``n_trials=20``, ``max_epochs=10``, ``image_size=64``, ``metric="accuracy"``, ``seed=0``,
    ``models="cnn,resnet18"``, ``device="auto"``.
    """
    from automl_vision.commands.search import settings_from_options
    from automl_vision.search.run import run_search

    settings = settings_from_options(data, out, **options)
    return run_search(settings, argv=["automl_vision.search", data], plain=True)


def load(run_dir: str, model: str = "auto") -> "Predictor":
    """Open a finished run as a predictor with ``predict`` and ``predict_proba``."""
    from automl_vision.predict import Predictor

    return Predictor.from_run(run_dir, model=model)
