"""The tracking integrations in ``plugins/`` (automl-vision-mlflow, automl-vision-tensorboard),
installed with pip as a user installs them, tracking a tiny real search.

Same pattern as ``test_plugin_distributions.py``: a fresh virtual environment gets
automl-vision from (a copy of) the working tree and the two distributions with ``pip install``
(``--no-index --no-deps``); it sees the project's environment (torch, mlflow-skinny,
tensorboard, ...) through a ``.pth`` file, with automl-vision and its plugins hidden, so the
plugins can only come from the pip installs and their entry points. Nothing is installed into
the project's own environment. What the plugins wrote is read back with MLflow's own client
(``MlflowClient`` on the SQLite store) and TensorBoard's own ``EventAccumulator``.
"""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import pytest
from venvkit import ROOT, install_fresh
from venvkit import run as _run

DISTS = {
    "automl-vision-mlflow": "automl_vision_mlflow",
    "automl-vision-tensorboard": "automl_vision_tensorboard",
}
# two trials of small CNNs at 16 px, two epochs each
SEARCH = ["--n-trials", "2", "--max-epochs", "2", "--image-size", "16", "--models", "cnn", "--plain",
          "--precision", "fp32", "--channels-last", "off"]

pytest.importorskip("mlflow", reason="the test extra (mlflow-skinny) is not installed")
pytest.importorskip("tensorboard", reason="the test extra (tensorboard) is not installed")


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """A fresh venv with automl-vision and the two tracking distributions pip-installed."""
    return install_fresh(tmp_path_factory.mktemp("tracking-venv"), [ROOT / "plugins" / name for name in DISTS],
                         drop_env=("MLFLOW_",))


def _search(venv, data: Path, out: Path, **env: str) -> subprocess.CompletedProcess:
    return _run([venv["cli"], "search", data, "--out", out, *SEARCH], cwd=venv["base"], env={**venv["env"], **env},
                timeout=300)


def _leaderboard(run: Path) -> dict[int, dict[str, str]]:
    with open(run / "leaderboard.csv", newline="") as fh:
        return {int(r["number"]): r for r in csv.DictReader(fh)}


@pytest.fixture(scope="module")
def tracked(venv, digits_dir, tmp_path_factory):
    """A finished tiny search with both plugins on their defaults (no environment variables)."""
    out = tmp_path_factory.mktemp("tracked") / "tiny-tracked"
    proc = _search(venv, digits_dir, out)
    return out, proc


def test_the_distributions_are_found_through_their_entry_points(venv):
    proc = _run([venv["cli"], "plugins", "--json"], cwd=venv["base"], env=venv["env"])
    plugins = {p["name"]: p for p in json.loads(proc.stdout)["plugins"]}
    for name, dist in (("mlflow", "automl-vision-mlflow"), ("tensorboard", "automl-vision-tensorboard")):
        p = plugins[name]
        assert (p["origin"], p["distribution"], p["version"], p["status"]) == ("entrypoint", dist, "0.1.0", "ok"), p
        assert p["hooks"] == ["on_epoch_end", "on_search_end", "on_search_start", "on_trial_end"], p
        assert p["registered"] == {}

    # the settings; loading the plugins imports neither mlflow nor tensorboard
    probe = ("import sys, automl_vision_mlflow as m, automl_vision_tensorboard as t; "
             "print(m.tracking_uri('/x/run1'), m.experiment_name('/x/run1'), m.artifact_location(m.tracking_uri('/x/run1')), "
             "t.trial_dir('/x/run1', 3), 'mlflow' in sys.modules, 'tensorboard' in sys.modules)")
    assert _run([venv["python"], "-c", probe], cwd=venv["base"], env=venv["env"]).stdout.split() == [
        "sqlite:////x/run1/mlflow.db", "run1", "file:///x/run1/mlartifacts", "/x/run1/tensorboard/trial_00003",
        "False", "False"]
    custom = {"MLFLOW_TRACKING_URI": "sqlite:////db/all.db", "AUTOML_VISION_MLFLOW_EXPERIMENT": "digits",
              "AUTOML_VISION_TENSORBOARD_DIR": "/tb"}
    assert _run([venv["python"], "-c", probe], cwd=venv["base"], env={**venv["env"], **custom}).stdout.split()[:4] == [
        "sqlite:////db/all.db", "digits", "file:///db/mlartifacts", "/tb/run1/trial_00003"]


def test_mlflow_has_one_run_per_trial_and_the_final_model(tracked, tmp_path):
    from mlflow.tracking import MlflowClient

    run, proc = tracked
    assert "automl-vision-mlflow" not in proc.stderr and "raised" not in proc.stderr, proc.stderr
    board = _leaderboard(run)
    report = json.loads((run / "final" / "report.json").read_text())
    client = MlflowClient(tracking_uri=f"sqlite:///{run / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tiny-tracked")  # the run directory's name
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags["automl_vision.role"] == "search"]
    trials = {int(r.data.tags["automl_vision.trial"]): r for r in runs if r.data.tags["automl_vision.role"] == "trial"}
    assert len(parents) == 1 and sorted(trials) == sorted(board) == [0, 1]
    parent = parents[0]

    for number, r in trials.items():
        row = board[number]
        assert r.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert r.data.tags["automl_vision.state"] == row["state"]
        assert r.info.status == {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}[row["state"]]
        # the sampled hyperparameters, as the leaderboard shows them
        sampled = {k[len("param_"):]: v for k, v in row.items() if k.startswith("param_") and v != ""}
        assert sampled and set(sampled) <= set(r.data.params), (sampled, r.data.params)
        assert r.data.params["family"] == "cnn" and r.data.params["model"] == row["model"]
        assert r.data.params["optimizer"] == sampled["optimizer"]
        # one point per epoch, step = epoch
        epochs = int(row["epochs"])
        history = json.loads((run / "trials" / f"{number:05d}" / "history.json").read_text())
        assert epochs == len(history) == 2
        for key in ("val_accuracy", "train_loss", "lr"):
            points = client.get_metric_history(r.info.run_id, key)
            assert [p.step for p in points] == list(range(1, epochs + 1)), key
            assert [p.value for p in points] == pytest.approx([h[key] for h in history]), key
        assert r.data.metrics["value"] == pytest.approx(float(row["value"]))
        assert {a.path for a in client.list_artifacts(r.info.run_id)} == {"config.json", "status.json"}
    assert trials[report["best_trial"]].data.tags.get("automl_vision.best") == "true"

    # the search run: settings, best metrics, the final model and report
    assert parent.info.status == "FINISHED"
    assert parent.data.params["metric"] == report["metric"] and parent.data.params["n_trials"] == "2"
    assert parent.data.metrics["best_val_accuracy"] == pytest.approx(report["best_val"]["accuracy"])
    assert parent.data.tags["automl_vision.best_trial"] == str(report["best_trial"])
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} == {"best", "final", "leaderboard.csv"}
    best = {Path(a.path).name for a in client.list_artifacts(parent.info.run_id, "best")}
    assert best == {p.name for p in (run / "best").iterdir()} and {"model.json", "weights.safetensors"} <= best
    got = client.download_artifacts(parent.info.run_id, "final/report.json", str(tmp_path))
    assert json.loads(Path(got).read_text()) == report
    assert (run / "mlartifacts").is_dir()  # artifacts stay in the run directory


def test_tensorboard_has_an_event_file_per_trial_with_scalars_and_hparams(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    run, proc = tracked
    assert "automl-vision-tensorboard" not in proc.stderr, proc.stderr
    board = _leaderboard(run)
    assert sorted(p.name for p in (run / "tensorboard").iterdir()) == ["trial_00000", "trial_00001"]
    for number, row in board.items():
        acc = EventAccumulator(str(run / "tensorboard" / f"trial_{number:05d}"), size_guidance={"scalars": 0})
        acc.Reload()
        history = json.loads((run / "trials" / f"{number:05d}" / "history.json").read_text())
        scalars = set(acc.Tags()["scalars"])
        assert {"val/accuracy", "val/log_loss", "train/loss", "train/lr", "time/images_per_second",
                "trial/value", "trial/seconds"} <= scalars, scalars
        for tag, key in (("val/accuracy", "val_accuracy"), ("train/loss", "train_loss")):
            events = acc.Scalars(tag)
            assert [e.step for e in events] == [1, 2]
            assert [e.value for e in events] == pytest.approx([h[key] for h in history], rel=1e-5)
        assert acc.Scalars("trial/value")[0].value == pytest.approx(float(row["value"]), rel=1e-5)

        content = acc.PluginTagToContent("hparams")
        start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
        hp = start.session_start_info.hparams
        assert hp["family"].string_value == "cnn" and hp["model"].string_value == row["model"]
        assert hp["state"].string_value == row["state"] and hp["optimizer"].string_value == row["param_optimizer"]
        assert hp["batch_size"].number_value == float(row["param_batch_size"])
        experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
        assert {"trial/value", "val/accuracy"} <= {m.name.tag for m in experiment.metric_infos}


def test_a_tracking_failure_is_reported_once_and_the_search_still_delivers(venv, digits_dir, tmp_path):
    blocker = tmp_path / "a-file"  # a file where the trackers need a folder: nothing can be written below it
    blocker.write_text("not a folder\n")
    out = tmp_path / "run"
    proc = _search(venv, digits_dir, out, MLFLOW_TRACKING_URI=f"sqlite:///{blocker}/mlflow.db",
                   AUTOML_VISION_TENSORBOARD_DIR=str(blocker / "tb"))
    report = json.loads((out / "final" / "report.json").read_text())
    assert isinstance(report["best_trial"], int) and (out / "best" / "model.json").is_file()
    assert len(_leaderboard(out)) == 2

    lines = proc.stderr.splitlines()
    for dist, what, hook in (("automl-vision-mlflow", "MLflow tracking is off", "on_search_start"),
                             ("automl-vision-tensorboard", "TensorBoard event files are off", "on_epoch_end")):
        mine = [line for line in lines if dist in line]
        assert len(mine) == 1, (dist, proc.stderr)  # once, though every later hook call would fail too
        assert what in mine[0] and "the search goes on" in mine[0] and f"{hook} failed" in mine[0], mine[0]
    assert "raised" not in proc.stderr, proc.stderr  # the plugins caught it; the core had nothing to report
    assert blocker.read_text() == "not a folder\n" and not (out / "tensorboard").exists()
