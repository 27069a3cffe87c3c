"""The choices made on validation for each candidate deliverable (the best single model and the
ensemble): flip test-time augmentation, then a temperature (calibration)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from automl_vision import calibration
from automl_vision.data.prepare import PreparedData
from automl_vision.evaluation import compute_metrics, is_better
from automl_vision.plugins import PluginManager
from automl_vision.predict import ProbabilityModel
from automl_vision.rundir import RunDir, tta_rules
from automl_vision.search.final.common import split_probs
from automl_vision.search.final.selection import SELECTION_P, significantly_better, trained_with_flips
from automl_vision.training.device import ExecPath


@dataclass
class Candidate:
    """A candidate deliverable as the final steps shape it on validation.

    Attributes:
        name: ``"best"`` or ``"ensemble"``.
        trials: the trials whose networks it combines.
        build: ``build(nets, tta, temperature) -> ProbabilityModel`` over the loaded networks.
        val_p: its validation probabilities, as it will be delivered (after TTA and temperature).
    """

    name: str
    trials: list[int]
    build: Callable[..., ProbabilityModel]
    val_p: np.ndarray
    tta: bool = False
    temperature: float = 1.0


def decide_tta(requested: bool, candidates, nets, data: PreparedData, eval_path: ExecPath, pm: PluginManager,
               metric: str, m, run_dir: RunDir, log: Callable[[str], None]) -> dict[str, Any]:
    """Keep flip test-time augmentation for a candidate only when validation supports it; the
    report's ``tta`` section. A tie on a few dozen images is decided by the finer log-loss;
    networks trained on flipped images keep it unless it is significantly worse (sign test)."""
    info: dict[str, Any] = {"requested": requested}
    if not requested:
        return info
    y_val = data.labels[data.split_index["val"]]
    for cand in candidates:
        plain = split_probs(cand.build(nets, False), data, "val", eval_path)
        flipped = split_probs(cand.build(nets, True), data, "val", eval_path)
        without, with_ = compute_metrics(y_val, plain, pm), compute_metrics(y_val, flipped, pm)
        used = is_better(with_[metric], without[metric], m.direction)
        if with_[metric] == without[metric] and "log_loss" in with_:
            # a tie on a few dozen validation images says nothing: the finer log-loss decides
            used = with_["log_loss"] < without["log_loss"]
        rule = "kept only where it improves the objective on validation (on a tie: the log-loss)"
        if metric == "accuracy" and all(trained_with_flips(run_dir, n) for n in cand.trials):
            # networks trained on flipped images: flip TTA stays unless validation says it hurts
            used = not significantly_better(y_val, plain, flipped)
            rule = ("networks trained on flipped images keep it unless their predictions without it are "
                    f"significantly better on validation (sign test, p < {SELECTION_P})")
        info[cand.name] = {"used": used, "val_without": without, "val_with": with_, "rule": rule}
        if used:
            cand.tta, cand.val_p = True, flipped
    kept = {c.name: "kept" if c.tta else "not kept" for c in candidates}
    rules = tta_rules(info)
    rule = rules[0] if len(rules) == 1 else "the rule of each candidate is in the report"
    log(f"test-time augmentation (flip): best {kept.get('best')}, ensemble {kept.get('ensemble')} "
        f"({rule})")
    return info


def calibrate_candidates(requested: bool, candidates, y_val: np.ndarray, log: Callable[[str], None]) -> dict[str, Any]:
    """Fit one temperature per candidate on its validation probabilities (applied to them); the
    report's ``calibration`` section."""
    info: dict[str, Any] = {"requested": requested}
    if not requested:
        return info
    for cand in candidates:
        t = calibration.fit_temperature(cand.val_p, y_val)
        info[cand.name] = {
            "temperature": t,
            "val_ece_before": calibration.expected_calibration_error(y_val, cand.val_p),
            "val_ece_after": calibration.expected_calibration_error(y_val, calibration.apply_temperature(cand.val_p, t)),
            "val_nll_before": calibration.nll(cand.val_p, y_val),
            "val_nll_after": calibration.nll(cand.val_p, y_val, t),
        }
        cand.temperature, cand.val_p = t, calibration.apply_temperature(cand.val_p, t)
    temps = {c.name: c.temperature for c in candidates}
    log(f"calibration: temperature {temps.get('best', 1.0):.3f} (best), {temps.get('ensemble', 1.0):.3f} (ensemble), "
        "fitted on validation")
    return info
