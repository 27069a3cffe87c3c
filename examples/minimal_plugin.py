"""A complete automl-vision plugin in one file: a metric and a search event.

Try it without installing anything:

    automl-vision plugins --plugin examples/minimal_plugin.py
    automl-vision search DATA_DIR --plugin examples/minimal_plugin.py --metric error_rate

It adds the metric ``error_rate`` (share of wrong top-1 predictions; lower is better),
which then shows in the leaderboard as ``val_error_rate`` and can be the objective, and
prints one line to stderr when a trial ends.
"""

import sys

import numpy as np

from automl_vision import hookimpl
from automl_vision.types import Metric


def error_rate(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Share of samples whose most likely class is not the true one."""
    return float(np.mean(probs.argmax(axis=1) != y_true))


@hookimpl
def register_metrics(register):
    register(Metric(name="error_rate", direction="minimize", fn=error_rate,
                    description="share of wrong top-1 predictions"))


@hookimpl
def on_trial_end(record):
    # hooks may take only the arguments they need, by name
    metrics = record.get("metrics") or {}
    print(f"[minimal_plugin] trial {record['number']} {record['state']}: "
          f"error_rate={metrics.get('error_rate', float('nan')):.3f}", file=sys.stderr)
