"""``automl_vision.load`` and ``automl-vision predict`` on a real finished run."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import automl_vision
from automl_vision.rundir import RunDir
from conftest import run_cli


def split_files(run: Path) -> tuple[list[Path], dict]:
    report = RunDir(run).read_final()
    root = Path(RunDir(run).read_data_report()["root"])
    return [root / k for k in report["test_keys"]], report


@pytest.mark.parametrize("model, stored", [("best", "test_probs_best.npy"), ("ensemble", "test_probs_ensemble.npy")])
def test_predictor_reproduces_the_runs_own_test_evaluation(tiny_run, model, stored):
    files, _report = split_files(tiny_run)
    predictor = automl_vision.load(str(tiny_run), model=model)
    probs = predictor.predict_proba([str(f) for f in files])
    expected = np.load(tiny_run / "final" / stored)
    assert probs.shape == expected.shape == (len(files), 10)
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    labels = predictor.predict([str(f) for f in files])
    assert labels == [predictor.classes[i] for i in expected.argmax(1)]


def test_auto_is_the_reported_deliverable(tiny_run):
    report = RunDir(tiny_run).read_final()
    predictor = automl_vision.load(str(tiny_run))
    assert predictor.kind == report["deliverable"]
    assert predictor.classes == [str(i) for i in range(10)]


def test_paths_pil_images_and_arrays_give_the_same_probabilities(tiny_run):
    files, _ = split_files(tiny_run)
    predictor = automl_vision.load(str(tiny_run), model="best")
    path = files[0]
    with Image.open(path) as img:
        img.load()
        grey = np.asarray(img)
    rgb = np.stack([grey] * 3, axis=-1)  # a colour array is converted to the model's greyscale
    from_path = predictor.predict_proba(str(path))
    assert from_path.shape == (1, 10)
    for other in (path, img, grey, grey[:, :, None], rgb, [str(path)]):
        np.testing.assert_allclose(predictor.predict_proba(other), from_path, atol=1e-6, err_msg=str(type(other)))
    batch = np.stack([grey, grey])  # (N, H, W): a batch of two greyscale images
    np.testing.assert_allclose(predictor.predict_proba(list(batch)), np.vstack([from_path, from_path]), atol=1e-6)


def test_predictor_refuses_what_it_cannot_read_with_the_reason(tiny_run, tmp_path):
    predictor = automl_vision.load(str(tiny_run), model="best")
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png at all")
    files, _ = split_files(tiny_run)
    with pytest.raises(ValueError, match=r"1 of 2 images.*broken\.png.*not an image"):
        predictor.predict_proba([str(files[0]), str(bad)])
    with pytest.raises(ValueError, match="expected a uint8 image"):
        predictor.predict_proba(np.zeros((16, 16), dtype=np.float32))


def test_trial_model_is_the_trials_own_network(tiny_run):
    rd = RunDir(tiny_run)
    report = rd.read_final()
    best_n = report["best_trial"]
    files, _ = split_files(tiny_run)
    trial = automl_vision.load(str(tiny_run), model=f"trial:{best_n}")
    assert trial.kind == f"trial:{best_n}"
    p = trial.predict_proba([str(f) for f in files[:5]])
    # the best model without its temperature and flip average is the same network as the trial
    # (tiny_run has no --refit; calibration and flip TTA are on by default and switched off here)
    best = automl_vision.load(str(tiny_run), model="best")
    assert best.module.temperature == pytest.approx(report["calibration"]["best"]["temperature"])
    assert not (report.get("refit") or {}).get("models")
    best.module.tta, best.module.temperature = False, 1.0
    np.testing.assert_allclose(p, best.predict_proba([str(f) for f in files[:5]]), atol=1e-6)
    assert np.allclose(p.sum(1), 1.0, atol=1e-5)


# ------------------------------------------------------------------ the command
def test_predict_command_writes_a_row_per_input_and_says_why_for_the_unreadable(tiny_run, tmp_path):
    files, _ = split_files(tiny_run)
    folder = tmp_path / "incoming images"
    (folder / "sub").mkdir(parents=True)
    good = []
    for i, f in enumerate(files[:6]):
        dest = folder / ("sub" if i % 2 else "") / f"img {i}.png"
        shutil.copy(f, dest)
        good.append(dest)
    (folder / "notes.txt").write_text("not an image, and not an image extension: ignored in folders")
    corrupt = folder / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    empty = folder / "empty.jpg"
    empty.write_bytes(b"")
    globbed = tmp_path / "globbed"
    globbed.mkdir()
    for i, f in enumerate(files[6:9]):
        shutil.copy(f, globbed / f"g{i}.png")
    out = tmp_path / "predictions.csv"
    proc = run_cli("predict", tiny_run, folder, str(globbed / "*.png"), tmp_path / "missing.png", "--out", out,
                   "--top-k", "3", "--model", "best")
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(out.open()))
    by_path = {Path(r["path"]).name: r for r in rows}
    assert len(rows) == 6 + 2 + 3 + 1  # every image, the two broken ones and the missing file; not notes.txt
    assert "notes.txt" not in by_path
    assert set(rows[0]) == {"path", "prediction", "probability", "top2", "top2_probability", "top3",
                            "top3_probability", "error"}
    assert by_path["corrupt.png"]["error"] and by_path["corrupt.png"]["prediction"] == ""
    assert by_path["empty.jpg"]["error"]
    assert "no such file" in by_path["missing.png"]["error"]
    predictor = automl_vision.load(str(tiny_run), model="best")
    expected = predictor.predict_proba([str(p) for p in good])
    for p, probs in zip(good, expected):
        row = by_path[p.name]
        assert row["error"] == ""
        assert row["prediction"] == predictor.classes[int(probs.argmax())]
        assert float(row["probability"]) == pytest.approx(probs.max(), abs=1e-5)
        assert float(row["probability"]) >= float(row["top2_probability"]) >= float(row["top3_probability"])
    assert all(by_path[f"g{i}.png"]["prediction"] for i in range(3))
    assert "3 of 12 input(s) could not be predicted" in proc.stderr and "corrupt.png" in proc.stderr


def test_predict_command_bad_inputs_exit_2(tiny_run, tmp_path, capsys):
    from automl_vision.cli import main

    cases = [
        (["predict", str(tmp_path / "no run"), "x.png"], "no such run directory"),
        (["predict", str(tiny_run), str(tmp_path / "nothing here" / "*.png")], "no image to predict"),
        (["predict", str(tiny_run), str(tiny_run / "run.json"), "--model", "trial:999"], "trial 999 did not finish"),
        (["predict", str(tiny_run), str(tiny_run / "run.json"), "--model", "biggest"], "expected auto, best, ensemble"),
        (["predict", str(tiny_run), str(tiny_run / "run.json"), "--out", str(tmp_path / "no dir" / "p.csv")],
         "does not exist"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err, (argv, err)
        assert "Traceback" not in err


def test_a_run_with_no_finished_trial_says_so(tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("cache"))
    shutil.rmtree(run / "best")
    (run / "ensemble.json").unlink()
    for status in (run / "trials").glob("*/status.json"):
        rec = json.loads(status.read_text())
        rec["state"] = "FAIL"
        status.write_text(json.dumps(rec))
    from automl_vision.cli import main
    from automl_vision.types import UsageError

    assert main(["predict", str(run), str(run / "run.json")]) == 2
    assert "no trial of this run has finished" in capsys.readouterr().err
    with pytest.raises(UsageError, match="no trial of this run has finished"):
        automl_vision.load(str(run))
    assert (run / "trials").is_dir() and any((run / "trials").iterdir())  # nothing deleted


def test_python_api_evaluate_leaderboard_summary_and_classes(tiny_run, digits_dir, tmp_path):
    """What AutoGluon and scikit-learn users expect of a fitted predictor."""
    from automl_vision.types import UsageError

    predictor = automl_vision.load(str(tiny_run))
    assert list(predictor.classes_) == predictor.classes
    # evaluate: the same numbers as predicting each labelled image and counting
    paths = sorted(Path(digits_dir).glob("*/*.png"))[::7]
    subset = tmp_path / "labelled"
    for p in paths:
        (subset / p.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(p, subset / p.parent.name / p.name)
    scored = predictor.evaluate(subset)
    truth = [p.parent.name for p in paths]
    predicted = predictor.predict([subset / p.parent.name / p.name for p in paths])
    assert scored["n"] == len(paths)
    assert scored["metrics"]["accuracy"] == pytest.approx(np.mean([a == b for a, b in zip(predicted, truth)]))
    assert np.asarray(scored["confusion_matrix"]).sum() == len(paths)
    assert {c["class"] for c in scored["per_class"]} == set(predictor.classes)
    # a class the model never saw is refused, naming it
    (subset / "zebra").mkdir()
    shutil.copy(paths[0], subset / "zebra" / "z.png")
    with pytest.raises(UsageError, match="class\\(es\\) zebra are not among the model's classes"):
        predictor.evaluate(subset)
    board = predictor.leaderboard()
    assert sorted(board["number"]) == sorted(json.loads(p.read_text())["number"]
                                             for p in tiny_run.glob("trials/*/status.json"))
    assert predictor.fit_summary()["best_trial"] == json.loads((tiny_run / "final/report.json").read_text())["best_trial"]
