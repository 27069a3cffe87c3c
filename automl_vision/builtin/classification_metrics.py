"""Built-in metrics: accuracy, balanced accuracy, macro precision/recall/F1, top-5,
log loss and expected calibration error, computed with scikit-learn."""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

from automl_vision.evaluation import expected_calibration_error
from automl_vision.hookspecs import hookimpl
from automl_vision.types import Metric


def _pred(probs: np.ndarray) -> np.ndarray:
    return probs.argmax(axis=1)


def accuracy(y, p):
    return float(skm.accuracy_score(y, _pred(p)))


def balanced_accuracy(y, p):
    return float(skm.balanced_accuracy_score(y, _pred(p)))


def _macro(fn):
    def metric(y, p):
        return float(fn(y, _pred(p), average="macro", labels=np.arange(p.shape[1]), zero_division=0))

    return metric


def top5_accuracy(y, p):
    return float(skm.top_k_accuracy_score(y, p, k=5, labels=np.arange(p.shape[1])))


def log_loss(y, p):
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1.0)
    return float(skm.log_loss(y, p / p.sum(axis=1, keepdims=True), labels=np.arange(p.shape[1])))


METRICS = [
    Metric("accuracy", "maximize", accuracy, description="share of correct top-1 predictions"),
    Metric("balanced_accuracy", "maximize", balanced_accuracy, description="mean recall over classes"),
    Metric("f1_macro", "maximize", _macro(skm.f1_score), description="unweighted mean F1 over classes"),
    Metric("precision_macro", "maximize", _macro(skm.precision_score), description="unweighted mean precision"),
    Metric("recall_macro", "maximize", _macro(skm.recall_score), description="unweighted mean recall"),
    Metric("top5_accuracy", "maximize", top5_accuracy, min_classes=6, description="true class among the 5 most likely"),
    Metric("log_loss", "minimize", log_loss, description="cross-entropy of the predicted probabilities"),
    Metric("ece", "minimize", expected_calibration_error, description="expected calibration error (15 bins)"),
]


@hookimpl
def register_metrics(register):
    for metric in METRICS:
        register(metric)
