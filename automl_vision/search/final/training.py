"""Training a chosen configuration again: ``--refit`` on train + validation, and the
small-data regime's final fit on every labelled image."""

from __future__ import annotations

import shutil
import time
from typing import Any, Callable, NamedTuple

import numpy as np
import torch

from automl_vision.data.prepare import PreparedData
from automl_vision.models import build_model, load_model, save_model
from automl_vision.plugins import PluginManager
from automl_vision.rundir import (CONFIG, CONFIG_SCHEMA, FINAL_FIT, MODEL_JSON, MODEL_SCHEMA, REFIT, WEIGHTS, RunDir,
                                  final_fit_folder, read_json, write_json)
from automl_vision.search.budget import MAX_FINAL_NETWORKS, MIN_COPY_EPOCHS, MIN_PAIR_EPOCHS
from automl_vision.settings import format_duration
from automl_vision.training.device import ExecPath
from automl_vision.search.final.common import write_best


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
            abort=None, warm: bool = False, keep_from: float | None = None,
            grow_until: int | None = None, seed_offset: int = 0, note: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train trial ``number``'s configuration once more, on the images ``idx``, into ``out``.

    The seed (so the initial weights), the normalisation and every hyperparameter are the
    trial's; ``epochs`` sets the schedule (``plan``/``abort``/``grow_until`` as in :func:`train`). With
    ``warm`` training starts from the trial's trained weights instead (a warm restart of
    its schedule). ``seed_offset`` is added to the trial's seed (other initial weights, batches
    and augmentation draws: a fresh network of the same configuration). The model's ``model.json`` gets ``kind``
    (``refit`` or ``final_fit``, with ``note`` added)
    with what was done (``decoded_at``: the side its training photos were decoded at, when its
    random-resized crops were cut from photos larger than its input). With ``keep_from``, a
    run that ``abort`` stops after that share of its schedule's steps is kept (its learning
    rate has all but reached the end of its decay); otherwise :class:`BudgetExceeded` propagates.
    """
    from automl_vision.training.augment import train_side
    from automl_vision.training.trainer import STRETCH_BY_EPOCH, BudgetExceeded, TensorData, train

    tdir = run_dir.trial_dir(number)
    spec = read_json(tdir / MODEL_JSON, MODEL_SCHEMA)
    config = read_json(tdir / CONFIG, CONFIG_SCHEMA)
    if not config or not spec:
        raise RuntimeError(f"trial {number} has no config.json or model.json to train again from")
    cfg = trial_config(config, epochs)
    cfg.seed += int(seed_offset)
    t0 = time.time()
    val = data.split_index["val"][:64]  # the trainer reports on these after each epoch; nothing is decided on them
    x_train, x_val = data.training_arrays(idx, val, cfg.image_size, log,
                                          train_side=train_side(cfg.image_size, cfg.aug.crop_scale))
    side = int(x_train.shape[1])
    tensors = TensorData.from_arrays(x_train, data.labels[idx], x_val, data.labels[val], len(data.classes),
                                     mean=spec["mean"], std=spec["std"])
    torch.manual_seed(cfg.seed)  # the same initial weights as the trial (with no seed_offset)
    model = load_model(tdir, pm)[0] if warm else build_model(spec, pm)
    stopped = schedule = precision = None
    try:
        result = train(model, cfg, tensors, path, plan=plan, abort=abort, grow_until=grow_until or STRETCH_BY_EPOCH)
        net, epochs_run = result.model, result.epochs_run
        if result.path is not None and result.path.precision != path.precision:
            precision = result.path.reason
        # what the time budget did to the schedule, for the report: from the plan to where it ended, however
        # often it was re-planned on the way
        if epochs_run > epochs:
            schedule = f"epochs set from {epochs} to {epochs_run} by the time budget"
        elif epochs_run < epochs:
            schedule = f"epochs cut from {epochs} to {epochs_run} to fit the time budget"
    except BudgetExceeded as exc:
        if keep_from is None or exc.model is None or exc.progress < keep_from:
            raise
        net, epochs_run = exc.model, exc.epochs
        stopped = f"{exc} at {exc.progress:.0%} of its schedule (kept: its learning rate had decayed)"
        log(f"{kind.replace('_', ' ')}: stopped by the time budget at {exc.progress:.0%} of its schedule; kept")
    info = {"of_trial": number, "epochs": epochs_run, "images": int(len(idx)), "seconds": time.time() - t0,
            "warm_start": warm}
    if side != cfg.image_size:  # its random-resized crops were cut from photos decoded this large
        info["decoded_at"] = side
    if seed_offset:
        info["seed"] = cfg.seed
    info.update(note or {})
    if stopped:
        info["stopped"] = stopped
    if schedule:
        info["schedule"] = schedule
    if precision:
        info["precision"] = precision
    save_model(out, net.to("cpu"), {**spec, kind: info})
    write_json(out / CONFIG, {**config, "epochs": epochs_run, "seed": cfg.seed, f"{kind}_of": number})
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
    done = read_json(out / MODEL_JSON, MODEL_SCHEMA)
    if done and (done.get("refit") or {}).get("of_trial") == number and (out / WEIGHTS).exists():
        return {"trial": number, "dir": f"{REFIT}/{tdir.name}", "epochs": epochs, "reused": True, "seconds": 0.0}
    idx = np.sort(np.concatenate([data.split_index["train"], data.split_index["val"]]))
    log(f"refit: trial {number} ({(read_json(tdir / MODEL_JSON, MODEL_SCHEMA) or {}).get('label', '')}) on {len(idx)} "
        f"train+val images for {epochs} epochs")
    info = retrain(run_dir, number, data, pm, path, idx, epochs, out, "refit", log)
    return {"trial": number, "dir": f"{REFIT}/{tdir.name}", "epochs": epochs, "reused": False,
            "seconds": info["seconds"]}


# the most epochs a final fit runs, a bound rather than a target (the time budget is the limit): on 244 photos
# (hymenoptera, 3 minutes) a cap of 400 left half the budget unspent while a hand-written loop ran 661 epochs
# and won; at 64 px in 10 minutes on a Zen-4 EPYC a cap of 1000 stopped both networks of the pair after 1m35s
# each and the search ended 195 s early, while the loop ran 2,700-4,000 epochs of the same photos
FINAL_FIT_EPOCH_CAP = 4000
MIN_FINAL_FIT_EPOCHS = 3
# the pair's threshold (MIN_PAIR_EPOCHS) lives in search/budget.py: the resolution rule reads it too
# a final fit stopped by the deadline after this share of its (re)planned schedule is delivered: its
# cosine learning rate is within 3% of the end of its decay. Below it the search's own model is
# delivered (on a machine that got busy mid-run, a final fit was thrown away 6 minutes into it)
FINAL_FIT_KEEP_FROM = 0.9
# a fresh network of the best configuration in the final fit (see choose_final_copies) has the trial's seed plus
# this times its number: other initial weights, batches and augmentation draws
COPY_SEED_STEP = 1000


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
              seconds: float, end: float | None, log: Callable[[str], None], folder: str = FINAL_FIT,
              copy: int = 0) -> dict[str, Any]:
    """Train trial ``number``'s network further on every labelled image (train, validation
    and test) into ``folder`` (``final_fit/``): a warm restart of its schedule from the
    weights the search trained, for as many epochs as ``seconds`` afford (at most
    :data:`FINAL_FIT_EPOCH_CAP`), finishing by ``end`` (absolute time; None: no limit).
    With ``copy`` > 0, a fresh network of the trial's configuration instead, its seed
    ``COPY_SEED_STEP * copy`` above the trial's, trained from its first epoch.

    Returns what was done, or ``{"skipped": why}``; an earlier final fit of the same trial
    (and copy) in ``folder`` is reused.
    """
    from automl_vision.search.budget import Pace
    from automl_vision.search.interrupts import check_interrupt
    from automl_vision.training.trainer import STRETCH_BY_EPOCH, BudgetExceeded

    out = run_dir.path / folder
    idx = all_labelled(data)
    done = read_json(out / MODEL_JSON, MODEL_SCHEMA)
    earlier = (done or {}).get("final_fit") or {}
    if earlier.get("of_trial") == number and int(earlier.get("copy") or 0) == copy and (out / WEIGHTS).exists():
        return {**earlier, "dir": folder, "reused": True}
    per_epoch = epoch_seconds_on(run_dir, number, len(idx), len(data.split_index["train"]))
    if per_epoch is None:
        return {"skipped": f"trial {number} has no timed epochs to plan a final fit from"}
    epochs = min(FINAL_FIT_EPOCH_CAP, int(seconds // max(per_epoch, 1e-6)))
    if epochs < MIN_FINAL_FIT_EPOCHS:
        return {"skipped": (f"not enough time left for a final fit ({seconds:.0f}s affords {epochs} epoch(s) of "
                            f"{per_epoch:.1f}s on {len(idx)} images); the search's model is delivered")}

    pace = Pace(follow=True)

    def plan(epochs_done: int, epoch_seconds: float) -> int:
        if end is None:
            return epochs
        # the plan above came from the trial's pace, 10% over it; from the second epoch on this run's own
        # pace is known, and after every epoch the schedule is re-planned to what fits, longer or shorter
        # (the trainer carries its learning rate on from where it stands). Measured on sign-digits, 10
        # minutes: 352 epochs planned for 6m15s ran in 5m19s and the search ended a minute early; on flowers,
        # with regrowth allowed only in the first tenth, a later slow spell cut 142 epochs to 132 and 58 of
        # the final fit's 378 s went unused
        ceiling = epochs if epochs_done < STRETCH_BY_EPOCH else FINAL_FIT_EPOCH_CAP
        return pace.epochs_that_fit(epochs_done, epoch_seconds, end - time.time(), ceiling)

    def abort() -> str | None:
        check_interrupt()
        if end is not None and time.time() > end:
            return "time budget reached"
        return None

    # printed before training: a plan, not a result. With a deadline the schedule is re-planned after every
    # epoch, and the epochs actually run (the report's figure) differ: on a Zen-4 EPYC, 10 minutes, trashnet
    # was planned for 73 epochs from its trial's pace and ran 96; cats-vs-dogs 107 and ran 128
    replanned = " (re-planned after every epoch to end with the time budget)" if end is not None else ""
    what = (f"trial {number}'s network further" if not copy else
            f"a fresh network of trial {number}'s configuration (another seed)")
    how = "a warm restart of its schedule" if not copy else "from its first epoch"
    log(f"final fit: training {what} on all {len(idx)} labelled images, {how}: {epochs} epochs planned from its "
        f"trial's pace, about {format_duration(epochs * per_epoch)}{replanned}")
    try:
        info = retrain(run_dir, number, data, pm, path, idx, epochs, out, "final_fit", log, plan=plan, abort=abort,
                       warm=not copy, keep_from=FINAL_FIT_KEEP_FROM, grow_until=FINAL_FIT_EPOCH_CAP,
                       seed_offset=COPY_SEED_STEP * copy, note={"copy": copy} if copy else None)
    except BudgetExceeded as exc:
        shutil.rmtree(out, ignore_errors=True)
        return {"skipped": f"the final fit ran past the time budget ({exc}); the search's model is delivered"}
    which = f"trial {number}'s network" if not copy else f"the fresh network {copy} of trial {number}'s configuration"
    log(f"final fit: {which} trained for {info['epochs']} epochs ({format_duration(info['seconds'])})")
    return {**info, "planned_epochs": epochs, "dir": folder, "reused": False}


def all_labelled(data: PreparedData) -> np.ndarray:
    """Every labelled image of the run (train, validation and test): what a final fit trains on."""
    return np.sort(np.concatenate([data.split_index[name] for name in ("train", "val", "test")]))


def final_fit_window(run_dir: RunDir, best_n: int, plan, respect_budget: bool) -> tuple[float, float | None]:
    """(seconds, end): the time the final fit has, and its absolute deadline (None: no limit).

    Inside a search the final fit ends a few seconds before the budget's deadline; rebuilt
    later (``automl-vision ensemble``) it has the seconds the plan kept for it, or, with no
    budget ever given, twice the time the best trial trained.
    """
    if respect_budget and plan is not None and plan.deadline is not None:
        # a few seconds to write best/ and the report after the last epoch
        end = plan.deadline - min(10.0, 2.0 + 0.01 * float(plan.time_budget))
        return end - time.time(), end
    if plan and plan.final_fit:
        return float(plan.final_fit), None
    status = run_dir.read_trial(best_n) or {}
    return float(status.get("seconds") or 0.0) * 2.0, None


class PairChoice(NamedTuple):
    """The final fit's second network: ``partner`` (a trial number) trained further, or ``fresh``
    (a fresh network of the best configuration), or neither; ``why`` says which and why."""

    partner: int | None
    fresh: bool
    why: str


def same_network(run_dir: RunDir, a: int, b: int) -> bool:
    """Whether trials ``a`` and ``b`` train the same network (model family, its parameters and
    the image side), whatever their other training settings (augmentation, learning rate)."""
    ca = read_json(run_dir.trial_dir(a) / CONFIG, CONFIG_SCHEMA) or {}
    cb = read_json(run_dir.trial_dir(b) / CONFIG, CONFIG_SCHEMA) or {}
    keys = ("family", "model_params", "image_size")
    return bool(ca) and all(ca.get(k) == cb.get(k) for k in keys)


def choose_final_pair(run_dir: RunDir, best_n: int, val: dict[int, np.ndarray], y_val: np.ndarray,
                      data: PreparedData, seconds: float, m) -> PairChoice:
    """The final fit's second network, or none (:class:`PairChoice`).

    The runner-up is the best other trial on the validation objective. A second network is
    trained when each of the two, given half of ``seconds``, still runs :data:`MIN_PAIR_EPOCHS`
    epochs on every labelled image at its measured pace. When the runner-up is another network
    (:func:`same_network`), it is the partner (the *final-fit pair*), unless the best model alone
    is right on significantly more validation images than the pair's average (sign test). When
    it is the best model's own network with other training settings, a fresh network of the best
    configuration takes its place: on the 12 benchmark runs where that happened (six sets, 10 and
    3 minutes; benchmarks/bench_final_fit_partner.py, section 29 of benchmarks/README.md) the
    runner-up was the portfolio's plain CNN with light augmentation, and its final fit alone scored
    2-15 evaluation photos below the best model's in all 12, while a fresh network of the best
    configuration in its place left the average right on 18 more photos in all (9 up, 2 level, 1 down).
    """
    from automl_vision.search.final.selection import leader, significantly_better

    second = leader(val, y_val, m, exclude=(best_n,))
    if second is None:
        return PairChoice(None, False, "only one trial finished")
    fresh = same_network(run_dir, best_n, second)
    n_all, n_train = len(all_labelled(data)), len(data.split_index["train"])
    for n in (best_n,) if fresh else (best_n, second):
        per_epoch = epoch_seconds_on(run_dir, n, n_all, n_train)
        if per_epoch is None:
            return PairChoice(None, False, f"trial {n} has no timed epochs")
        epochs = int(seconds / 2 // max(per_epoch, 1e-6))
        if epochs < MIN_PAIR_EPOCHS:
            return PairChoice(None, False, (
                f"half of the final fit's {format_duration(seconds)} affords trial {n} {epochs} epochs, fewer than "
                f"{MIN_PAIR_EPOCHS}: one network trained for all of it does better"))
    if fresh:
        return PairChoice(None, True, (
            f"trial {second}, the best other trial on validation, trains trial {best_n}'s network with other "
            f"settings: a fresh network of trial {best_n}'s configuration takes its place, and each of the two can "
            f"run at least {MIN_PAIR_EPOCHS} epochs in half of the final fit's {format_duration(seconds)}"))
    pair = (val[best_n] + val[second]) / 2.0
    if significantly_better(y_val, val[best_n], pair):
        return PairChoice(None, False, (
            f"on validation trial {best_n} alone is right on significantly more images than its average with "
            f"trial {second}"))
    return PairChoice(second, False, (
        f"each of trials {best_n} and {second} can run at least {MIN_PAIR_EPOCHS} epochs in half of the final fit's "
        f"{format_duration(seconds)}"))


def choose_final_copies(run_dir: RunDir, best_n: int, second: int | None, data: PreparedData,
                        seconds: float, fresh_partner: bool = False) -> tuple[int, str]:
    """(copies, why): how many fresh networks of the best model's configuration join the
    final fit's networks (the best model, and the runner-up of a final-fit pair or, with
    ``fresh_partner``, the fresh network in its place), each trained from scratch with another
    seed on every labelled image.

    The final fit trains the most networks, at most :data:`MAX_FINAL_NETWORKS`, for which an
    equal share of ``seconds`` still gives each network of the best configuration
    :data:`MIN_COPY_EPOCHS` epochs (and the runner-up :data:`MIN_PAIR_EPOCHS`) at its measured
    pace: past ~200 epochs, more networks in the average are worth more than more epochs
    of one (measured on 244-720 photos; on 2,016, two networks of 107 epochs lost to one of 219).
    """
    n_all, n_train = len(all_labelled(data)), len(data.split_index["train"])
    have = 1 if second is None and not fresh_partner else 2
    pace = {n: epoch_seconds_on(run_dir, n, n_all, n_train) for n in ([best_n] if second is None else [best_n, second])}
    if any(p is None for p in pace.values()):
        return 0, "no timed epochs to plan fresh networks from"
    for k in range(MAX_FINAL_NETWORKS, have, -1):
        share = seconds / k
        if share / max(pace[best_n], 1e-6) >= MIN_COPY_EPOCHS and (
                second is None or share / max(pace[second], 1e-6) >= MIN_PAIR_EPOCHS):
            return k - have, (f"{k} networks of {format_duration(share)} each still give trial {best_n}'s configuration "
                              f"{int(share / max(pace[best_n], 1e-6))} epochs, at least {MIN_COPY_EPOCHS}: "
                              f"{k - have} {'more ' if fresh_partner else ''}fresh network(s) of it join the average")
    return 0, (f"{have + 1} networks would give trial {best_n}'s configuration "
               f"{int(seconds / (have + 1) / max(pace[best_n], 1e-6))} epochs each, fewer than {MIN_COPY_EPOCHS}")


def final_fit_epochs(run_dir: RunDir, number: int, val: dict[int, np.ndarray], y_val: np.ndarray,
                     data: PreparedData, seconds: float, m) -> float | None:
    """The epochs each network of trial ``number``'s configuration would run in a final fit of
    ``seconds`` with ``number`` as the best model: the networks :func:`choose_final_pair` and
    :func:`choose_final_copies` would train share the time equally. None: the trial has no timed epochs."""
    pace = epoch_seconds_on(run_dir, number, len(all_labelled(data)), len(data.split_index["train"]))
    if pace is None:
        return None
    partner, fresh, _ = choose_final_pair(run_dir, number, val, y_val, data, seconds, m)
    copies, _ = choose_final_copies(run_dir, number, partner, data, seconds, fresh)
    networks = 1 + int(partner is not None or fresh) + copies
    return seconds / networks / max(pace, 1e-6)


def deliver_final_fit(run_dir: RunDir, members: list[int], data: PreparedData, pm: PluginManager, path: ExecPath,
                      plan, respect_budget: bool, log: Callable[[str], None], temperature: float,
                      tta: bool, copies: int = 0) -> dict[str, Any]:
    """The small-data regime's last step: the final fit of ``members`` (the best trial, or the
    final-fit pair: the best trial and the runner-up) and of ``copies`` fresh networks of the
    best trial's configuration, each network given an equal share of the time left; the first
    written to ``best/`` with the temperature and test-time augmentation chosen on validation.
    The result describes the best model's final fit; with more than one network it adds
    ``networks`` (one entry per network, in order; the fresh ones with ``copy``). When a
    later network's final fit cannot be done, those done are delivered."""
    seconds, end = final_fit_window(run_dir, members[0], plan, respect_budget)
    todo = [(n, 0) for n in members] + [(members[0], c) for c in range(1, copies + 1)]
    done: list[dict[str, Any]] = []
    for rank, (number, copy) in enumerate(todo):
        # with a deadline each network gets an equal share of the time still left; without one, of the time planned
        share = (end - time.time()) / (len(todo) - rank) if end is not None else seconds / len(todo)
        info = final_fit(run_dir, number, data, pm, path, share, None if end is None else time.time() + share, log,
                         folder=final_fit_folder(rank), copy=copy)
        if "skipped" in info:
            if rank == 0:
                log(f"final fit skipped: {info['skipped']}")
                return info
            log(f"final fit of network {rank + 1} skipped ({info['skipped']}); the {rank} done are delivered")
            break
        done.append(info)
    fitted = read_json(run_dir.path / FINAL_FIT / MODEL_JSON, MODEL_SCHEMA) or {}
    write_best(run_dir, run_dir.path / FINAL_FIT, run_dir.trial_dir(members[0]),
               {**fitted, "temperature": temperature, "tta": tta, "source": FINAL_FIT})
    result = dict(done[0])
    if len(done) > 1:
        result["networks"] = done
        result["seconds_total"] = sum(float(d.get("seconds") or 0.0) for d in done)
    return result

