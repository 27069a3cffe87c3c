"""``--json`` on ``search``, ``ensemble``, ``predict`` and ``export`` (docs/cli.md): one JSON
document on stdout, the human text on stderr, and usage errors still one line with exit 2.

One real tiny search (two trials of small CNNs, one epoch, 16 px) is shared by the module;
the commands run as subprocesses, as a script would run them.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from conftest import run_cli

from automl_vision import cli
from automl_vision.commands import REPORT_KEYS, json_dumps

SEARCH = ["--n-trials", "2", "--max-epochs", "1", "--image-size", "16", "--models", "cnn", "--plain"]
RUN_KEYS = {"command", "run_dir", "report", "best_dir", *REPORT_KEYS}


@pytest.fixture(scope="module")
def searched(tmp_path_factory, digits_dir):
    """(the search's process, its run directory, final/report.json as the search left it)."""
    out = tmp_path_factory.mktemp("json") / "run"
    proc = run_cli("search", digits_dir, "--out", out, *SEARCH, "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc, out, json.loads((out / "final" / "report.json").read_text())


def _report_matches(doc: dict, run_dir: Path, report: dict) -> None:
    assert set(doc) == RUN_KEYS
    assert doc["run_dir"] == str(run_dir.resolve())
    assert doc["report"] == str(run_dir.resolve() / "final" / "report.json")
    assert doc["best_dir"] == str(run_dir.resolve() / "best") and Path(doc["best_dir"], "model.json").is_file()
    for key in REPORT_KEYS:
        assert doc[key] == report.get(key), key


def test_search_json_is_the_only_thing_on_stdout(searched):
    proc, run_dir, report = searched
    doc = json.loads(proc.stdout)  # the whole of stdout is one document
    assert doc["command"] == "search"
    _report_matches(doc, run_dir, report)
    assert doc["error"] is None and doc["deliverable"] in ("best", "ensemble")
    assert doc["test_evaluations"] == 1 and doc["test_warning"] is None
    assert set(doc["best_val"]) >= {"accuracy", "log_loss"} and set(doc["best_test"]) >= {"accuracy", "log_loss"}
    assert set(doc["intervals"]) == {"best_val", "best_test", "ensemble_val", "ensemble_test"}
    assert doc["ensemble"]["members"] and "test" in doc["ensemble"]
    assert doc["search_seconds"] > 0 and doc["time_budget"] is None
    # the best trial is one of the run's finished trials
    status = json.loads((run_dir / "trials" / f"{doc['best_trial']:05d}" / "status.json").read_text())
    assert status["model"] == doc["best_model"]
    # the human text (progress lines, leaderboard, summary) went to stderr
    for text in ("searching", "trial 0", "Leaderboard", "Deliverable:", "run directory:"):
        assert text in proc.stderr, text
        assert text not in proc.stdout


def test_ensemble_json_reports_the_rebuilt_run(searched):
    _proc, run_dir, before = searched
    proc = run_cli("ensemble", run_dir, "--plain", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    report = json.loads((run_dir / "final" / "report.json").read_text())
    assert doc["command"] == "ensemble"
    _report_matches(doc, run_dir, report)
    assert doc["test_evaluations"] == before["test_evaluations"] + 1 and doc["test_warning"]
    assert "Deliverable:" in proc.stderr and "Deliverable:" not in proc.stdout
    # without --json, nothing changes: the summary is on stdout
    plain = run_cli("ensemble", run_dir, "--plain")
    assert plain.returncode == 0, plain.stderr
    assert "Deliverable:" in plain.stdout and not plain.stdout.lstrip().startswith("{")


def test_predict_json_summarises_the_csv(searched, digits_dir, tmp_path):
    _proc, run_dir, report = searched
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    out = tmp_path / "preds.csv"
    proc = run_cli("predict", run_dir, digits_dir / "3", bad, tmp_path / "missing.png", "--out", out, "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    rows = list(csv.DictReader(out.open()))
    assert doc["command"] == "predict" and doc["out"] == str(out.resolve())
    assert doc["run_dir"] == str(run_dir.resolve())
    assert doc["images"] == len(rows) == 32
    ok = [r for r in rows if not r["error"]]
    assert doc["predicted"] == len(ok) == 30 and doc["skipped"] == 2
    classes = json.loads((run_dir / "run.json").read_text())["data"]["classes"]
    assert list(doc["per_class"]) == classes
    assert doc["per_class"] == {c: Counter(r["prediction"] for r in ok).get(c, 0) for c in classes}
    assert doc["skipped_files"] == [{"path": r["path"], "error": r["error"]} for r in rows if r["error"]]
    assert {f["path"] for f in doc["skipped_files"]} == {str(bad), str(tmp_path / "missing.png")}
    assert doc["top_k"] == 3 and doc["non_utf8_names"] == 0
    model = doc["model"]
    assert model["kind"] == report["deliverable"]
    if model["kind"] == "best":
        assert [m["trial"] for m in model["members"]] == [report["best_trial"]]
    else:
        assert [m["trial"] for m in model["members"]] == [m["trial"] for m in report["ensemble"]["members"]]
    # trained at 16 px; a network trained on crops also predicts a little larger (eval_sizes)
    assert model["image_sizes"][0] == 16 and model["image_size"] == max(model["image_sizes"])
    assert model["description"] in proc.stderr
    assert "predicted 30 image(s)" in proc.stderr and "could not be predicted" in proc.stderr


def test_export_json_names_the_files_and_the_verification(searched, tmp_path):
    _proc, run_dir, _report = searched
    target = tmp_path / "model.safetensors"
    proc = run_cli("export", run_dir, "--format", "state-dict", "--out", target, "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    sidecar = tmp_path / "model.safetensors.preprocessing.json"
    assert doc["command"] == "export" and doc["format"] == "state-dict"
    assert doc["files"] == [str(target.resolve()), str(sidecar.resolve())] == [doc["path"], doc["preprocessing_path"]]
    assert target.is_file() and doc["bytes"] == target.stat().st_size
    written = json.loads(sidecar.read_text())
    assert doc["verified"] == written["verified"]
    assert doc["verified"]["max_abs_diff"] <= doc["verified"]["tolerance"] and doc["verified"]["agree_top1"]
    assert (doc["model"], doc["classes"], doc["image_size"]) == (written["model"], written["classes"], written["image_size"])
    assert written["architecture"]["image_size"] == 16 and written["image_size"] >= 16  # trained at 16
    assert "exported" in proc.stderr and "verified with" in proc.stderr


# ------------------------------------------------------------------ usage errors
def _one_line_error(code: int, out: str, err: str, *needles: str) -> None:
    assert code == 2, (code, out, err)
    assert out == "", "no JSON (partial or not) on stdout after a usage error"
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err


@pytest.fixture
def main(capsys, monkeypatch):
    """``automl-vision ARGS`` through ``cli.main`` in this process: (exit status, stdout, stderr)."""
    monkeypatch.setenv("AUTOML_VISION_DISABLE_ENTRYPOINTS", "1")

    def call(*args):
        capsys.readouterr()
        code = cli.main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return call


def test_usage_errors_with_json_stay_one_line(main, searched, digits_dir, tmp_path):
    _proc, run_dir, _report = searched
    not_a_run = tmp_path / "empty"
    not_a_run.mkdir()
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    cases = [
        (("predict", run_dir, digits_dir / "3", "--out", "-", "--json"), "--out FILE"),
        (("predict", run_dir, tmp_path / "nothing.png", "--out", tmp_path / "p.csv", "--json"), "no image to predict"),
        (("ensemble", not_a_run, "--json"), "not an automl-vision run directory"),
        (("export", not_a_run, "--format", "state-dict", "--json"), "not an automl-vision run directory"),
        (("search", digits_dir, "--out", a_file, *SEARCH, "--json"), "is a file, not a folder"),
    ]
    for args, needle in cases:
        _one_line_error(*main(*args), f"automl-vision {args[0]}: error:", needle)
    # the same through real file descriptors, as a script sees it
    proc = run_cli("search", digits_dir, "--out", a_file, *SEARCH, "--json")
    _one_line_error(proc.returncode, proc.stdout, proc.stderr, "is a file, not a folder")


# ------------------------------------------------------------------ the helpers
def test_everything_printed_meanwhile_goes_to_stderr():
    """Python prints, writes to descriptor 1 and child processes all land on stderr; stdout comes back after."""
    code = (
        "import os, subprocess, sys\n"
        "from automl_vision.commands import human_text_to_stderr\n"
        "with human_text_to_stderr():\n"
        "    print('python print')\n"
        "    os.write(1, b'fd one\\n')\n"
        "    subprocess.run([sys.executable, '-c', 'print(\"child\")'], check=True)\n"
        "print('after')\n"
        "try:\n"
        "    with human_text_to_stderr():\n"
        "        raise ValueError\n"
        "except ValueError:\n"
        "    print('restored')\n"
        "with human_text_to_stderr(False):\n"
        "    print('not redirected')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["after", "restored", "not redirected"]
    assert proc.stderr.splitlines() == ["python print", "fd one", "child"]


def test_json_documents_are_strict_json():
    import numpy as np

    text = json_dumps({"nan": float("nan"), "inf": float("inf"), "arr": np.array([0.5, np.nan]),
                       "n": np.int64(3), "path": Path("/x")})
    assert json.loads(text) == {"nan": None, "inf": None, "arr": [0.5, None], "n": 3, "path": "/x"}
    assert "NaN" not in text
