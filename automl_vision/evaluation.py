"""Computing every registered metric, and the confusion matrix, from probabilities."""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from automl_vision.plugins import PluginManager

log = logging.getLogger(__name__)


def compute_metrics(y_true: np.ndarray, probs: np.ndarray, pm: PluginManager) -> dict[str, float]:
    """Every registered metric that applies to this number of classes.

    A metric whose function raises is left out and logged with its plugin's name; it
    never fails the trial (unless it is the objective, which the caller checks).
    """
    out: dict[str, float] = {}
    probs = np.asarray(probs, dtype=np.float64)
    probs = probs / np.clip(probs.sum(axis=1, keepdims=True), 1e-12, None)
    k = probs.shape[1]
    for name, metric in pm.metrics.items():
        if k < metric.min_classes:
            continue
        try:
            value = float(metric.fn(y_true, probs))
        except Exception as exc:
            log.warning("metric %s (plugin %s) failed: %s", name, pm.metrics.plugin_of(name), exc)
            continue
        if not math.isfinite(value):
            log.warning("metric %s returned %s", name, value)
        out[name] = value
    return out


def per_class(y_true: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict[str, Any]:
    pred = probs.argmax(axis=1)
    labels = np.arange(len(classes))
    p, r, f, s = precision_recall_fscore_support(y_true, pred, labels=labels, zero_division=0)
    return {
        "confusion_matrix": confusion_matrix(y_true, pred, labels=labels).tolist(),
        "per_class": [
            {"class": c, "precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, c in enumerate(classes)
        ],
    }


def is_better(a: float, b: float | None, direction: str) -> bool:
    if b is None or (isinstance(b, float) and math.isnan(b)):
        return True
    return a > b if direction == "maximize" else a < b
