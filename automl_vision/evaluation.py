"""Computing every registered metric, and the confusion matrix, from probabilities."""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from automl_vision.plugins import PluginManager

log = logging.getLogger(__name__)
# metrics already warned about in this process: a metric that fails once fails every epoch
_WARNED: set[str] = set()


def _warn_once(name: str, message: str) -> None:
    if name not in _WARNED:
        _WARNED.add(name)
        log.warning("%s (warned once; it is left out wherever it fails again)", message)


def check_requirements(objectives: list[str], pm: PluginManager, num_classes: int) -> None:
    """Refuse, before any trial, an objective metric that this data cannot give.

    Raises:
        UsageError: naming the metric, its plugin and what it needs.
    """
    from automl_vision.types import UsageError

    for name in objectives:
        metric = pm.metrics.get(name) if name in pm.metrics else None
        if metric is not None and num_classes < metric.min_classes:
            raise UsageError(
                f"--metric {name}: metric {name!r} (plugin {pm.metrics.plugin_of(name)}) needs at least "
                f"{metric.min_classes} classes and this data has {num_classes}; choose another metric "
                "(automl-vision plugins lists them)"
            )


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
            _warn_once(name, f"metric {name} (plugin {pm.metrics.plugin_of(name)}) failed: {type(exc).__name__}: {exc}")
            continue
        if not math.isfinite(value):
            _warn_once(name, f"metric {name} (plugin {pm.metrics.plugin_of(name)}) returned {value}")
        out[name] = value
    return out


def expected_calibration_error(y: np.ndarray, probs: np.ndarray, bins: int = 15) -> float:
    """ECE with equal-width confidence bins: the share-weighted mean of ``|confidence -
    accuracy|`` per bin (the built-in ``ece`` metric, and the calibration step's measure)."""
    probs = np.asarray(probs, dtype=np.float64)
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == np.asarray(y)).astype(float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        mask = (conf > lo) & (conf <= hi)
        if mask.any():
            ece += mask.mean() * abs(conf[mask].mean() - correct[mask].mean())
    return float(ece)


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


def wilson_interval(accuracy: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of an accuracy measured on ``n`` images.

    So that "0.89 on 37 images" reads as 0.75-0.96: the interval is what a selection on
    a few dozen validation images can and cannot tell. (One closed-form formula; the
    libraries that have it, statsmodels among them, are not dependencies.)
    """
    if n <= 0 or not math.isfinite(accuracy):
        return (float("nan"), float("nan"))
    p = min(1.0, max(0.0, accuracy))
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))
