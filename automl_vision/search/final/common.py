"""What the steps after the search share: the run's options, plan and deadline, fp32
scoring, and writing ``best/``."""

from __future__ import annotations

import os
import shutil
from typing import Any

import numpy as np

from automl_vision.data.prepare import PreparedData
from automl_vision.models import write_preprocessing
from automl_vision.predict import ProbabilityModel
from automl_vision.rundir import CONFIG, METRICS, MODEL_JSON, PREPROCESSING, WEIGHTS, RunDir, write_json
from automl_vision.settings import SearchOptions
from automl_vision.training.device import ExecPath


def run_options(run_dir: RunDir) -> SearchOptions:
    """The options the search was started with (the final steps read ``refit``, ``tta``, ``calibrate``)."""
    settings = (run_dir.read_run() or {}).get("settings") or {}
    return SearchOptions.from_dict(settings.get("options"))


def run_plan(run_dir: RunDir):
    """The :class:`~automl_vision.search.budget.BudgetPlan` of the latest search session, if stored."""
    from automl_vision.search.budget import BudgetPlan

    return BudgetPlan.from_dict((run_dir.read_run() or {}).get("budget"))


def run_deadline(run_dir: RunDir) -> float | None:
    """The absolute deadline of the latest search session, if it had a time budget."""
    sessions = (run_dir.read_run() or {}).get("sessions") or []
    if sessions and sessions[-1].get("time_budget"):
        return float(sessions[-1]["started"]) + float(sessions[-1]["time_budget"])
    return None


def fp32(path: ExecPath) -> ExecPath:
    """The final evaluation runs in fp32 on the search's device: the numbers reported are
    then the ones ``predict`` reproduces, whatever autocast dtype the trials used."""
    return ExecPath(path.device, "fp32", path.channels_last, "final evaluation in fp32")


def split_probs(module: ProbabilityModel, data: PreparedData, split: str, path: ExecPath) -> np.ndarray:
    """Probabilities of ``module`` on the cached images of ``split``."""
    arrays = [data.split_images(split, size) for size in module.sizes]
    return module.probs(arrays, device=path.torch_device, channels_last=path.channels_last)


def write_best(run_dir: RunDir, src, fallback, spec: dict[str, Any]) -> None:
    """Replace ``best/`` with the model in ``src`` (files missing there come from
    ``fallback``) and the model description ``spec``; readers never see half of it."""
    tmp = run_dir.best_leftover(os.getpid(), "tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in (WEIGHTS, CONFIG, METRICS):
        f = src / name
        if not f.exists():
            f = fallback / name
        if f.exists():
            shutil.copy2(f, tmp / name)
    write_json(tmp / MODEL_JSON, spec)
    write_preprocessing(tmp / PREPROCESSING, spec)
    old = run_dir.best_leftover(os.getpid(), "old")
    if run_dir.best_dir.exists():
        run_dir.best_dir.rename(old)
    tmp.rename(run_dir.best_dir)
    shutil.rmtree(old, ignore_errors=True)
