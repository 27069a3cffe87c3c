"""Ensemble selection, calibration, the final evaluation and ``automl-vision ensemble``."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from automl_vision import calibration
from automl_vision import ensemble as ens
from automl_vision.builtin.classification_metrics import accuracy, log_loss
from automl_vision.rundir import RunDir
from conftest import run_cli


# ------------------------------------------------------------------ selection on synthetic probabilities
def _onehot(pred: np.ndarray, k: int, conf: float) -> np.ndarray:
    p = np.full((len(pred), k), (1 - conf) / (k - 1))
    p[np.arange(len(pred)), pred] = conf
    return p


def complementary_models(n: int = 300, k: int = 3, seed: int = 0):
    """Three models, each wrong (with little confidence) on a different third of the
    samples and right (with more) elsewhere: any two of them voting together are right
    everywhere, each alone on two thirds. A fourth model guesses confidently."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    probs = {}
    for m in range(3):
        wrong = (np.arange(n) % 3) == m
        p = _onehot(y, k, 0.6)
        p[wrong] = _onehot((y[wrong] + 1) % k, k, 0.4)
        probs[m] = p
    probs[3] = _onehot(rng.integers(0, k, n), k, 0.9)
    return y, probs


def test_greedy_selection_combines_complementary_models_and_beats_each():
    y, probs = complementary_models()
    weights = ens.greedy_selection(probs, y, accuracy, "maximize", max_members=5)
    assert abs(sum(weights.values()) - 1.0) < 1e-9
    assert 3 not in weights  # the guesser never helps
    assert len(weights) >= 2
    combined = accuracy(y, ens.combine(probs, weights))
    assert combined > max(accuracy(y, probs[m]) for m in range(4))
    assert combined == pytest.approx(1.0)


def test_greedy_respects_max_members_and_minimised_metrics():
    y, probs = complementary_models()
    weights = ens.greedy_selection(probs, y, log_loss, "minimize", max_members=2)
    assert 1 <= len(weights) <= 2
    best_single = min(log_loss(y, p) for p in probs.values())
    assert log_loss(y, ens.combine(probs, weights)) <= best_single + 1e-12


def test_greedy_climbs_log_loss_not_the_step_of_one_image():
    """A confidently wrong model that happens to flip one borderline image is added by climbing
    accuracy (one image more is right on validation) but not by the default, which climbs
    log-loss: averaging it in makes every other prediction worse."""
    k, n = 2, 100
    y = np.zeros(n, dtype=int)
    good = _onehot(y, k, 0.9)
    good[0] = [0.45, 0.55]  # wrong, but only just
    noisy = _onehot(y, k, 0.9)
    noisy[0] = [0.99, 0.01]
    noisy[1:30] = _onehot(np.ones(29, dtype=int), k, 0.95)  # 29 confident mistakes, outvoted by ``good``
    probs = {0: good, 1: noisy}
    by_accuracy = ens.select("greedy-metric", probs, y, accuracy, "maximize")
    assert set(by_accuracy) == {0, 1}
    assert accuracy(y, ens.combine(probs, by_accuracy)) > accuracy(y, good)
    assert ens.select("greedy", probs, y, accuracy, "maximize") == {0: 1.0}


def test_topk_averages_the_k_best_equally():
    y, probs = complementary_models()
    weights = ens.topk_selection(probs, y, accuracy, "maximize", k=2)
    assert len(weights) == 2 and set(weights.values()) == {0.5}
    assert 3 not in weights
    with pytest.raises(ValueError, match="greedy, greedy-metric, topk"):
        ens.select("median", probs, y, accuracy, "maximize")


def test_ensemble_command_offers_every_selection_method():
    from automl_vision.commands import ensemble as command

    assert command.METHODS == ens.METHODS


# ------------------------------------------------------------------ calibration
def overconfident(n: int = 2000, k: int = 4, seed: int = 1):
    """Right 70 % of the time but always 97 % sure."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    pred = np.where(rng.random(n) < 0.7, y, (y + 1) % k)
    return y, _onehot(pred, k, 0.97)


def test_temperature_scaling_fixes_overconfidence_without_changing_predictions():
    y, p = overconfident()
    t = calibration.fit_temperature(p, y)
    assert t > 1.5  # softens the probabilities
    q = calibration.apply_temperature(p, t)
    np.testing.assert_array_equal(q.argmax(1), p.argmax(1))
    np.testing.assert_allclose(q.sum(1), 1.0)
    assert calibration.nll(p, y, t) < calibration.nll(p, y)
    before, after = calibration.expected_calibration_error(y, p), calibration.expected_calibration_error(y, q)
    assert before > 0.2 and after < 0.05
    # 1/T undoes T: the final report derives the uncalibrated test ECE this way
    np.testing.assert_allclose(calibration.apply_temperature(q, 1.0 / t), p, atol=1e-9)


def test_temperature_is_one_when_probabilities_are_already_calibrated():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 4000)
    right = rng.permutation(4000) < 3200  # exactly 80 % right ...
    p = _onehot(np.where(right, y, 1 - y), 2, 0.8)  # ... and always 80 % sure: NLL is minimal at T = 1
    assert calibration.fit_temperature(p, y) == pytest.approx(1.0, abs=0.01)


# ------------------------------------------------------------------ the ensemble command on a real run
def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture()
def run_copy(tiny_run, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    return out


def test_ensemble_command_rebuilds_with_other_settings_and_reports_both_on_test(run_copy):
    rd = RunDir(run_copy)
    trials_before = _digest(run_copy / "trials")
    complete = [r["number"] for r in rd.iter_trials() if r.get("state") == "COMPLETE"]
    proc = run_cli("ensemble", run_copy, "--method", "topk", "--max-members", "2", "--calibrate", "--tta", "--plain")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Final evaluation on the held-out test split" in proc.stdout
    assert "best single: trial" in proc.stdout and "ensemble (topk" in proc.stdout
    assert "Deliverable:" in proc.stdout and "Calibration" in proc.stdout and "test-time augmentation" in proc.stdout
    # without --refit the summary says what a refit would take and the command that runs it
    said = " ".join(proc.stdout.split())
    assert "Optional next step (about" in said and f"automl-vision ensemble {run_copy} --refit retrains" in said

    ensemble = json.loads((run_copy / "ensemble.json").read_text())
    assert ensemble["method"] == "topk"
    assert len(ensemble["members"]) == min(2, len(complete))
    assert sum(m["weight"] for m in ensemble["members"]) == pytest.approx(1.0)
    assert ensemble["temperature"] > 0 and isinstance(ensemble["tta"], bool)
    report = rd.read_final()
    assert report["rebuilt_by"] == "automl-vision ensemble"
    for metrics in (report["best_test"], report["ensemble"]["test"]):
        assert 0.0 <= metrics["accuracy"] <= 1.0 and "ece" in metrics
    assert report["deliverable"] in ("best", "ensemble") and report["why"]
    cal = report["calibration"]
    assert cal["requested"] and {"temperature", "val_ece_before", "val_ece_after", "test_ece_after"} <= set(cal["best"])
    # the temperature fitted on validation never makes the validation NLL worse
    assert cal["best"]["val_nll_after"] <= cal["best"]["val_nll_before"] + 1e-12
    best_spec = json.loads((run_copy / "best" / "model.json").read_text())
    assert best_spec["temperature"] == pytest.approx(cal["best"]["temperature"])
    assert best_spec["tta"] == report["tta"]["best"]["used"]
    # the stored test probabilities are the reported ones
    y = np.load(run_copy / "final" / "test_labels.npy")
    p = np.load(run_copy / "final" / "test_probs_ensemble.npy")
    assert (p.argmax(1) == y).mean() == pytest.approx(report["ensemble"]["test"]["accuracy"])
    # trials are never changed by the rebuild
    assert _digest(run_copy / "trials") == trials_before


@pytest.mark.slow
def test_refit_command_retrains_the_chosen_configurations_on_train_plus_validation(run_copy):
    rd = RunDir(run_copy)
    proc = run_cli("ensemble", run_copy, "--refit", "--max-members", "2", "--plain")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = rd.read_final()
    refit = report["refit"]
    assert refit["requested"] and not refit.get("skipped")
    chosen = {m["trial"] for m in report["ensemble"]["members"]} | {report["best_trial"]}
    assert {m["trial"] for m in refit["models"]} == chosen
    data = rd.read_data_report()
    n_trainval = sum(data["counts"]["train"].values()) + sum(data["counts"]["val"].values())
    for m in refit["models"]:
        spec = json.loads((run_copy / m["dir"] / "model.json").read_text())
        status = rd.read_trial(m["trial"])
        assert spec["refit"]["epochs"] == status["epochs"]  # the epochs the search found
        assert spec["refit"]["images"] == n_trainval
        # new weights, not a copy of the trial's
        assert (run_copy / m["dir"] / "weights.safetensors").read_bytes() != \
            (rd.trial_dir(m["trial"]) / "weights.safetensors").read_bytes()
    best = json.loads((run_copy / "best" / "model.json").read_text())
    assert best["source"].startswith("refit/")
    assert "Refit on train + validation" in proc.stdout
    for member in json.loads((run_copy / "ensemble.json").read_text())["members"]:
        assert member["dir"].startswith("refit/")


def cli(capsys, *args) -> tuple[int, str, str]:
    """The CLI in this process (no interpreter start-up): exit status, stdout, stderr."""
    from automl_vision.cli import main

    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_ensemble_command_bad_inputs_exit_2_and_lose_nothing(tmp_path, run_copy, capsys):
    code, _out, err = cli(capsys, "ensemble", tmp_path / "nope")
    assert code == 2 and "no such run directory" in err

    not_a_run = tmp_path / "plain folder"
    not_a_run.mkdir()
    code, _out, err = cli(capsys, "ensemble", not_a_run)
    assert code == 2 and "not an automl-vision run directory" in err

    with pytest.raises(SystemExit) as exc:
        cli(capsys, "ensemble", run_copy, "--max-members", "0")
    assert exc.value.code == 2 and "at least 1" in capsys.readouterr().err

    # a run in which no trial finished
    for status in (run_copy / "trials").glob("*/status.json"):
        rec = json.loads(status.read_text())
        rec["state"] = "FAIL"
        status.write_text(json.dumps(rec))
    before = _digest(run_copy)
    code, _out, err = cli(capsys, "ensemble", run_copy)
    assert code == 2 and "no trial of this run has finished" in err
    assert _digest(run_copy) == before


@pytest.fixture(scope="module")
def flagged_search(tmp_path_factory, digits_dir) -> Path:
    """A real search started with --refit (two trials, no pruning); flip TTA and calibration are on by default."""
    out = tmp_path_factory.mktemp("flagged") / "run"
    proc = run_cli("search", digits_dir, "--out", out, "--n-trials", "2", "--max-epochs", "1", "--image-size", "16",
                   "--models", "cnn", "--pruner", "none", "--plain", "--refit")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def test_flip_tta_and_calibration_are_on_unless_the_search_says_no():
    from automl_vision.cli import build_parser
    from automl_vision.settings import settings_from_options

    def options(*argv: str):
        args = vars(build_parser().parse_args(["search", "data", *argv]))
        return settings_from_options(args.pop("data"), args.pop("out"), **{k: v for k, v in args.items()
                                                                           if k not in ("func", "command")}).options

    assert options().tta is True and options("--tta").tta is True
    assert options("--no-tta").tta is False
    # the Python API takes the same default
    assert settings_from_options("data", n_trials=1).options.tta is True
    assert settings_from_options("data", n_trials=1, tta=False).options.tta is False
    assert options().calibrate is True and options("--no-calibrate").calibrate is False
    assert settings_from_options("data", n_trials=1).options.calibrate is True
    assert settings_from_options("data", n_trials=1, calibrate=False).options.calibrate is False


def test_search_flags_reach_the_final_step(flagged_search):
    rd = RunDir(flagged_search)
    report = rd.read_final()
    assert report["tta"]["requested"] and "used" in report["tta"]["best"]
    assert report["calibration"]["requested"] and report["calibration"]["best"]["temperature"] > 0
    ensemble = rd.read_ensemble()
    assert "temperature" in ensemble and "tta" in ensemble
    # --refit: the chosen configurations retrained on train + validation, as many epochs as the search found
    refit = report["refit"]
    assert refit["requested"] and not refit.get("skipped")
    chosen = {m["trial"] for m in report["ensemble"]["members"]} | {report["best_trial"]}
    assert {m["trial"] for m in refit["models"]} == chosen
    data = rd.read_data_report()
    n_trainval = sum(data["counts"]["train"].values()) + sum(data["counts"]["val"].values())
    for m in refit["models"]:
        assert m["dir"].startswith("refit/")
        spec = json.loads((flagged_search / m["dir"] / "model.json").read_text())
        assert spec["refit"]["epochs"] == rd.read_trial(m["trial"])["epochs"]
        assert spec["refit"]["images"] == n_trainval
        assert (flagged_search / m["dir"] / "weights.safetensors").read_bytes() != \
            (rd.trial_dir(m["trial"]) / "weights.safetensors").read_bytes()
    assert json.loads((flagged_search / "best" / "model.json").read_text())["source"].startswith("refit/")
    assert all(member["dir"].startswith("refit/") for member in ensemble["members"])


def test_predictor_reproduces_a_calibrated_tta_refit_deliverable(flagged_search):
    """Temperature, TTA and refit weights are all applied by the predictor as in the report."""
    import automl_vision

    rd = RunDir(flagged_search)
    report = rd.read_final()
    root = Path(rd.read_data_report()["root"])
    files = [str(root / k) for k in report["test_keys"]]
    for model, stored in (("best", "test_probs_best.npy"), ("ensemble", "test_probs_ensemble.npy")):
        predictor = automl_vision.load(str(flagged_search), model=model)
        expected = np.load(flagged_search / "final" / stored)
        np.testing.assert_allclose(predictor.predict_proba(files), expected, atol=1e-5)
    best = automl_vision.load(str(flagged_search), model="best")
    assert best.module.temperature == pytest.approx(report["calibration"]["best"]["temperature"])
    assert best.module.tta == report["tta"]["best"]["used"]


def test_scoring_the_test_split_again_is_counted_and_said(run_copy, capsys):
    """The held-out test split is meant to be touched once: every later scoring is counted and warned about."""
    first = json.loads((run_copy / "final" / "report.json").read_text())
    assert first["test_evaluations"] == 1 and "test_warning" not in first
    code, out, _err = cli(capsys, "ensemble", run_copy, "--plain")
    assert code == 0
    again = json.loads((run_copy / "final" / "report.json").read_text())
    assert again["test_evaluations"] == 2
    assert "scored 2 times" in again["test_warning"] and "scored 2 times" in " ".join(out.split())


def test_run_json_options_keep_their_meaning_across_versions():
    """run.json's settings.options is a dict: an older run without tta/calibrate did not try
    them, a key a newer version wrote is ignored, and only non-default values are written."""
    from automl_vision.settings import SearchOptions, SearchSettings, settings_from_options

    old = SearchSettings.from_dict({"data": "d", "run_dir": "r", "study_name": "s",
                                    "options": {"sampler": "random", "refit": True, "from_the_future": 1}})
    assert (old.options.sampler, old.options.refit, old.options.tta, old.options.calibrate) == ("random", True,
                                                                                              False, False)
    new = settings_from_options("data", n_trials=1)
    stored = new.as_dict()["options"]
    assert stored == {"tta": True, "calibrate": True}
    assert SearchSettings.from_dict(new.as_dict()).options == new.options
    assert SearchOptions.from_dict(None) == SearchOptions()
