"""The search: study, space, objective, budget, workers and the final step.

This package is also the public function ``automl_vision.search(data, out=None, **options)``:
the package object is callable, so the function and the sub-package share one name
without one shadowing the other (importing ``automl_vision.search.run`` would otherwise
replace a function of that name on the ``automl_vision`` package).
"""

from __future__ import annotations

import sys
import types
from typing import Any


class _CallableSearchPackage(types.ModuleType):
    def __call__(self, data: str, out: str | None = None, **options: Any) -> dict[str, Any]:
        """Run a search on ``data`` and return the final report (``final/report.json``).

        Keyword options are the command line's, with underscores: ``time_budget="5m"``,
        ``n_trials=20``, ``max_epochs=10``, ``image_size=64``, ``metric="accuracy"``,
        ``seed=0``, ``models="cnn,resnet18"``, ``device="auto"``; ``overwrite=True`` is
        ``--overwrite``. A report with an ``error`` key delivered nothing.
        """
        from automl_vision.settings import settings_from_options
        from automl_vision.search.run import run_search

        overwrite = bool(options.pop("overwrite", False))
        settings = settings_from_options(data, out, **options)
        return run_search(settings, argv=["automl_vision.search", str(data)], plain=True, overwrite=overwrite)


sys.modules[__name__].__class__ = _CallableSearchPackage
