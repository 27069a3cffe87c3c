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
   model and ``ensemble.json`` the ensemble;
8. in the small-data regime, the final fit: the best model's network is trained further
   on every labelled image and delivered; or, when the time left affords each of two
   networks enough epochs (:func:`~.training.choose_final_pair`), the best model and the
   runner-up on validation are (the *final-fit pair*), and their equal-weight average is
   the ensemble, chosen before step 3 so that TTA, temperature and the test scoring
   (the honest estimate) are made for it; a runner-up that trains the best model's own
   network with other settings gives its place to a fresh network of the best
   configuration (:func:`~.training.same_network`); when the time still gives each network of the
   best configuration :data:`~automl_vision.search.budget.MIN_COPY_EPOCHS` epochs, fresh
   networks of it (other seeds, from scratch) join the average
   (:func:`~.training.choose_final_copies`), up to four networks in all, and the estimate
   stays that of the networks the search trained.

:func:`finalize` is called at the end of ``automl-vision search`` and by
``automl-vision ensemble RUN_DIR``, which rebuilds the ensemble of a finished or still
running search with other settings.

The steps live in this package's modules: :mod:`.selection` (the best single model),
:mod:`.training` (a refit, the final fit), :mod:`.report` (test scorings, intervals, the
summary) and :mod:`.common`; :func:`finalize` runs them in order.
"""

from __future__ import annotations

import shlex
import time
from typing import Any

import numpy as np
import torch

from automl_vision import calibration
from automl_vision import ensemble as ens
from automl_vision.data.prepare import PreparedData
from automl_vision.evaluation import compute_metrics, is_better, per_class
from automl_vision.models import load_model
from automl_vision.plugins import PluginManager
from automl_vision.predict import ProbabilityModel
from automl_vision.rundir import (TEST_LABELS, VAL_LABELS, RunDir, final_fit_networks, final_probs, write_json,
                                  write_npy)
from automl_vision.training.device import ExecPath
from automl_vision.types import UsageError
# the steps, in their modules; their public names stay importable from here, as when this was one module
from automl_vision.search.final.choices import Candidate, calibrate_candidates, decide_tta
from automl_vision.search.final.common import (fp32, run_deadline, run_options, run_plan,  # noqa: F401
                                               split_probs, write_best)
from automl_vision.search.final.report import accuracy_intervals, print_summary, test_touches  # noqa: F401
from automl_vision.search.final.selection import (SELECTION_P, select_best, sign_test,  # noqa: F401
                                                  significantly_better, trained_with_flips)
from automl_vision.search.final.training import (FINAL_FIT_EPOCH_CAP, FINAL_FIT_KEEP_FROM,  # noqa: F401
                                                 MIN_FINAL_FIT_EPOCHS, MIN_PAIR_EPOCHS, choose_final_copies,
                                                 choose_final_pair,
                                                 deliver_final_fit, epoch_seconds_on, final_fit, final_fit_epochs,
                                                 final_fit_window,
                                                 refit_trial, retrain, trial_config)

# the ensemble "method" of the small-data regime's final-fit pair (the best model and the runner-up, equal weights)
PAIR_METHOD = "final-fit pair"
AVERAGE_METHOD = "final-fit average"  # more than a pair: fresh networks of the best configuration joined it


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
    tta = opts.tta if tta is None else tta
    calibrate = opts.calibrate if calibrate is None else calibrate
    refit = opts.refit if refit is None else refit
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
        write_json(run_dir.report, report)
        return report
    y_val = data.labels[data.split_index["val"]]
    val = {r["number"]: run_dir.read_val_probs(r["number"]) for r in trials}
    val = {n: p.astype(np.float64) for n, p in val.items() if p is not None and p.shape[0] == len(y_val)}
    if not val:
        report["error"] = ("no finished trial has validation probabilities that match the run's validation split; "
                           "the data may have changed since the search")
        write_json(run_dir.report, report)
        return report
    # a leader's trial must have run a fair share of the epochs its configuration would get in the final fit
    planned = None
    if final:
        def planned(n: int) -> float | None:
            return final_fit_epochs(run_dir, n, val, y_val, data,
                                    final_fit_window(run_dir, n, plan, respect_budget)[0], m)
    best_n, report["selection"] = select_best(trials, val, y_val, metric, m, planned)
    sel = report["selection"]
    if sel.get("prior") is not None and sel["chosen"] != sel["leader"]:
        short = sel.get("short_lead")
        enough = "not enough to replace it" if not short else (
            f"significant, but taken after {short['epochs']} epochs, fewer than half the {short['final_fit_epochs']} "
            "each final-fit network of it would run")
        log(f"selection: trial {sel['leader']} led on validation, right on {sel['wins']} image(s) where trial "
            f"{sel['prior']} (the first portfolio configuration) was wrong and wrong on {sel['losses']} where it was "
            f"right (p={sel['p_value']:.2f}): {enough}, so trial {sel['prior']} is the best model")
    best_rec = next(r for r in trials if r["number"] == best_n)
    models_of = {r["number"]: r.get("model", "") for r in trials}

    # the small-data regime's final fit may train two networks and deliver their average (the final-fit
    # pair): then the ensemble is that pair, and every choice below (TTA, temperature, the test scoring,
    # the honest estimate) is made for it, on the networks as the search trained them
    # beyond the pair, fresh networks of the best configuration may join the average; the choices below are
    # made for the pair (or the best model alone), the networks that have a search-trained counterpart
    pair, pair_why, copies, copies_why = None, None, 0, None
    if final:
        seconds, _ = final_fit_window(run_dir, best_n, plan, respect_budget)
        pair, fresh_partner, pair_why = choose_final_pair(run_dir, best_n, val, y_val, data, seconds, m)
        what = "a pair" if pair is not None else "two networks" if fresh_partner else "one network"
        log(f"final fit: {what} ({pair_why})")
        copies, copies_why = choose_final_copies(run_dir, best_n, pair, data, seconds, fresh_partner)
        if copies:
            log(f"final fit: and {copies} {'more ' if fresh_partner else ''}fresh network(s) of trial {best_n}'s "
                f"configuration ({copies_why})")
        # the fresh network in the runner-up's place is one more copy of the best configuration
        copies += int(fresh_partner)
    if pair is not None:
        method, weights = PAIR_METHOD, {best_n: 0.5, pair: 0.5}
    elif copies:
        method, weights = AVERAGE_METHOD, {best_n: 1.0}
    else:
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
    best = Candidate("best", [best_n], best_module, best_val_p)
    ensemble = Candidate("ensemble", members, ens_module, ens_val_p)
    tta_info = decide_tta(tta, (best, ensemble), nets, data, eval_path, pm, metric, m, run_dir, log)
    cal_info = calibrate_candidates(calibrate, (best, ensemble), y_val, log)
    best_tta, best_t, best_val_p = best.tta, best.temperature, best.val_p
    ens_tta, ens_t, ens_val_p = ensemble.tta, ensemble.temperature, ensemble.val_p

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
        write_npy(run_dir.final_dir / final_probs("test", "best"), best_test.astype(np.float32))
        write_npy(run_dir.final_dir / final_probs("test", "ensemble"), ens_test.astype(np.float32))
        write_npy(run_dir.final_dir / TEST_LABELS, y_test)
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
        ff = deliver_final_fit(run_dir, [best_n] if pair is None else [best_n, pair], data, pm, path, plan,
                               respect_budget, log, temperature=best_t, tta=best_tta, copies=copies)
        report["final_fit"] = {**ff, "pair_decision": pair_why, "copies_decision": copies_why}
        # the selection may keep the first portfolio entry over a leader that is not significantly better
        chosen = ("best on validation" if sel.get("leader") in (None, best_n)
                  else f"kept over trial {sel['leader']}, whose lead on validation was "
                  + ("taken in a trial much shorter than the final fit" if sel.get("short_lead") else "not significant"))
        fitted = final_fit_networks(ff)
        if fitted:
            use_ensemble = True
            ensemble_info["method"] = PAIR_METHOD if len(fitted) == 2 and not fitted[1].get("copy") else AVERAGE_METHOD
            ensemble_info["members"] = [
                {"trial": int(f["of_trial"]), "weight": 1.0 / len(fitted), "model": models_of.get(int(f["of_trial"]), ""),
                 "dir": f["dir"], **({"copy": int(f["copy"])} if f.get("copy") else {})} for f in fitted]
            report["deliverable"] = "ensemble"
            fresh = sum(1 for f in fitted if f.get("copy"))
            who = f"the networks of trials {best_n} ({chosen}) and {pair} (the best other trial on validation)" \
                if pair is not None and any(int(f["of_trial"]) == pair for f in fitted) \
                else f"trial {best_n}'s network ({chosen})"
            if fresh:
                who += f"{',' if pair is not None else ''} and {fresh} fresh network(s) of trial {best_n}'s configuration"
            report["why"] = (f"small-data regime: {who} were each trained on all {ff['images']} labelled images, for "
                             f"{', '.join(str(f['epochs']) for f in fitted)} epochs, and their average is delivered")
        elif "skipped" not in ff:
            use_ensemble = False
            report["deliverable"] = "best"
            report["why"] = (f"small-data regime: trial {best_n}'s network ({chosen}) was trained further "
                             f"on all {ff['images']} labelled images for {ff['epochs']} epochs")
    # the dashboard's per-class validation metrics of the best model and the ensemble need the labels,
    # and the probabilities as delivered (after test-time augmentation and temperature, when used)
    write_npy(run_dir.final_dir / VAL_LABELS, y_val)
    write_npy(run_dir.final_dir / final_probs("val", "best"), np.asarray(best_val_p, dtype=np.float32))
    write_npy(run_dir.final_dir / final_probs("val", "ensemble"), np.asarray(ens_val_p, dtype=np.float32))
    write_json(run_dir.ensemble, {**ensemble_info, "selected": use_ensemble, "metric": metric})
    report["seconds"] = time.time() - t0
    write_json(run_dir.report, report)
    return report
