"""Tests of the CSV tracking plugin: the event hooks called as a search calls them."""

import csv
import json

from automl_vision.testing import check_plugin

import automl_vision_csvlog as plugin


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_plugin_conforms_and_implements_only_events():
    pm = check_plugin(plugin, name="csvlog")
    info = pm.plugins["csvlog"]
    assert info.hooks == ["on_search_end", "on_trial_end"] and not info.registered


def test_rows_per_trial_with_metric_columns(tmp_path, monkeypatch):
    monkeypatch.delenv(plugin.ENV_PATH, raising=False)
    run = tmp_path / "run"
    plugin.on_trial_end(str(run), {"number": 0, "state": "COMPLETE", "family": "cnn", "value": 0.5,
                                   "metrics": {"accuracy": 0.5}})
    plugin.on_trial_end(str(run), {"number": 1, "state": "FAIL", "reason": "boom, with a comma"})
    plugin.on_trial_end(str(run), {"number": 2, "state": "COMPLETE", "metrics": {"accuracy": 0.7, "mcc": 0.4}})
    rows = _rows(run / "csvlog" / "trials.csv")
    assert [r["number"] for r in rows] == ["0", "1", "2"]
    assert rows[1]["reason"] == "boom, with a comma" and rows[1]["val_accuracy"] == ""
    assert rows[2]["val_mcc"] == "0.4" and rows[0]["val_accuracy"] == "0.5"


def test_env_variable_collects_runs_in_one_file(tmp_path, monkeypatch):
    target = tmp_path / "all.csv"
    monkeypatch.setenv(plugin.ENV_PATH, str(target))
    plugin.on_trial_end("runs/a", {"number": 0, "state": "COMPLETE"})
    plugin.on_trial_end("runs/b", {"number": 0, "state": "PRUNED"})
    plugin.on_trial_end("runs/b", {"number": 0, "state": "COMPLETE"})  # a trial logged again replaces its row
    plugin.on_search_end("runs/b", {"best_trial": 0, "best_test": {"accuracy": 0.9}})  # as in final/report.json
    rows = _rows(target)
    assert [(r["run_dir"], r["state"]) for r in rows] == [("runs/a", "COMPLETE"), ("runs/b", "COMPLETE")]
    assert json.loads((tmp_path / "all.summary.json").read_text())["best_test"] == {"accuracy": 0.9}
