"""The small-data regime: the delivered model is trained on every labelled image inside
the time budget, the honest estimate is kept, and accuracies carry their intervals."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from automl_vision.evaluation import wilson_interval
from automl_vision.search.budget import FINAL_FIT_SHARE, PROBE_TO_TRAINING, SMALL_DATA_MAX_IMAGES, plan_budget
from automl_vision.types import UsageError
from conftest import run_cli


def test_regime_is_chosen_from_the_number_of_images_and_can_be_forced():
    small = plan_budget("auto", 720, 600.0, started=0.0)
    assert small.regime == "small" and small.final_fit_on
    assert small.final_fit == pytest.approx(FINAL_FIT_SHARE * 600.0)
    # trials stop before the final steps and the final fit
    assert small.reserve == pytest.approx(small.final_fit + small.final_steps)
    assert small.search_seconds == pytest.approx(600.0 - small.reserve)
    big = plan_budget("auto", SMALL_DATA_MAX_IMAGES + 1, 600.0, started=0.0)
    assert big.regime == "standard" and big.final_fit == 0.0 and big.reserve == big.final_steps
    assert plan_budget("auto", 720, None).regime == "standard"  # no budget to plan a final fit in
    assert plan_budget("small", 50_000, 600.0).regime == "small"
    assert plan_budget("standard", 100, 600.0).regime == "standard"
    with pytest.raises(UsageError, match="--regime"):
        plan_budget("tiny", 100, 600.0)


def test_the_time_spent_starting_is_taken_from_both_phases():
    """A 2-core machine spent 9-16 s importing torch before the search's clock started, so a
    10-minute search took up to 10m03s; counted, a slow start must still leave the trials time."""
    plan = plan_budget("auto", 720, 40.0, started=100.0, now=112.0)  # 12 s of 40 went to start-up
    assert plan.spent == pytest.approx(12.0) and plan.deadline == pytest.approx(140.0)
    assert plan.final_fit == pytest.approx(FINAL_FIT_SHARE * 28.0)  # a share of what is left
    assert plan.search_seconds == pytest.approx(28.0 - plan.final_fit - plan.final_steps) and plan.search_seconds > 5
    # the plan in run.json keeps what was spent
    from automl_vision.search.budget import BudgetPlan

    assert BudgetPlan.from_dict(plan.as_dict()) == plan


def test_wilson_interval_says_how_little_a_few_dozen_images_tell():
    low, high = wilson_interval(33 / 37, 37)
    assert (round(low, 2), round(high, 2)) == (0.75, 0.96)
    low_big, high_big = wilson_interval(33 / 37, 3700)
    assert low < low_big < 33 / 37 < high_big < high
    assert wilson_interval(1.0, 10)[1] == pytest.approx(1.0) and wilson_interval(0.0, 10)[0] == pytest.approx(0.0)
    assert wilson_interval(1.0, 10)[0] < 0.75  # ten out of ten is not proof of perfection


def _labelled(folder):
    return sum(1 for p in folder.rglob("*") if p.is_file())


def test_small_folder_delivers_a_model_trained_on_every_image_within_the_budget(tmp_path, digits_dir):
    out = tmp_path / "small"
    budget = 45
    proc = run_cli("search", digits_dir, "--out", out, "--time-budget", f"{budget}s", "--image-size", "16",
                   "--models", "cnn", "--plain")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = json.loads((out / "run.json").read_text())
    assert run["budget"]["regime"] == "small"
    report = json.loads((out / "final" / "report.json").read_text())
    fit = report["final_fit"]
    assert "skipped" not in fit, fit
    assert fit["images"] == _labelled(digits_dir)  # train + validation + test
    assert fit["of_trial"] == report["best_trial"] and fit["epochs"] >= 3
    best = json.loads((out / "best" / "model.json").read_text())
    assert best["final_fit"]["of_trial"] == report["best_trial"]
    # predict uses best/, or the final fit's networks when the time left gave each of two or more enough epochs
    assert json.loads((out / "ensemble.json").read_text())["selected"] is bool(fit.get("networks")), fit["pair_decision"]
    # the honest estimate: the selected configuration as the search trained it, scored on test, with its interval
    assert "accuracy" in report["best_test"]
    low, high, n = report["intervals"]["best_test"]
    assert low <= report["best_test"]["accuracy"] <= high and n == len(report["test_keys"])
    assert "Final fit (small-data regime)" in proc.stdout
    # the final fit is inside the budget, and no trial ran into its share of it
    plan = run["budget"]
    assert report["search_seconds"] <= budget * 1.1
    for status in (json.loads(p.read_text()) for p in (out / "trials").glob("*/status.json")):
        assert status["finished"] <= plan["deadline"] - plan["final_fit"] + plan["final_steps"], status
    # the leaderboard carries the interval of every validation accuracy
    rows = list(csv.DictReader((out / "leaderboard.csv").open()))
    done = [r for r in rows if r["state"] == "COMPLETE"]
    assert done and all(float(r["val_accuracy_low95"]) <= float(r["val_accuracy"]) <= float(r["val_accuracy_high95"])
                        for r in done)
    preds = tmp_path / "preds.csv"
    proc = run_cli("predict", out, digits_dir, "--out", preds)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(list(csv.DictReader(preds.open()))) == _labelled(digits_dir)


def test_standard_regime_delivers_the_searchs_own_model(tmp_path, digits_dir):
    out = tmp_path / "standard"
    proc = run_cli("search", digits_dir, "--out", out, "--time-budget", "30s", "--image-size", "16",
                   "--models", "cnn", "--plain", "--regime", "standard")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((out / "final" / "report.json").read_text())
    assert "final_fit" not in report and not (out / "final_fit").exists()
    best = json.loads((out / "best" / "model.json").read_text())
    assert "final_fit" not in best and best["source"].startswith("trials/")


def test_a_bad_regime_is_a_usage_error(tmp_path, digits_dir):
    proc = run_cli("search", digits_dir, "--out", tmp_path / "x", "--regime", "tiny", "--n-trials", "1")
    assert proc.returncode == 2 and "--regime" in proc.stderr and "Traceback" not in proc.stderr


def _probs(right: np.ndarray, y: np.ndarray, k: int = 2) -> np.ndarray:
    """Probabilities that are right exactly where ``right`` is True."""
    p = np.full((len(y), k), 0.1 / (k - 1))
    pred = np.where(right, y, (y + 1) % k)
    p[np.arange(len(y)), pred] = 0.9
    return p


def test_a_one_image_lead_on_a_few_dozen_images_does_not_replace_the_prior():
    from automl_vision.plugins import get_plugin_manager
    from automl_vision.search.final import select_best

    m = get_plugin_manager().metrics.get("accuracy")
    y = np.arange(36) % 2
    prior = np.ones(36, bool)
    prior[:8] = False  # 28 of 36 right
    leader = prior.copy()
    leader[0] = True  # 29 of 36 right: one image more
    trials = [{"number": 0, "portfolio": "cnn-plain-4stage"}, {"number": 1, "portfolio": "cnn-plain-4stage-light"}]
    val = {0: _probs(prior, y), 1: _probs(leader, y)}
    chosen, info = select_best(trials, val, y, "accuracy", m)
    assert chosen == 0 and info["leader"] == 1 and (info["wins"], info["losses"]) == (1, 0) and info["p_value"] > 0.1
    # a real lead on a few hundred images passes
    y = np.arange(400) % 2
    prior = np.arange(400) % 5 != 0  # 80% right
    leader = np.arange(400) % 10 != 0  # 90% right, and right wherever the prior is
    chosen, info = select_best(trials, {0: _probs(prior, y), 1: _probs(leader, y)}, y, "accuracy", m)
    assert chosen == 1 and info["p_value"] < 0.1
    # a metric other than accuracy: the leader, as before
    y36 = np.arange(36) % 2
    other = get_plugin_manager().metrics.get("balanced_accuracy")
    assert select_best(trials, val, y36, "balanced_accuracy", other)[0] == 1
    sampled = [{"number": 0}, {"number": 1}]  # no portfolio (random sampler): the leader
    assert select_best(sampled, val, np.arange(36) % 2, "accuracy", m)[0] == 1


def test_a_lead_taken_after_a_short_trial_does_not_choose_what_the_final_fit_trains_much_longer():
    """Short trials favour the configuration that learns fastest: the light-augmentation entry led
    after 32 epochs, and its final fit of ~200 lost 12 evaluation photos to the first entry's."""
    from automl_vision.plugins import get_plugin_manager
    from automl_vision.search.final import select_best
    from automl_vision.search.final.selection import SHORT_LEAD_SHARE

    m = get_plugin_manager().metrics.get("accuracy")
    y = np.arange(400) % 2
    val = {0: _probs(np.arange(400) % 5 != 0, y), 1: _probs(np.arange(400) % 10 != 0, y)}  # a significant lead

    def trials(epochs):
        return [{"number": 0, "portfolio": "cnn-plain-4stage", "epochs": epochs},
                {"number": 1, "portfolio": "cnn-plain-4stage-light", "epochs": epochs}]

    asked = []

    def final_epochs(n):
        asked.append(n)
        return 200.0

    chosen, info = select_best(trials(32), val, y, "accuracy", m, final_epochs)
    assert chosen == 0 and asked == [1] and info["p_value"] < 0.1
    assert info["short_lead"] == {"epochs": 32, "final_fit_epochs": 200} and info["chosen"] == 0
    # a lead taken at half the final fit's epochs or more counts, as does any lead without a final fit
    assert select_best(trials(int(SHORT_LEAD_SHARE * 200)), val, y, "accuracy", m, final_epochs)[0] == 1
    assert select_best(trials(32), val, y, "accuracy", m)[0] == 1
    assert select_best(trials(32), val, y, "accuracy", m, lambda n: None)[0] == 1  # no timed epochs: as before


def test_flip_tta_is_dropped_only_when_validation_says_it_hurts():
    from automl_vision.search.final import significantly_better

    y = np.arange(200) % 2
    good = _probs(np.arange(200) % 10 != 0, y)
    slightly_worse = _probs((np.arange(200) % 10 != 0) & (np.arange(200) != 1), y)
    much_worse = _probs(np.arange(200) % 3 != 0, y)
    assert not significantly_better(y, good, slightly_worse)  # one image: TTA is kept
    assert significantly_better(y, good, much_worse)


def test_resolution_rises_only_when_the_final_fit_can_afford_it():
    """Issue #18: above 64 px only when the final fit still affords enough epochs *and* enough
    optimizer steps at the higher side at this machine's measured speed (a few hundred photos
    make 80 epochs a few hundred steps); never above the photos' own size, never outside the
    small-data regime."""
    from automl_vision.search.budget import MIN_EPOCHS_AT_SIZE, MIN_STEPS_AT_SIZE, choose_image_size

    fast = 2600.0 / PROBE_TO_TRAINING  # a probe that means the reference CNN trains at 2,600 img/s at 64 px
    # 3 minutes: 64 px for every folder; 96 px would still run 200 epochs of 600 photos, but only ~1,950 steps
    for n_images in (244, 600, 1428, 3000):
        side, why = choose_image_size(375, n_images, 180.0, "small", fast)
        assert side == 64 and str(MIN_STEPS_AT_SIZE) in why
    # 10 minutes: ~3,650 steps at 128 px for one network of ~1,000-2,000 photos, 96 px for a few thousand
    for n_images in (1428, 2016):
        side, why = choose_image_size(375, n_images, 600.0, "small", fast)
        assert side == 128 and "two networks" not in why
    assert choose_image_size(227, 3000, 600.0, "small", fast)[0] == 96  # flowers: 96 px beat 64 px
    side, why = choose_image_size(375, 5500, 600.0, "small", fast)
    assert side == 64 and str(MIN_EPOCHS_AT_SIZE) in why
    # a few hundred photos: at 128 px each half of the final fit runs 100+ epochs, so it trains a pair and each
    # network gets half of the ~3,650 steps; at 96 px each still gets 3,000+ (720 flowers, Zen-4, one seed: 0.803 at
    # 128 px in a pair of ~1,500 steps a network, 0.798 at 128 px alone, 0.816 at 96 px in a pair)
    for n_images in (244, 720):
        side, why = choose_image_size(375, n_images, 600.0, "small", fast)
        assert side == 96 and "two networks of" in why, why
        assert int(why.split("two networks of ")[1].split()[0]) >= MIN_STEPS_AT_SIZE
    assert choose_image_size(375, 1428, 600.0, "small", 0.6 * fast)[0] == 96  # a slower machine: 96 px, not 128
    assert choose_image_size(375, 244, 600.0, "small", fast / 32)[0] == 64  # a slow machine: steps first
    assert choose_image_size(100, 1428, 600.0, "small", fast)[0] == 96  # no upsampling of 100 px photos to 128
    assert choose_image_size(375, 1428, 600.0, "standard", fast)[0] == 64
    assert choose_image_size(375, 1428, None, "small", fast)[0] == 64
    assert choose_image_size(375, 1428, 600.0, "small", None)[0] == 64  # nothing measured (forced path)
    # the promise in the log line holds: the final fit's epochs and steps at the chosen side are at least the minimum
    side, why = choose_image_size(375, 3000, 600.0, "small", fast)
    assert side == 96 and int(why.split("about ")[1].split()[0]) >= MIN_EPOCHS_AT_SIZE
    assert int(why.split("(")[1].split()[0]) >= MIN_STEPS_AT_SIZE


def test_auto_image_size_reads_the_photos_and_the_machine(tmp_path):
    from PIL import Image

    from automl_vision.search.run import auto_image_sizes
    from automl_vision.training.device import ExecPath
    from automl_vision.types import Dataset, Sample

    def folder(side, n):
        p = tmp_path / f"{side}.png"
        Image.new("RGB", (side + 40, side), (side % 255, 0, 0)).save(p)
        samples = [Sample(key=f"{side}_{i}.png", label=i % 2, path=p) for i in range(n)]
        return Dataset(classes=["a", "b"], samples=samples, root=str(tmp_path))

    fast = 2600.0 / PROBE_TO_TRAINING  # the reference CNN at 2,600 img/s at 64 px
    cpu = ExecPath("cpu", "bf16", True, "measured", {"fp32": fast / 3, "bf16+cl": fast})
    assert auto_image_sizes(folder(300, 1200), cpu, "auto", 600.0)[0] == [128]
    assert auto_image_sizes(folder(300, 300), cpu, "auto", 180.0)[0] == [64]  # 3 minutes: steps first
    assert auto_image_sizes(folder(300, 300), cpu, "auto", 600.0)[0] == [96]  # a few hundred photos: a pair at 96 px
    assert auto_image_sizes(folder(300, 1200), cpu, "standard", 600.0)[0] == [64]
    assert auto_image_sizes(folder(300, 1200), cpu, "auto", None)[0] == [64]
    assert auto_image_sizes(folder(24, 70), cpu, "auto", 600.0)[0] == [32]  # small images: 32 px
    slow = ExecPath("cpu", "fp32", False, "measured", {"fp32": 40.0, "bf16+cl": fast})  # the path in use counts
    assert auto_image_sizes(folder(300, 1200), slow, "auto", 600.0)[0] == [64]
    assert auto_image_sizes(folder(300, 1200), ExecPath("cuda:0", "bf16", True, "gpu"), "auto", 600.0)[0] == [96]


def test_a_final_fit_stopped_by_the_deadline_at_the_end_of_its_schedule_is_kept(tmp_path, tiny_run):
    """A final fit that a busy machine pushes past the deadline in its last tenth is delivered
    (its learning rate has decayed); one stopped earlier is not (the search's model is)."""
    import shutil

    from automl_vision.data.prepare import reload_prepared
    from automl_vision.plugins import run_plugin_manager
    from automl_vision.rundir import RunDir
    from automl_vision.search.final import FINAL_FIT_KEEP_FROM, retrain
    from automl_vision.training.device import choose
    from automl_vision.training.trainer import BudgetExceeded

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    rd = RunDir(run)
    pm = run_plugin_manager(rd.read_run() or {}, [])
    data = reload_prepared(rd, pm)
    number = int(json.loads((run / "final" / "report.json").read_text())["best_trial"])
    idx = np.sort(np.concatenate([data.split_index[s] for s in ("train", "val", "test")]))
    path = choose("cpu", "fp32", "off")
    batch = json.loads((rd.trial_dir(number) / "config.json").read_text())["batch_size"]
    steps_per_epoch = max(1, len(idx) // min(batch, len(idx)))
    total = 10 * steps_per_epoch

    def abort_after(steps):
        count = [0]

        def abort():
            count[0] += 1
            return "time budget reached" if count[0] >= steps else None
        return abort

    late = int(total * 0.95)
    info = retrain(rd, number, data, pm, path, idx, 10, run / "late", "final_fit", lambda m: None,
                   abort=abort_after(late), warm=True, keep_from=FINAL_FIT_KEEP_FROM)
    assert "stopped" in info and info["epochs"] == 10
    spec = json.loads((run / "late" / "model.json").read_text())
    assert spec["final_fit"]["stopped"] == info["stopped"] and (run / "late" / "weights.safetensors").exists()
    with pytest.raises(BudgetExceeded) as exc:
        retrain(rd, number, data, pm, path, idx, 10, run / "early", "final_fit", lambda m: None,
                abort=abort_after(total // 2), warm=True, keep_from=FINAL_FIT_KEEP_FROM)
    assert 0.4 < exc.value.progress < 0.6 and not (run / "early").exists()


def test_a_final_fit_planned_short_grows_to_the_time_it_has(tmp_path, tiny_run):
    """The final fit is planned from the trial's pace; on sign-digits (10 minutes) 352 epochs
    planned for 6m15s ran in 5m19s and a minute was left unused. From its second epoch its own
    pace decides, up to the deadline."""
    import time

    from automl_vision.search.final import final_fit
    from automl_vision.search.final.training import FINAL_FIT_EPOCH_CAP

    rd, pm, data, number, path, per_epoch = _final_fit_inputs(tmp_path, tiny_run)
    run = rd.path
    end = time.time() + 10.0
    lines: list[str] = []
    info = final_fit(rd, number, data, pm, path, seconds=4.5 * per_epoch, end=end, log=lines.append)
    assert "skipped" not in info, info
    assert info["planned_epochs"] == 4 and info["epochs"] > 4, info  # grew from its own pace
    # the terminal tells the plan from what ran: a user once read "trained for 73 epochs" before a fit of 96
    said = [line for line in lines if line.startswith("final fit:")]
    assert "4 epochs planned" in said[0] and "re-planned after every epoch" in said[0], said
    assert said[-1].startswith(f"final fit: trial {number}'s network trained for {info['epochs']} epochs"), said
    # and says what the budget did to its schedule (grown, perhaps cut back a little later on)
    assert "stopped" in info or f" to {info['epochs']} " in info["schedule"], info
    assert info["epochs"] <= FINAL_FIT_EPOCH_CAP and json.loads((run / "final_fit" / "model.json").read_text())["final_fit"]["epochs"] \
        == info["epochs"]


def test_a_final_fit_plans_past_a_thousand_epochs_when_the_time_affords_them(tmp_path, tiny_run):
    """On 244 photos at 64 px in 10 minutes (a Zen-4 EPYC) a cap of 1,000 epochs stopped both
    networks of the final-fit pair after 1m35s each and the search ended 195 s early, while the
    hand-written loop ran 2,700-4,000 epochs. The time left decides, not a cap that low."""
    import time

    from automl_vision.search.final import final_fit

    rd, pm, data, number, path, per_epoch = _final_fit_inputs(tmp_path, tiny_run)
    lines: list[str] = []
    # the deadline affords a third of the plan at most: the plan is printed, then re-planned to what fits
    end = time.time() + min(3.0, 500 * per_epoch)
    # half an epoch over 1,500: 1500 * x // x can be 1499 in floating point
    info = final_fit(rd, number, data, pm, path, seconds=1500.5 * per_epoch, end=end, log=lines.append)
    assert "skipped" not in info, info
    assert info["planned_epochs"] == 1500 and "1500 epochs planned" in lines[0], (info, lines)
    assert info["epochs"] < 1500  # and the schedule was cut to the deadline, not run to the plan


def _final_fit_inputs(tmp_path, tiny_run):
    """A copy of the tiny run without its final fits, with what :func:`final_fit` takes: the best
    trial's number, a CPU path and that trial's seconds per epoch on every labelled image."""
    from automl_vision.search.final.training import all_labelled, epoch_seconds_on
    from automl_vision.training.device import choose

    rd, pm, data = _copied_run(tmp_path, tiny_run)
    number = int(json.loads((rd.path / "final" / "report.json").read_text())["best_trial"])
    per_epoch = epoch_seconds_on(rd, number, len(all_labelled(data)), len(data.split_index["train"]))
    return rd, pm, data, number, choose("cpu", "fp32", "off"), per_epoch


def _plan_final_fit_epochs(rd, data, epochs):
    """Write a small-data budget into the run whose final fit affords ``epochs`` epochs of its slowest trial."""
    from automl_vision.rundir import write_json
    from automl_vision.search.final import training

    n_all, n_train = len(training.all_labelled(data)), len(data.split_index["train"])
    per_epoch = max(training.epoch_seconds_on(rd, r["number"], n_all, n_train) for r in rd.usable_trials())
    write_json(rd.run_json, {**rd.read_run(),
                             "budget": plan_budget("small", 300, epochs * per_epoch / FINAL_FIT_SHARE).as_dict()})


def _copied_run(tmp_path, tiny_run):
    import shutil

    from automl_vision.data.prepare import reload_prepared
    from automl_vision.plugins import run_plugin_manager
    from automl_vision.rundir import RunDir

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    for name in ("final_fit", "final_fit_2", "final_fit_3", "final_fit_4"):
        shutil.rmtree(run / name, ignore_errors=True)
    rd = RunDir(run)
    pm = run_plugin_manager(rd.read_run() or {}, [])
    return rd, pm, reload_prepared(rd, pm)


def test_the_final_fit_pairs_the_runner_up_only_when_both_get_enough_epochs(tmp_path, tiny_run, monkeypatch):
    """Issue #18: at 10 minutes two networks of half the epochs each, averaged, beat one network
    trained for all of them (trashnet); with fewer epochs (flowers) one network does better."""
    from automl_vision.search.final import training
    from automl_vision.search.final.selection import SELECTION_P
    from automl_vision.search.final.training import MIN_PAIR_EPOCHS, all_labelled, choose_final_pair, epoch_seconds_on

    rd, pm, data = _copied_run(tmp_path, tiny_run)
    monkeypatch.setattr(training, "same_network", lambda *a: False)  # a runner-up that is another network
    m = pm.metrics.get("accuracy")
    y = data.labels[data.split_index["val"]]
    val = {r["number"]: rd.read_val_probs(r["number"]).astype(np.float64) for r in rd.usable_trials()}
    assert len(val) >= 3
    scores = {n: float(m.fn(y, p)) for n, p in val.items()}
    best = max(scores, key=lambda n: (scores[n], -n))
    runner_up = max((n for n in val if n != best), key=lambda n: (scores[n], -n))
    n_all, n_train = len(all_labelled(data)), len(data.split_index["train"])
    slowest = max(epoch_seconds_on(rd, n, n_all, n_train) for n in (best, runner_up))
    enough = 2 * MIN_PAIR_EPOCHS * slowest * 1.01
    # a best model that agrees with the runner-up wherever it matters: the pair is trained
    agreeing = {**val, best: val[runner_up].copy()}
    second, fresh, why = choose_final_pair(rd, best, agreeing, y, data, enough, m)
    assert second == runner_up and not fresh and str(MIN_PAIR_EPOCHS) in why
    # not enough time for both to run MIN_PAIR_EPOCHS: one network
    second, fresh, why = choose_final_pair(rd, best, agreeing, y, data, enough * 0.9, m)
    assert second is None and not fresh and "fewer than" in why
    # the best model alone significantly better on validation than the pair's average: one network
    k = val[best].shape[1]
    right = np.eye(k)[y] * 0.5 + 0.5 / k  # right everywhere, unsure
    half = np.where((np.arange(len(y)) % 2 == 0)[:, None], np.eye(k)[(y + 1) % k], np.eye(k)[y]) * 0.99 + 0.01 / k
    sure = {best: right, runner_up: half}  # the runner-up, sure and wrong on half: the average follows it
    second, fresh, why = choose_final_pair(rd, best, sure, y, data, enough, m)
    assert len(y) >= 10 and second is None and not fresh and "significantly" in why and SELECTION_P < 1
    assert choose_final_pair(rd, best, {best: val[best]}, y, data, enough, m)[:2] == (None, False)  # nothing to pair


def test_a_runner_up_of_the_best_models_own_network_gives_its_place_to_a_fresh_network(tmp_path, tiny_run):
    """Issue #18: a runner-up that trains the best model's network with other settings (the
    portfolio's plain CNN with light augmentation) made the final fit's average worse than a fresh
    network of the best configuration in its place (benchmarks/README.md section 29): the pair's
    second network is then a fresh one, under the pair's epoch rule; another network stays the partner."""
    from automl_vision.search.final.training import (MIN_PAIR_EPOCHS, all_labelled, choose_final_copies,
                                                     choose_final_pair, epoch_seconds_on, same_network)

    rd, pm, data = _copied_run(tmp_path, tiny_run)
    configs = {r["number"]: json.loads((rd.trial_dir(r["number"]) / "config.json").read_text())
               for r in rd.usable_trials()}
    network = {n: (c["family"], json.dumps(c["model_params"], sort_keys=True), c["image_size"])
               for n, c in configs.items()}
    pairs = [(a, b) for a in network for b in network if a != b]
    # the tiny search's portfolio trains one network with two augmentation presets, and another network
    twins = [(a, b) for a, b in pairs if network[a] == network[b]]
    others = [(a, b) for a, b in pairs if network[a] != network[b]]
    assert twins and others and configs[twins[0][0]]["aug_preset"] != configs[twins[0][1]]["aug_preset"]
    assert all(same_network(rd, a, b) for a, b in twins) and not any(same_network(rd, a, b) for a, b in others)

    m = pm.metrics.get("accuracy")
    y = data.labels[data.split_index["val"]]
    n_all, n_train = len(all_labelled(data)), len(data.split_index["train"])
    for (best, runner_up), fresh_expected in ((twins[0], True), (others[0], False)):
        val = {n: rd.read_val_probs(n).astype(np.float64) for n in configs}
        k = val[best].shape[1]
        val[best] = np.eye(k)[y] * 0.9 + 0.1 / k  # the best, and the runner-up next on validation
        val[runner_up] = np.eye(k)[y] * 0.8 + 0.2 / k
        for n in set(configs) - {best, runner_up}:
            val[n] = np.full((len(y), k), 1.0 / k)
        slowest = max(epoch_seconds_on(rd, n, n_all, n_train) for n in (best, runner_up))
        enough = 2 * MIN_PAIR_EPOCHS * slowest * 1.01
        second, fresh, why = choose_final_pair(rd, best, val, y, data, enough, m)
        if fresh_expected:
            assert second is None and fresh and "fresh network" in why and f"trial {runner_up}" in why, why
            # the fresh network counts as the second of the final fit's networks
            assert choose_final_copies(rd, best, None, data, 1e9, fresh_partner=True)[0] == \
                choose_final_copies(rd, best, None, data, 1e9)[0] - 1
            # the pair's epoch rule still holds for the best configuration's pace
            pace = epoch_seconds_on(rd, best, n_all, n_train)
            short = choose_final_pair(rd, best, val, y, data, 2 * MIN_PAIR_EPOCHS * pace * 0.9, m)
            assert short[:2] == (None, False) and "fewer than" in short.why
        else:
            assert second == runner_up and not fresh, why


def test_a_final_fit_pair_is_the_deliverable_predict_and_export_use(tmp_path, tiny_run, monkeypatch, digits_dir):
    """The pair's two networks, each trained on every labelled image, are the ensemble that
    predict, the Python API and export load; its honest estimate is the pair before the final fit."""
    import automl_vision
    from automl_vision.search.final import finalize, training
    from automl_vision.training.device import choose

    rd, pm, data = _copied_run(tmp_path, tiny_run)
    monkeypatch.setattr(training, "same_network", lambda *a: False)  # a runner-up that is another network
    # a small-data run whose plan kept time for 4 epochs of each of two networks (MIN_PAIR_EPOCHS = 3:
    # on tiny digits a few epochs stand for a few hundred)
    monkeypatch.setattr(training, "MIN_PAIR_EPOCHS", 3)
    _plan_final_fit_epochs(rd, data, 2 * 4)
    report = finalize(rd, data, pm, choose("cpu", "fp32", "off"), "accuracy", log=lambda m: None,
                      respect_budget=False)
    ff = report["final_fit"]
    assert "skipped" not in ff and len(ff.get("networks") or []) == 2, ff["pair_decision"]
    assert ff["copies_decision"] and "fewer than" in ff["copies_decision"]  # no time for fresh networks
    members = {int(f["of_trial"]): f for f in ff["networks"]}
    assert list(members)[0] == report["best_trial"]
    assert all(f["images"] == _labelled(digits_dir) and f["epochs"] >= 2 for f in members.values())
    ens = json.loads((rd.path / "ensemble.json").read_text())
    assert ens["selected"] is True and ens["method"] == "final-fit pair" and report["deliverable"] == "ensemble"
    assert sorted(m["dir"] for m in ens["members"]) == ["final_fit", "final_fit_2"]
    assert {int(m["trial"]): m["dir"] for m in ens["members"]} == {n: f["dir"] for n, f in members.items()}
    assert [m["weight"] for m in ens["members"]] == [0.5, 0.5]
    for f in members.values():
        spec = json.loads((rd.path / f["dir"] / "model.json").read_text())
        assert spec["final_fit"]["of_trial"] == f["of_trial"] and spec["final_fit"]["warm_start"] is True
    # best/ is the best model's own final fit
    assert json.loads((rd.best_dir / "model.json").read_text())["final_fit"]["of_trial"] == report["best_trial"]
    # the honest estimate: the pair as the search trained it, on the test split, with its interval
    assert "accuracy" in report["ensemble"]["test"] and "ensemble_test" in report["intervals"]
    predictor = automl_vision.load(rd.path)
    assert predictor.kind == "ensemble" and len(predictor.deliverable.members) == 2
    assert "final fit" in predictor.deliverable.describe()
    assert sorted(m["dir"] for m in predictor.deliverable.members) == ["final_fit", "final_fit_2"]
    proc = run_cli("predict", rd.path, digits_dir, "--out", tmp_path / "p.csv")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(list(csv.DictReader((tmp_path / "p.csv").open()))) == _labelled(digits_dir)
    proc = run_cli("export", rd.path, "--format", "torchscript", "--out", tmp_path / "m.pt")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # the summary and the dashboard say what was trained and what the scores are
    from rich.console import Console

    from automl_vision.dashboard.sections.ensemble import final_fit_line
    from automl_vision.search.final import print_summary

    console = Console(record=True, width=300, no_color=True)
    print_summary(report, console)
    text = console.export_text()
    assert "Final fit (small-data regime), a pair" in text and "Deliverable: ensemble" in text
    assert "ensemble (final-fit pair" in text
    # the flip TTA line says the rule that kept or dropped it, not only the validation scores
    flat = " ".join(text.split())
    assert report["tta"]["requested"] and f"Rule: {report['tta']['best']['rule']}" in flat
    assert "a pair" in final_fit_line(report) and f"trial #{report['best_trial']}'s" in final_fit_line(report)


def test_a_fresh_network_in_the_runner_ups_place_is_delivered_with_the_best_models(tmp_path, tiny_run, monkeypatch,
                                                                                  digits_dir):
    """When the runner-up trains the best model's own network, the final fit trains the best
    model's network and a fresh network of its configuration; their average is what predict
    loads, and the honest estimate is the best model's before the final fit."""
    import automl_vision
    from automl_vision.search.final import finalize, print_summary, training
    from automl_vision.training.device import choose

    rd, pm, data = _copied_run(tmp_path, tiny_run)
    monkeypatch.setattr(training, "same_network", lambda *a: True)
    monkeypatch.setattr(training, "MIN_PAIR_EPOCHS", 3)
    _plan_final_fit_epochs(rd, data, 2 * 4)  # 4 epochs of each of two networks, not enough for a third
    report = finalize(rd, data, pm, choose("cpu", "fp32", "off"), "accuracy", log=lambda m: None,
                      respect_budget=False)
    ff = report["final_fit"]
    nets = ff.get("networks") or []
    best = report["best_trial"]
    assert len(nets) == 2 and [f["of_trial"] for f in nets] == [best, best], ff["pair_decision"]
    assert [f.get("copy", 0) for f in nets] == [0, 1] and "fresh network" in ff["pair_decision"]
    assert nets[0]["warm_start"] is True and nets[1]["warm_start"] is False
    ens = json.loads((rd.path / "ensemble.json").read_text())
    assert ens["selected"] is True and ens["method"] == "final-fit average" and report["deliverable"] == "ensemble"
    assert [m["dir"] for m in ens["members"]] == ["final_fit", "final_fit_2"]
    assert [m["weight"] for m in ens["members"]] == [0.5, 0.5]
    assert "1 fresh network(s)" in report["why"]
    # the estimate before the final fit is the best model's own (the fresh network has no searched counterpart)
    assert report["ensemble"]["test"]["accuracy"] == report["best_test"]["accuracy"]
    predictor = automl_vision.load(rd.path)
    assert predictor.kind == "ensemble" and len(predictor.deliverable.members) == 2
    assert len(predictor.predict(sorted(digits_dir.rglob("*.png"))[:3])) == 3
    from rich.console import Console

    console = Console(record=True, width=300, no_color=True)
    print_summary(report, console)
    assert "Final fit, one searched network: trial" in " ".join(console.export_text().split())


def test_fresh_networks_join_the_final_fit_only_while_each_still_runs_enough_epochs(tmp_path, tiny_run):
    """Beyond the pair, fresh networks of the best configuration join the final fit up to
    MAX_FINAL_NETWORKS, each given an equal share of the time, while each still runs
    MIN_COPY_EPOCHS epochs (measured: past ~200 epochs on a few hundred photos an average of
    more networks gains, one network does not)."""
    from automl_vision.search.final.training import (MAX_FINAL_NETWORKS, MIN_COPY_EPOCHS, MIN_PAIR_EPOCHS,
                                                     all_labelled, choose_final_copies, epoch_seconds_on)

    rd, pm, data = _copied_run(tmp_path, tiny_run)
    numbers = sorted(r["number"] for r in rd.usable_trials())
    best, second = numbers[0], numbers[1]
    n_all, n_train = len(all_labelled(data)), len(data.split_index["train"])
    pace = {n: epoch_seconds_on(rd, n, n_all, n_train) for n in (best, second)}
    assert MAX_FINAL_NETWORKS >= 3 and MIN_COPY_EPOCHS >= MIN_PAIR_EPOCHS
    for k in range(2, MAX_FINAL_NETWORKS + 1):
        # exactly enough for k networks of the best configuration alone: k - 1 fresh ones
        copies, why = choose_final_copies(rd, best, None, data, k * MIN_COPY_EPOCHS * pace[best] * 1.01)
        assert copies == k - 1 and str(MIN_COPY_EPOCHS) in why, why
        # with a pair, the two searched networks count: k - 2 fresh ones
        enough = k * max(MIN_COPY_EPOCHS * pace[best], MIN_PAIR_EPOCHS * pace[second]) * 1.01
        assert choose_final_copies(rd, best, second, data, enough)[0] == k - 2
    # never more than MAX_FINAL_NETWORKS, however long the time
    assert choose_final_copies(rd, best, None, data, 1e9)[0] == MAX_FINAL_NETWORKS - 1
    # short of MIN_COPY_EPOCHS for a second network: none, and the reason says so
    copies, why = choose_final_copies(rd, best, None, data, 2 * MIN_COPY_EPOCHS * pace[best] * 0.95)
    assert copies == 0 and "fewer than" in why


def test_a_final_fit_with_a_fresh_network_delivers_the_average_of_all_three(tmp_path, tiny_run, monkeypatch,
                                                                           digits_dir):
    """The pair and a fresh network of the best configuration (another seed, trained from scratch
    on every labelled image) are the ensemble that predict loads, each with a third of the weight;
    the honest estimate stays the pair's before the final fit, and the report says so."""
    import automl_vision
    from automl_vision.search.final import finalize, training
    from automl_vision.training.device import choose

    rd, pm, data = _copied_run(tmp_path, tiny_run)
    monkeypatch.setattr(training, "same_network", lambda *a: False)  # a runner-up that is another network
    monkeypatch.setattr(training, "MIN_PAIR_EPOCHS", 3)
    monkeypatch.setattr(training, "MIN_COPY_EPOCHS", 3)
    monkeypatch.setattr(training, "MAX_FINAL_NETWORKS", 3)
    _plan_final_fit_epochs(rd, data, 3 * 4)  # time for 4 epochs of each of three networks
    report = finalize(rd, data, pm, choose("cpu", "fp32", "off"), "accuracy", log=lambda m: None,
                      respect_budget=False)
    ff = report["final_fit"]
    nets = ff.get("networks") or []
    assert "skipped" not in ff and len(nets) == 3, (ff["pair_decision"], ff["copies_decision"])
    best = report["best_trial"]
    assert [f.get("copy", 0) for f in nets] == [0, 0, 1] and nets[2]["of_trial"] == best
    assert all(f["images"] == _labelled(digits_dir) and f["epochs"] >= 2 for f in nets)
    fresh = json.loads((rd.path / nets[2]["dir"] / "model.json").read_text())["final_fit"]
    trial_seed = json.loads((rd.trial_dir(best) / "config.json").read_text())["seed"]
    assert fresh["warm_start"] is False and fresh["copy"] == 1 and fresh["seed"] == trial_seed + training.COPY_SEED_STEP
    ens = json.loads((rd.path / "ensemble.json").read_text())
    assert ens["selected"] is True and ens["method"] == "final-fit average" and report["deliverable"] == "ensemble"
    assert [m["dir"] for m in ens["members"]] == ["final_fit", "final_fit_2", "final_fit_3"]
    assert [m.get("copy") for m in ens["members"]] == [None, None, 1]
    assert sum(m["weight"] for m in ens["members"]) == pytest.approx(1.0)
    assert "1 fresh network(s)" in report["why"]
    predictor = automl_vision.load(rd.path)
    assert predictor.kind == "ensemble" and len(predictor.deliverable.members) == 3
    probs = predictor.predict_proba(sorted(p for p in digits_dir.rglob("*") if p.is_file())[:5])
    assert probs.shape[0] == 5 and np.allclose(probs.sum(1), 1.0, atol=1e-4)
    from rich.console import Console

    from automl_vision.dashboard.sections.ensemble import final_fit_line
    from automl_vision.search.final import print_summary

    console = Console(record=True, width=300, no_color=True)
    print_summary(report, console)
    flat = " ".join(console.export_text().split())
    assert "Final fit (small-data regime), 3 networks" in flat and "a fresh network of trial" in flat
    assert "conservative" in flat and "Final fit, fresh networks:" in flat
    assert "3 networks" in final_fit_line(report) and "fresh network" in final_fit_line(report)


def test_the_report_says_when_the_selection_kept_a_model_over_the_leader(tmp_path, tiny_run, monkeypatch):
    """When the selection keeps the first portfolio configuration over a leader whose lead is not
    significant, the deliverable's description must not call the kept model "best on validation"
    (measured on flowers-720: trial 3 led, trial 0 was kept, and the report said trial 0 was best)."""
    from automl_vision.search import final
    from automl_vision.search.final import finalize
    from automl_vision.training.device import choose

    rd, pm, data = _copied_run(tmp_path, tiny_run)
    _plan_final_fit_epochs(rd, data, 3)  # time for one network's final fit
    real, picked = final.select_best, {}

    def keep_another(trials, val, y, metric, m, final_epochs=None):
        leader, info = real(trials, val, y, metric, m)
        picked["leader"], picked["kept"] = leader, next(n for n in sorted(val) if n != leader)
        return picked["kept"], {**info, "leader": leader, "chosen": picked["kept"]}

    monkeypatch.setattr(final, "select_best", keep_another)
    report = finalize(rd, data, pm, choose("cpu", "fp32", "off"), "accuracy", log=lambda m: None,
                      respect_budget=False)
    assert report["best_trial"] == picked["kept"] and "skipped" not in report["final_fit"], report["final_fit"]
    assert f"trial {picked['kept']}'s network (kept over trial {picked['leader']}" in report["why"], report["why"]
    assert "best on validation" not in report["why"]


def test_the_report_says_when_a_short_trial_s_lead_was_set_aside(tmp_path, tiny_run, monkeypatch):
    """Before a final fit, a significant lead taken by a trial much shorter than the final fit does
    not replace the first portfolio configuration, and the log and report say why; without a final
    fit the same lead wins."""
    from automl_vision.rundir import STATUS, write_json
    from automl_vision.search.final import finalize, selection
    from automl_vision.training.device import choose

    rd, pm, data = _copied_run(tmp_path, tiny_run)
    prior, challenger = sorted(r["number"] for r in rd.usable_trials())[:2]
    for n in (prior, challenger):  # both from the portfolio, the first being the prior
        status = rd.trial_dir(n) / STATUS
        write_json(status, {**json.loads(status.read_text()), "portfolio": f"entry-{n}"})
    ran = int(rd.read_trial(challenger)["epochs"])
    _plan_final_fit_epochs(rd, data, 2 * ran + 4)  # one network, more than twice the challenger's epochs
    monkeypatch.setattr(selection, "SELECTION_P", 1.01)  # any lead is significant
    monkeypatch.setattr(selection, "leader", lambda val, y, m, exclude=(): challenger if challenger not in exclude
                        else prior)
    logged: list[str] = []
    report = finalize(rd, data, pm, choose("cpu", "fp32", "off"), "accuracy", log=logged.append, respect_budget=False)
    sel = report["selection"]
    assert report["best_trial"] == prior and sel["leader"] == challenger and sel["chosen"] == prior
    assert sel["short_lead"]["epochs"] == ran and sel["short_lead"]["final_fit_epochs"] >= 2 * ran
    assert "taken in a trial much shorter than the final fit" in report["why"], report["why"]
    assert any(f"taken after {ran} epochs" in line for line in logged), logged
    report = finalize(rd, data, pm, choose("cpu", "fp32", "off"), "accuracy", log=logged.append, final=False)
    assert report["best_trial"] == challenger and "short_lead" not in report["selection"]
