"""A time-budgeted search starts no trial after its deadline and still delivers."""

from __future__ import annotations

import json

from conftest import run_cli


def test_no_trial_starts_after_the_deadline_and_the_report_exists(tmp_path, digits_dir):
    out = tmp_path / "budget"
    proc = run_cli("search", digits_dir, "--out", out, "--time-budget", "40s", "--max-epochs", "3", "--image-size", "16",
                   "--models", "cnn", "--plain")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = json.loads((out / "run.json").read_text())
    session = run["sessions"][-1]
    assert session["time_budget"] == 40.0
    deadline = session["started"] + session["time_budget"]
    statuses = [json.loads(p.read_text()) for p in (out / "trials").glob("*/status.json")]
    assert statuses, "the budget leaves room for at least one trial"
    for status in statuses:
        # the search keeps a reserve for the final steps: a trial may only start before it
        assert status["started"] < deadline, status
    report = json.loads((out / "final" / "report.json").read_text())
    assert report["time_budget"] == 40.0
    assert "best_trial" in report  # a deliverable was chosen within the budget
    assert (out / "best" / "model.json").exists()
