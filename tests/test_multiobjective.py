"""Multi-objective search: ``--objectives accuracy,params,latency`` writes a Pareto front."""

from __future__ import annotations

import json

import optuna

from automl_vision.rundir import RunDir
from automl_vision.search.costs import count_macs
from conftest import run_cli


def _dominates(a: list[float], b: list[float], directions: list[str]) -> bool:
    better_or_equal = all((x >= y) if d == "maximize" else (x <= y) for x, y, d in zip(a, b, directions))
    strictly = any((x > y) if d == "maximize" else (x < y) for x, y, d in zip(a, b, directions))
    return better_or_equal and strictly


def test_multi_objective_run_writes_the_pareto_front(tmp_path, digits_dir):
    out = tmp_path / "mo"
    proc = run_cli("search", digits_dir, "--out", out, "--objectives", "accuracy,params,latency", "--n-trials", "4",
                   "--max-epochs", "1", "--image-size", "16", "--models", "cnn", "--plain")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Pareto front" in proc.stdout
    pareto = json.loads((out / "pareto.json").read_text())
    assert pareto["objectives"] == ["accuracy", "params", "latency"]
    assert pareto["directions"] == ["maximize", "minimize", "minimize"]
    assert pareto["units"]["latency"] == "ms"
    assert pareto["front"], "a finished multi-objective search has a non-empty front"

    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(out / "study.journal")))
    study = optuna.load_study(study_name=optuna.get_all_study_summaries(storage)[0].study_name, storage=storage)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) >= 2  # multi-objective studies are not pruned
    front_numbers = {row["number"] for row in pareto["front"]}
    for t in complete:
        dominated = any(_dominates(o.values, t.values, pareto["directions"]) for o in complete if o is not t)
        assert (t.number in front_numbers) == (not dominated), t.number
    for row in pareto["front"]:
        status = json.loads((RunDir(out).trial_dir(row["number"]) / "status.json").read_text())
        assert row["values"]["params"] == status["params_count"]
        assert row["values"]["latency"] > 0
        assert row["values"]["accuracy"] == status["metrics"]["accuracy"]


def test_macs_of_a_known_layer():
    import torch

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1, bias=False))
    # 8 output channels x 16 x 16 positions x (3 x 3 x 3) weights each
    assert count_macs(model, 3, 16) == 8 * 16 * 16 * 27


def test_unknown_objective_is_a_usage_error(tmp_path, digits_dir):
    proc = run_cli("search", digits_dir, "--out", tmp_path / "r", "--objectives", "accuracy,speed", "--n-trials", "1")
    assert proc.returncode == 2
    assert "speed" in proc.stderr and "latency, params, macs" in proc.stderr


def test_nsga2_needs_several_objectives(tmp_path, capsys, digits_dir):
    from automl_vision import cli

    assert cli.main(["search", str(digits_dir), "--out", str(tmp_path / "r"), "--sampler", "nsga2", "--n-trials", "1"]) == 2
    assert "--sampler nsga2 is for multi-objective searches" in capsys.readouterr().err
