"""End-to-end: `automl-vision search` as a subprocess on generated image folders."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from automl_vision.rundir import RunDir
from conftest import TINY, run_cli, write_colour_shapes


def test_search_writes_the_run_directory_contract(tiny_run):
    rd = RunDir(tiny_run)
    run = rd.read_run()
    assert run["data"]["classes"] == [str(i) for i in range(10)]
    assert run["versions"]["torch"]
    assert (tiny_run / "study.journal").exists()
    report = rd.read_data_report()
    assert report["in_chans"] == 1  # every digit is greyscale
    assert sum(report["counts"]["test"].values()) > 0
    lb = pd.read_csv(rd.leaderboard)
    assert list(lb["number"]) == [0, 1, 2]
    assert {"state", "model", "value", "epochs", "seconds", "val_accuracy", "val_f1_macro"} <= set(lb.columns)
    complete = lb[lb.state == "COMPLETE"]
    assert len(complete) >= 1
    for n in complete["number"]:
        tdir = rd.trial_dir(int(n))
        for name in ("config.json", "history.json", "metrics.json", "model.json", "weights.safetensors", "val_probs.npy", "status.json"):
            assert (tdir / name).exists(), name
        probs = np.load(tdir / "val_probs.npy")
        assert probs.shape == (sum(report["counts"]["val"].values()), 10)
        history = json.loads((tdir / "history.json").read_text())
        assert {"train_loss", "val_accuracy", "train_seconds"} <= set(history[0])
        metrics = json.loads((tdir / "metrics.json").read_text())
        assert np.asarray(metrics["confusion_matrix"]).shape == (10, 10)
        assert "top5_accuracy" in metrics["val"]  # more than 5 classes
    final = rd.read_final()
    assert final["deliverable"] in ("best", "ensemble")
    assert 0.0 <= final["best_test"]["accuracy"] <= 1.0
    assert (tiny_run / "best" / "model.json").exists()
    assert (tiny_run / "best" / "preprocessing.json").exists()


def test_no_file_left_half_written(tiny_run):
    leftovers = [p for p in tiny_run.rglob("*.tmp")]
    assert leftovers == []


def test_resume_keeps_finished_trials_and_counts_them(tmp_path, digits_dir):
    out = tmp_path / "run"
    args = ["search", digits_dir, "--out", out, "--max-epochs", "1", "--image-size", "16", "--models", "cnn", "--plain"]
    first = run_cli(*args, "--n-trials", "2")
    assert first.returncode == 0, first.stderr
    before = pd.read_csv(out / "leaderboard.csv")
    second = run_cli(*args, "--n-trials", "3")
    assert second.returncode == 0, second.stderr
    after = pd.read_csv(out / "leaderboard.csv")
    assert list(after["number"]) == [0, 1, 2]  # one more trial, the first two kept
    kept = after[after.number < 2][["number", "state", "value"]].reset_index(drop=True)
    pd.testing.assert_frame_equal(kept, before[["number", "state", "value"]].reset_index(drop=True))


def test_colour_jpegs_with_spaces_in_names(tmp_path):
    data = write_colour_shapes(tmp_path / "shapes é", per_class=12)
    out = tmp_path / "run"
    proc = run_cli("search", data, "--out", out, *TINY)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "data_report.json").read_text())
    assert report["in_chans"] == 3
    assert report["classes"] == ["blue disc", "red square"]
    assert report["num_skipped"] == 0
    assert "Leaderboard" in proc.stdout
