"""After the search: pick the deliverable, touch the test split once, write the report.

1. the best complete trial by the validation objective is the best single model;
2. an ensemble is selected on the trials' validation probabilities (greedy selection
   with replacement, or top-k averaging);
3. optionally, flip test-time augmentation is tried on validation and kept for a model
   only when it improves the objective there;
4. optionally, a temperature is fitted on validation (calibration);
5. optionally, the chosen configurations are retrained on train + validation with the
   epochs the search found (``--refit``); the choices above stay as made on validation;
6. the best single model and the ensemble are evaluated once on the test split, in
   fp32, with the same :class:`~automl_vision.predict.ProbabilityModel` that
   ``predict``, the Python API and ``export`` use;
7. the deliverable is the ensemble only when it beats the best single model on
   validation; ``final/report.json`` says which and why, ``best/`` holds the best single
   model and ``ensemble.json`` the ensemble.

:func:`finalize` is called at the end of ``automl-vision search`` and by
``automl-vision ensemble RUN_DIR``, which rebuilds the ensemble of a finished or still
running search with other settings.
"""

from __future__ import annotations

import math
import os
import shlex
import shutil
import time
from typing import Any, Callable

import numpy as np
import torch

from automl_vision import calibration
from automl_vision import ensemble as ens
from automl_vision.data.prepare import PreparedData
from automl_vision.evaluation import compute_metrics, is_better, per_class
from automl_vision.models import build_model, load_model, save_model, write_preprocessing
from automl_vision.plugins import PluginManager
from automl_vision.predict import ProbabilityModel
from automl_vision.progress import make_console
from automl_vision.rundir import (CONFIG_SCHEMA, FINAL_FIT, MODEL_SCHEMA, REPORT_SCHEMA, RunDir, read_json, write_json,
                                  write_npy)
from automl_vision.settings import format_duration
from automl_vision.training.device import ExecPath
from automl_vision.types import UsageError

REFIT = "refit"


def run_options(run_dir: RunDir) -> dict[str, Any]:
    """The final-step options the search was started with (``--refit``, ``--tta``, ``--calibrate``)."""
    settings = (run_dir.read_run() or {}).get("settings") or {}
    return dict(settings.get("options") or {})


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
    idx = data.split_index[split]
    arrays = [np.asarray(data.images(size)[idx]) for size in module.sizes]
    return module.probs(arrays, device=path.torch_device, channels_last=path.channels_last)


# ------------------------------------------------------------------ data of a run
# ------------------------------------------------------------------ refit
def trial_config(config: dict[str, Any], epochs: int):
    """The :class:`TrialConfig` of a trial's ``config.json``, with ``epochs`` epochs."""
    from dataclasses import fields

    from automl_vision.training.augment import policy_from_dict
    from automl_vision.training.trainer import TrialConfig

    names = {f.name for f in fields(TrialConfig)} - {"aug"}
    cfg = TrialConfig(**{k: v for k, v in config.items() if k in names})
    cfg.aug = policy_from_dict(config.get("aug") or {})
    cfg.epochs = int(epochs)
    return cfg


def retrain(run_dir: RunDir, number: int, data: PreparedData, pm: PluginManager, path: ExecPath,
            idx: np.ndarray, epochs: int, out, kind: str, log: Callable[[str], None], plan=None,
            abort=None, warm: bool = False, keep_from: float | None = None) -> dict[str, Any]:
    """Train trial ``number``'s configuration once more, on the images ``idx``, into ``out``.

    The seed (so the initial weights), the normalisation and every hyperparameter are the
    trial's; ``epochs`` sets the schedule (``plan``/``abort`` as in :func:`train`). With
    ``warm`` training starts from the trial's trained weights instead (a warm restart of
    its schedule). The model's ``model.json`` gets ``kind`` (``refit`` or ``final_fit``)
    with what was done. With ``keep_from``, a run that ``abort`` stops after that share
    of its schedule's steps is kept (its learning rate has all but reached the end of its
    decay); otherwise :class:`BudgetExceeded` propagates.
    """
    from automl_vision.training.trainer import BudgetExceeded, TensorData, train

    tdir = run_dir.trial_dir(number)
    spec = read_json(tdir / "model.json", MODEL_SCHEMA)
    config = read_json(tdir / "config.json", CONFIG_SCHEMA)
    if not config or not spec:
        raise RuntimeError(f"trial {number} has no config.json or model.json to train again from")
    cfg = trial_config(config, epochs)
    t0 = time.time()
    val = data.split_index["val"][:64]  # the trainer reports on these after each epoch; nothing is decided on them
    x_train, x_val = data.training_arrays(idx, val, cfg.image_size, log)
    tensors = TensorData.from_arrays(x_train, data.labels[idx], x_val, data.labels[val], len(data.classes),
                                     mean=spec["mean"], std=spec["std"])
    torch.manual_seed(cfg.seed)  # the same initial weights as the trial
    model = load_model(tdir, pm)[0] if warm else build_model(spec, pm)
    stopped = None
    try:
        result = train(model, cfg, tensors, path, plan=plan, abort=abort)
        net, epochs_run = result.model, result.epochs_run
    except BudgetExceeded as exc:
        if keep_from is None or exc.model is None or exc.progress < keep_from:
            raise
        net, epochs_run = exc.model, exc.epochs
        stopped = f"{exc} at {exc.progress:.0%} of its schedule (kept: its learning rate had decayed)"
        log(f"{kind.replace('_', ' ')}: stopped by the time budget at {exc.progress:.0%} of its schedule; kept")
    info = {"of_trial": number, "epochs": epochs_run, "images": int(len(idx)), "seconds": time.time() - t0,
            "warm_start": warm}
    if stopped:
        info["stopped"] = stopped
    save_model(out, net.to("cpu"), {**spec, kind: info})
    write_json(out / "config.json", {**config, "epochs": epochs_run, f"{kind}_of": number})
    return info


def refit_trial(run_dir: RunDir, number: int, data: PreparedData, pm: PluginManager, path: ExecPath,
                log: Callable[[str], None]) -> dict[str, Any]:
    """Retrain trial ``number``'s configuration on train + validation into ``refit/<n>/``.

    The number of epochs is the one the trial ran (its schedule ended there), the
    seed, normalisation and every hyperparameter are the trial's. An existing refit of
    the same trial is reused.
    """
    tdir = run_dir.trial_dir(number)
    out = run_dir.path / REFIT / tdir.name
    status = run_dir.read_trial(number) or {}
    epochs = int(status.get("epochs") or len(run_dir.read_history(number)) or 1)
    done = read_json(out / "model.json", MODEL_SCHEMA)
    if done and (done.get("refit") or {}).get("of_trial") == number and (out / "weights.safetensors").exists():
        return {"trial": number, "dir": f"{REFIT}/{tdir.name}", "epochs": epochs, "reused": True, "seconds": 0.0}
    idx = np.sort(np.concatenate([data.split_index["train"], data.split_index["val"]]))
    log(f"refit: trial {number} ({(read_json(tdir / 'model.json', MODEL_SCHEMA) or {}).get('label', '')}) on {len(idx)} "
        f"train+val images for {epochs} epochs")
    info = retrain(run_dir, number, data, pm, path, idx, epochs, out, "refit", log)
    return {"trial": number, "dir": f"{REFIT}/{tdir.name}", "epochs": epochs, "reused": False,
            "seconds": info["seconds"]}


# ------------------------------------------------------------------ final fit (small-data regime)
# the most epochs a final fit runs, a bound rather than a target: on 244 photos (hymenoptera, 3 minutes)
# a cap of 400 left half the budget unspent while a hand-written loop ran 661 epochs and won
FINAL_FIT_EPOCH_CAP = 1000
MIN_FINAL_FIT_EPOCHS = 3
# a final fit stopped by the deadline after this share of its (re)planned schedule is delivered: its
# cosine learning rate is within 3% of the end of its decay. Below it the search's own model is
# delivered (on a machine that got busy mid-run, a final fit was thrown away 6 minutes into it)
FINAL_FIT_KEEP_FROM = 0.9


def epoch_seconds_on(run_dir: RunDir, number: int, n_images: int, n_train: int) -> float | None:
    """Seconds one epoch of trial ``number``'s configuration takes on ``n_images`` images,
    from the epochs it ran on ``n_train`` (the first epoch, with its one-off set-up, left out)."""
    import statistics

    hist = run_dir.read_history(number)
    times = [float(h.get("train_seconds") or 0.0) for h in hist[1:]] or [float(h.get("train_seconds") or 0.0) for h in hist]
    times = [t for t in times if t > 0]
    if not times or n_train <= 0:
        return None
    # 10% over the trial's pace: a plan that runs short compresses the schedule's end (flowers, 3 minutes: 50 -> 41)
    return 1.1 * statistics.median(times) * n_images / n_train


def final_fit(run_dir: RunDir, number: int, data: PreparedData, pm: PluginManager, path: ExecPath,
              seconds: float, end: float | None, log: Callable[[str], None]) -> dict[str, Any]:
    """Train trial ``number``'s network further on every labelled image (train, validation
    and test) into ``final_fit/``: a warm restart of its schedule from the weights the
    search trained, for as many epochs as ``seconds`` afford (at most
    :data:`FINAL_FIT_EPOCH_CAP`), finishing by ``end`` (absolute time; None: no limit).

    Returns what was done, or ``{"skipped": why}``; an earlier final fit of the same trial
    is reused.
    """
    from automl_vision.search.budget import Pace
    from automl_vision.search.interrupts import check_interrupt
    from automl_vision.training.trainer import BudgetExceeded

    out = run_dir.path / FINAL_FIT
    idx = np.sort(np.concatenate([data.split_index[name] for name in ("train", "val", "test")]))
    done = read_json(out / "model.json", MODEL_SCHEMA)
    if done and (done.get("final_fit") or {}).get("of_trial") == number and (out / "weights.safetensors").exists():
        return {**done["final_fit"], "dir": FINAL_FIT, "reused": True}
    per_epoch = epoch_seconds_on(run_dir, number, len(idx), len(data.split_index["train"]))
    if per_epoch is None:
        return {"skipped": f"trial {number} has no timed epochs to plan a final fit from"}
    epochs = min(FINAL_FIT_EPOCH_CAP, int(seconds // max(per_epoch, 1e-6)))
    if epochs < MIN_FINAL_FIT_EPOCHS:
        return {"skipped": (f"not enough time left for a final fit ({seconds:.0f}s affords {epochs} epoch(s) of "
                            f"{per_epoch:.1f}s on {len(idx)} images); the search's model is delivered")}

    pace = Pace()

    def plan(epochs_done: int, epoch_seconds: float) -> int:
        # never more than planned (the trainer would stretch the schedule), fewer when epochs run slower
        if end is None:
            return epochs
        return pace.epochs_that_fit(epochs_done, epoch_seconds, end - time.time(), epochs)

    def abort() -> str | None:
        check_interrupt()
        if end is not None and time.time() > end:
            return "time budget reached"
        return None

    log(f"final fit: trial {number}'s network trained further on all {len(idx)} labelled images for {epochs} epochs "
        f"(a warm restart of its schedule, about {format_duration(epochs * per_epoch)})")
    try:
        info = retrain(run_dir, number, data, pm, path, idx, epochs, out, "final_fit", log, plan=plan, abort=abort,
                       warm=True, keep_from=FINAL_FIT_KEEP_FROM)
    except BudgetExceeded as exc:
        shutil.rmtree(out, ignore_errors=True)
        return {"skipped": f"the final fit ran past the time budget ({exc}); the search's model is delivered"}
    return {**info, "planned_epochs": epochs, "dir": FINAL_FIT, "reused": False}


def write_best(run_dir: RunDir, src, fallback, spec: dict[str, Any]) -> None:
    """Replace ``best/`` with the model in ``src`` (files missing there come from
    ``fallback``) and the model description ``spec``; readers never see half of it."""
    tmp = run_dir.path / f".best.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in ("weights.safetensors", "config.json", "metrics.json"):
        f = src / name
        if not f.exists():
            f = fallback / name
        if f.exists():
            shutil.copy2(f, tmp / name)
    write_json(tmp / "model.json", spec)
    write_preprocessing(tmp / "preprocessing.json", spec)
    old = run_dir.path / f".best.{os.getpid()}.old"
    if run_dir.best_dir.exists():
        run_dir.best_dir.rename(old)
    tmp.rename(run_dir.best_dir)
    shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------ selection
# a configuration that beats the portfolio's first entry on validation replaces it only when a
# one-sided sign test over the images where the two disagree says so at this level: on 36 validation
# images a one-image lead decided which augmentation the final fit trained for 600 epochs
SELECTION_P = 0.1


def select_best(trials: list[dict[str, Any]], val: dict[int, np.ndarray], y_val: np.ndarray, metric: str,
                m) -> tuple[int, dict[str, Any]]:
    """The best single trial, and how it was chosen.

    The trial with the best validation ``metric`` wins, except that for accuracy the
    first portfolio configuration to finish (a recipe known to be strong, the prior) is
    kept unless the leader is right on significantly more of the images on which the
    two disagree (sign test, :data:`SELECTION_P`). With a few hundred validation images
    a real lead passes; with a few dozen, one image does not.
    """
    best_n, best_v = None, None
    for n, p in sorted(val.items()):
        v = float(m.fn(y_val, p))
        if best_n is None or is_better(v, best_v, m.direction):
            best_n, best_v = n, v
    info: dict[str, Any] = {"rule": "best validation " + metric, "leader": best_n}
    portfolio = sorted(int(r["number"]) for r in trials if r.get("portfolio") and int(r["number"]) in val)
    if metric != "accuracy" or not portfolio or portfolio[0] == best_n:
        return best_n, info
    prior = portfolio[0]
    wins, losses, p_value = sign_test(y_val, val[best_n], val[prior])
    chosen = best_n if p_value < SELECTION_P else prior
    info.update(rule=f"sign test against the first portfolio configuration (p < {SELECTION_P})", prior=prior,
                wins=wins, losses=losses, p_value=p_value, chosen=chosen, n_val=int(len(y_val)))
    return chosen, info


def sign_test(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[int, int, float]:
    """(wins, losses, p): images that probabilities ``a`` get right and ``b`` wrong, the
    reverse, and the one-sided sign test's p-value that ``a`` is the better of the two."""
    from scipy.stats import binomtest

    right_a, right_b = a.argmax(1) == y, b.argmax(1) == y
    wins, losses = int(np.sum(right_a & ~right_b)), int(np.sum(right_b & ~right_a))
    p = float(binomtest(wins, wins + losses, 0.5, alternative="greater").pvalue) if wins + losses else 1.0
    return wins, losses, p


def significantly_better(y: np.ndarray, a: np.ndarray, b: np.ndarray, level: float = SELECTION_P) -> bool:
    """Whether ``a`` is right on significantly more of the images where it and ``b`` disagree."""
    return sign_test(y, a, b)[2] < level


def trained_with_flips(run_dir: RunDir, number: int) -> bool:
    """Whether trial ``number`` trained on horizontally flipped images (its augmentation)."""
    config = read_json(run_dir.trial_dir(number) / "config.json", CONFIG_SCHEMA) or {}
    return bool((config.get("aug") or {}).get("flip"))


# ------------------------------------------------------------------ finalize
def test_touches(run_dir: RunDir) -> dict[str, Any]:
    """How many times this run's test split has now been scored (this time included), and a
    warning from the second time on: choices made after seeing a test score (another
    ``ensemble`` call, other options) make the next one optimistic. Counted in
    ``final/report.json``, which every scoring rewrites."""
    previous = read_json(run_dir.final_dir / "report.json", REPORT_SCHEMA) or {}
    count = int(previous.get("test_evaluations") or (1 if previous.get("best_test") else 0)) + 1
    if count == 1:
        return {"test_evaluations": 1}
    return {"test_evaluations": count,
            "test_warning": (f"the test split of this run has now been scored {count} times: a choice made after "
                             "seeing an earlier test score makes this one optimistic; for an unbiased figure, score "
                             "the delivered model once on new labelled images (predictor.evaluate or predict)")}


def finalize(run_dir: RunDir, data: PreparedData, pm: PluginManager, path: ExecPath, metric: str,
             method: str = "greedy", max_members: int = 5, log=print, tta: bool | None = None,
             calibrate: bool | None = None, refit: bool | None = None, respect_budget: bool = True,
             final: bool | None = None) -> dict[str, Any]:
    """Select, evaluate and write the deliverable (see the module docstring).

    ``tta``, ``calibrate`` and ``refit`` default to the options the search was started
    with (``run.json``), ``final`` (the final fit on every labelled image) to the
    search's regime (``run.json``'s ``budget``). With ``respect_budget`` a refit that
    would overrun the search's time budget is skipped, and the report says so, and the
    final fit ends by the deadline.
    """
    t0 = time.time()
    opts = run_options(run_dir)
    tta = bool(opts.get("tta")) if tta is None else tta
    calibrate = bool(opts.get("calibrate")) if calibrate is None else calibrate
    refit = bool(opts.get("refit")) if refit is None else refit
    plan = run_plan(run_dir)
    final = bool(plan and plan.final_fit_on) if final is None else final
    if final and refit:
        refit = False  # the final fit trains on train + validation + test: a refit on train + validation adds nothing
    if method not in ens.METHODS:
        raise UsageError(f"--method {method!r}: expected one of {', '.join(ens.METHODS)}")
    m = pm.metrics.get(metric)
    eval_path = fp32(path)
    trials = run_dir.usable_trials()
    report: dict[str, Any] = {"metric": metric, "direction": m.direction, "has_test": data.has_test(), "finished": t0}
    if not trials:
        report["error"] = "no trial finished; nothing to deliver (give the search more time or trials)"
        write_json(run_dir.final_dir / "report.json", report)
        return report
    y_val = data.labels[data.split_index["val"]]
    val = {r["number"]: run_dir.read_val_probs(r["number"]) for r in trials}
    val = {n: p.astype(np.float64) for n, p in val.items() if p is not None and p.shape[0] == len(y_val)}
    if not val:
        report["error"] = ("no finished trial has validation probabilities that match the run's validation split; "
                           "the data may have changed since the search")
        write_json(run_dir.final_dir / "report.json", report)
        return report
    best_n, report["selection"] = select_best(trials, val, y_val, metric, m)
    sel = report["selection"]
    if sel.get("prior") is not None and sel["chosen"] != sel["leader"]:
        log(f"selection: trial {sel['leader']} led on validation, right on {sel['wins']} image(s) where trial "
            f"{sel['prior']} (the first portfolio configuration) was wrong and wrong on {sel['losses']} where it was "
            f"right (p={sel['p_value']:.2f}): not enough to replace it, so trial {sel['prior']} is the best model")
    best_rec = next(r for r in trials if r["number"] == best_n)
    models_of = {r["number"]: r.get("model", "") for r in trials}

    weights = ens.select(method, val, y_val, m.fn, m.direction, max_members=max_members)
    members = sorted(weights, key=lambda n: (-weights[n], n))
    needed = sorted(set(members) | {best_n})
    nets: dict[int, tuple[torch.nn.Module, dict[str, Any]]] = {n: load_model(run_dir.trial_dir(n), pm) for n in needed}

    def best_module(nets, tta_on=False, temperature=1.0) -> ProbabilityModel:
        net, spec = nets[best_n]
        return ProbabilityModel([net], [spec], [1.0], temperature=temperature, tta=tta_on)

    def ens_module(nets, tta_on=False, temperature=1.0) -> ProbabilityModel:
        return ProbabilityModel([nets[n][0] for n in members], [nets[n][1] for n in members],
                                [weights[n] for n in members], temperature=temperature, tta=tta_on)

    # validation probabilities of both candidates, as the trials produced them
    best_val_p = val[best_n]
    ens_val_p = ens.combine(val, weights)
    tta_info: dict[str, Any] = {"requested": tta}
    best_tta = ens_tta = False
    if tta:
        for name, build, who in (("best", best_module, [best_n]), ("ensemble", ens_module, members)):
            plain = split_probs(build(nets, False), data, "val", eval_path)
            flipped = split_probs(build(nets, True), data, "val", eval_path)
            without, with_ = compute_metrics(y_val, plain, pm), compute_metrics(y_val, flipped, pm)
            used = is_better(with_[metric], without[metric], m.direction)
            if with_[metric] == without[metric] and "log_loss" in with_:
                # a tie on a few dozen validation images says nothing: the finer log-loss decides
                used = with_["log_loss"] < without["log_loss"]
            rule = "better on validation"
            if metric == "accuracy" and all(trained_with_flips(run_dir, n) for n in who):
                # networks trained on flipped images: flip TTA stays unless validation says it hurts
                used = not significantly_better(y_val, plain, flipped)
                rule = f"kept unless predictions without it are significantly better (sign test, p < {SELECTION_P})"
            tta_info[name] = {"used": used, "val_without": without, "val_with": with_, "rule": rule}
            if used:
                if name == "best":
                    best_tta, best_val_p = True, flipped
                else:
                    ens_tta, ens_val_p = True, flipped
        log(f"test-time augmentation (flip): best {'kept' if best_tta else 'not kept'}, "
            f"ensemble {'kept' if ens_tta else 'not kept'} (decided on validation {metric})")

    cal_info: dict[str, Any] = {"requested": calibrate}
    best_t = ens_t = 1.0
    if calibrate:
        best_t = calibration.fit_temperature(best_val_p, y_val)
        ens_t = calibration.fit_temperature(ens_val_p, y_val)
        for name, t, p in (("best", best_t, best_val_p), ("ensemble", ens_t, ens_val_p)):
            cal_info[name] = {
                "temperature": t,
                "val_ece_before": calibration.expected_calibration_error(y_val, p),
                "val_ece_after": calibration.expected_calibration_error(y_val, calibration.apply_temperature(p, t)),
                "val_nll_before": calibration.nll(p, y_val),
                "val_nll_after": calibration.nll(p, y_val, t),
            }
        best_val_p = calibration.apply_temperature(best_val_p, best_t)
        ens_val_p = calibration.apply_temperature(ens_val_p, ens_t)
        log(f"calibration: temperature {best_t:.3f} (best), {ens_t:.3f} (ensemble), fitted on validation")

    single_val_metrics = compute_metrics(y_val, best_val_p, pm)
    ens_val_metrics = compute_metrics(y_val, ens_val_p, pm)
    use_ensemble = len(weights) > 1 and is_better(ens_val_metrics[metric], single_val_metrics[metric], m.direction)

    # refit on train + validation: choices stay as made on validation
    refit_info: dict[str, Any] = {"requested": refit}
    dirs = {n: str(run_dir.trial_dir(n).relative_to(run_dir.path)) for n in needed}
    n_train, n_val = len(data.split_index["train"]), len(data.split_index["val"])
    estimate = sum(float((run_dir.read_trial(n) or {}).get("seconds") or 0.0) for n in needed) * (n_train + n_val) / max(1, n_train)
    refit_info["estimate_seconds"] = estimate
    refit_info["command"] = f"automl-vision ensemble {shlex.quote(str(run_dir.path))} --refit"
    if refit:
        deadline = run_deadline(run_dir) if respect_budget else None
        if deadline is not None and time.time() + estimate > deadline:
            refit_info["skipped"] = (f"not enough time left in the search's time budget (refit needs about "
                                     f"{estimate:.0f}s, {max(0.0, deadline - time.time()):.0f}s left); run "
                                     f"{refit_info['command']} to refit without a budget")
            log(f"refit skipped: {refit_info['skipped']}")
        else:
            done = [refit_trial(run_dir, n, data, pm, path, log) for n in needed]
            refit_info["models"] = done
            for d in done:
                dirs[d["trial"]] = d["dir"]
            nets = {n: load_model(run_dir.path / dirs[n], pm) for n in needed}

    # best/: everything needed to load and predict without the study
    best_spec = {**nets[best_n][1], "temperature": best_t, "tta": best_tta, "source": dirs[best_n]}
    write_best(run_dir, run_dir.path / dirs[best_n], run_dir.trial_dir(best_n), best_spec)

    ensemble_info = {
        "method": method,
        "max_members": max_members,
        "members": [{"trial": n, "weight": weights[n], "model": models_of.get(n, ""), "dir": dirs[n]} for n in members],
        "tta": ens_tta,
        "temperature": ens_t,
        "val": ens_val_metrics,
    }
    if use_ensemble:
        why = (f"the ensemble of {len(weights)} models beats the best single model on validation "
               f"({ens_val_metrics[metric]:.4f} vs {single_val_metrics[metric]:.4f})")
    elif len(weights) <= 1:
        why = "only one model was selected for the ensemble, so it is the best single model"
    else:
        why = (f"the ensemble does not beat the best single model on validation "
               f"({ens_val_metrics[metric]:.4f} vs {single_val_metrics[metric]:.4f}), so the simpler model is delivered")
    report.update(
        best_trial=best_n,
        best_model=best_rec.get("model"),
        best_val=single_val_metrics,
        ensemble=ensemble_info,
        deliverable="ensemble" if use_ensemble else "best",
        why=why,
        tta=tta_info,
        calibration=cal_info,
        refit=refit_info,
    )
    if data.has_test():
        report.update(test_touches(run_dir))
        y_test = data.labels[data.split_index["test"]]
        best_test = split_probs(best_module(nets, best_tta, best_t), data, "test", eval_path)
        ens_test = split_probs(ens_module(nets, ens_tta, ens_t), data, "test", eval_path)
        write_npy(run_dir.final_dir / "test_probs_best.npy", best_test.astype(np.float32))
        write_npy(run_dir.final_dir / "test_probs_ensemble.npy", ens_test.astype(np.float32))
        write_npy(run_dir.final_dir / "test_labels.npy", y_test)
        report["best_test"] = compute_metrics(y_test, best_test, pm)
        report["ensemble"]["test"] = compute_metrics(y_test, ens_test, pm)
        report["best_test_detail"] = per_class(y_test, best_test, data.classes)
        report["ensemble_test_detail"] = per_class(y_test, ens_test, data.classes)
        report["test_keys"] = [data.samples[i].key for i in data.split_index["test"]]
        if calibrate:
            # the temperature is invertible: T' = 1/T gives back the uncalibrated probabilities
            for name, t, p in (("best", best_t, best_test), ("ensemble", ens_t, ens_test)):
                cal_info[name]["test_ece_before"] = calibration.expected_calibration_error(
                    y_test, calibration.apply_temperature(p, 1.0 / t))
                cal_info[name]["test_ece_after"] = calibration.expected_calibration_error(y_test, p)
    else:
        report["note"] = (
            "no test split: the scores below are validation scores, which are optimistic because the "
            "validation split was used to select the model"
        )
    report["intervals"] = accuracy_intervals(report, len(y_val), int(len(data.split_index["test"])))
    if final:
        report["final_fit"] = deliver_final_fit(run_dir, best_n, data, pm, path, plan, respect_budget, log,
                                                temperature=best_t, tta=best_tta)
        if "skipped" not in report["final_fit"]:
            use_ensemble = False
            report["deliverable"] = "best"
            ff = report["final_fit"]
            report["why"] = (f"small-data regime: trial {best_n}'s network (best on validation) was trained further "
                             f"on all {ff['images']} labelled images for {ff['epochs']} epochs")
    # the dashboard's per-class validation metrics of the best model and the ensemble need the labels,
    # and the probabilities as delivered (after test-time augmentation and temperature, when used)
    write_npy(run_dir.final_dir / "val_labels.npy", y_val)
    write_npy(run_dir.final_dir / "val_probs_best.npy", np.asarray(best_val_p, dtype=np.float32))
    write_npy(run_dir.final_dir / "val_probs_ensemble.npy", np.asarray(ens_val_p, dtype=np.float32))
    write_json(run_dir.path / "ensemble.json", {**ensemble_info, "selected": use_ensemble, "metric": metric})
    report["seconds"] = time.time() - t0
    write_json(run_dir.final_dir / "report.json", report)
    return report


def deliver_final_fit(run_dir: RunDir, best_n: int, data: PreparedData, pm: PluginManager, path: ExecPath, plan,
                      respect_budget: bool, log: Callable[[str], None], temperature: float,
                      tta: bool) -> dict[str, Any]:
    """The small-data regime's last step: the final fit of trial ``best_n``, written to
    ``best/`` with the temperature and test-time augmentation chosen on validation."""
    planned = float(plan.final_fit) if plan and plan.final_fit else 0.0
    end = None
    if respect_budget and plan is not None and plan.deadline is not None:
        # a few seconds to write best/ and the report after the last epoch
        end = plan.deadline - min(10.0, 2.0 + 0.01 * float(plan.time_budget))
        seconds = end - time.time()
    elif planned:
        seconds = planned
    else:  # no budget was ever given: as long as the trial trained, on every image
        status = run_dir.read_trial(best_n) or {}
        seconds = float(status.get("seconds") or 0.0) * 2.0
    info = final_fit(run_dir, best_n, data, pm, path, seconds, end, log)
    if "skipped" in info:
        log(f"final fit skipped: {info['skipped']}")
        return info
    fitted = read_json(run_dir.path / FINAL_FIT / "model.json", MODEL_SCHEMA) or {}
    write_best(run_dir, run_dir.path / FINAL_FIT, run_dir.trial_dir(best_n),
               {**fitted, "temperature": temperature, "tta": tta, "source": FINAL_FIT})
    return info


def accuracy_intervals(report: dict[str, Any], n_val: int, n_test: int) -> dict[str, list[float]]:
    """95% Wilson intervals of every accuracy in the report: ``{"best_val": [low, high, n], ...}``."""
    from automl_vision.evaluation import wilson_interval

    out: dict[str, list[float]] = {}
    places = (("best_val", report.get("best_val"), n_val), ("best_test", report.get("best_test"), n_test),
              ("ensemble_val", (report.get("ensemble") or {}).get("val"), n_val),
              ("ensemble_test", (report.get("ensemble") or {}).get("test"), n_test))
    for name, metrics, n in places:
        if metrics and "accuracy" in metrics and n:
            low, high = wilson_interval(float(metrics["accuracy"]), n)
            out[name] = [low, high, n]
    return out


def print_summary(report: dict[str, Any], console=None) -> None:
    from rich.table import Table

    console = console or make_console()
    if report.get("error"):
        console.print(f"[bold red]{report['error']}[/]")
        return
    metric = report["metric"]
    has_test = report.get("has_test")
    table = Table(title="Final evaluation" + (" on the held-out test split" if has_test else " (validation only)"))
    table.add_column("model")
    cols = [metric] + [c for c in ("accuracy", "balanced_accuracy", "f1_macro", "log_loss", "ece") if c != metric]
    intervals = report.get("intervals") or {}
    for c in cols:
        table.add_column(c, justify="right")
        if c == "accuracy" and intervals:
            table.add_column("accuracy 95% CI", justify="right")
    split = "best_test" if has_test else "best_val"
    ens_info = report["ensemble"]
    ens_metrics = ens_info.get("test" if has_test else "val", {})
    members = ", ".join(f"#{mbr['trial']}x{mbr['weight']:.2f}" for mbr in ens_info["members"])
    best_extra = _extras(report, "best")
    ens_extra = _extras(report, "ensemble")
    key = "test" if has_test else "val"
    rows = [
        (f"best single: trial {report['best_trial']} ({report['best_model']}){best_extra}", report.get(split, {}),
         intervals.get(f"best_{key}")),
        (f"ensemble ({ens_info['method']}: {members}){ens_extra}", ens_metrics, intervals.get(f"ensemble_{key}")),
    ]
    from rich.markup import escape

    for name, mets, ci in rows:  # model labels and the [TTA, T] note are text, not rich markup
        cells = []
        for c in cols:
            cells.append(f"{mets[c]:.4f}" if c in mets else "-")
            if c == "accuracy" and intervals:
                cells.append(f"{ci[0]:.2f}-{ci[1]:.2f} (n={ci[2]})" if ci else "-")
        table.add_row(escape(name), *cells)
    console.print(table)
    cal = report.get("calibration") or {}
    if cal.get("requested") and "best" in cal:
        key = "test" if has_test and "test_ece_before" in cal["best"] else "val"
        console.print(
            "Calibration (temperature fitted on validation), ECE on "
            f"{'test' if key == 'test' else 'validation'}: best {cal['best'][key + '_ece_before']:.4f} -> "
            f"{cal['best'][key + '_ece_after']:.4f} (T={cal['best']['temperature']:.3f}), ensemble "
            f"{cal['ensemble'][key + '_ece_before']:.4f} -> {cal['ensemble'][key + '_ece_after']:.4f} "
            f"(T={cal['ensemble']['temperature']:.3f})"
        )
    tta = report.get("tta") or {}
    if tta.get("requested") and "best" in tta:
        parts = []
        for name in ("best", "ensemble"):
            t = tta[name]
            parts.append(f"{name} {t['val_without'].get(metric, float('nan')):.4f} -> {t['val_with'].get(metric, float('nan')):.4f} "
                         f"({'kept' if t['used'] else 'not kept'})")
        console.print(f"Flip test-time augmentation, validation {metric}: " + "; ".join(parts))
    refit = report.get("refit") or {}
    if refit.get("requested"):
        if refit.get("skipped"):
            console.print(f"[yellow]Refit skipped:[/] {refit['skipped']}")
        else:
            done = ", ".join(f"trial {d['trial']} ({d['epochs']} epochs{', reused' if d.get('reused') else ''})"
                             for d in refit.get("models", []))
            console.print(f"Refit on train + validation: {done}; test scores above are the refit models'.")
    ff = report.get("final_fit") or {}
    if ff.get("skipped"):
        console.print(f"[yellow]Final fit skipped:[/] {escape(ff['skipped'])}")
    elif ff:
        console.print(escape(
            f"Final fit (small-data regime): trial {ff['of_trial']}'s network trained further on all {ff['images']} "
            f"labelled images for {ff['epochs']} epochs ({format_duration(ff.get('seconds') or 0)}"
            f"{', reused' if ff.get('reused') else ''}). The scores above are that network's before the final fit, "
            f"trained on the train split only: the honest estimate for the delivered model, which has seen "
            f"every labelled image (the test split included) and cannot be scored on them."))
    console.print(f"Deliverable: [bold]{report['deliverable']}[/] — {escape(report['why'])}.")
    if report.get("test_warning"):
        console.print(f"[yellow]Note:[/] {escape(report['test_warning'])}")
    if report.get("note"):
        console.print(f"[yellow]Note:[/] {report['note']}")
    if not refit.get("requested") and refit.get("command") and not ff:
        console.print(escape(f"Optional next step (about {format_duration(refit['estimate_seconds'])}): {refit['command']} "
                             "retrains the chosen models on train + validation; see docs/prediction-and-export.md."),
                      style="dim")


def _extras(report: dict[str, Any], name: str) -> str:
    parts = []
    if ((report.get("tta") or {}).get(name) or {}).get("used"):
        parts.append("flip TTA")
    t = ((report.get("calibration") or {}).get(name) or {}).get("temperature")
    if t is not None and t != 1.0:
        parts.append(f"T={t:.2f}")
    return f" [{', '.join(parts)}]" if parts else ""
