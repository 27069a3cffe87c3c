"""Calibration: temperature scaling fitted on validation, and expected calibration error.

Temperature scaling (Guo et al., 2017) divides the log-probabilities by one scalar
``T`` before the softmax: ``p_T = softmax(log(p) / T)``. For a single network this is
``softmax(logits / T)``; for an ensemble it is applied to the weighted soft vote. ``T``
is chosen to minimise the negative log-likelihood on the validation split, so the
predicted class never changes (accuracy is untouched) but the probabilities mean what
they say: of the images predicted with 80 % confidence, about 80 % are right.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

from automl_vision.evaluation import expected_calibration_error  # noqa: F401  (the step measures with it)

# far beyond what a trained network needs; keeps the search bounded
T_MIN, T_MAX = 0.05, 20.0


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log(probs) / temperature)`` row by row (``float64``)."""
    if temperature == 1.0:
        return np.asarray(probs, dtype=np.float64)
    logp = np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-30, None))
    return np.exp(log_softmax(logp / temperature, axis=1))


def nll(probs: np.ndarray, y: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true classes after temperature scaling."""
    logp = np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-30, None))
    scaled = log_softmax(logp / temperature, axis=1)
    return float(-scaled[np.arange(len(y)), y].mean())


def fit_temperature(probs: np.ndarray, y: np.ndarray) -> float:
    """The temperature in [0.05, 20] that minimises the NLL of ``probs`` on labels ``y``.

    Searched on ``log T`` (bounded Brent), where the NLL is smooth and unimodal in
    practice. Returns 1.0 when there is nothing to fit (no samples).
    """
    y = np.asarray(y, dtype=np.int64)
    if len(y) == 0:
        return 1.0
    res = minimize_scalar(lambda lt: nll(probs, y, float(np.exp(lt))), bounds=(np.log(T_MIN), np.log(T_MAX)),
                          method="bounded", options={"xatol": 1e-4})
    t = float(np.exp(res.x))
    # never return a temperature that is worse than leaving the probabilities alone
    return t if nll(probs, y, t) < nll(probs, y, 1.0) else 1.0
