"""A time-budgeted search starts no trial after its deadline and still delivers."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import cli_env, run_cli


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


def test_the_budget_counts_from_the_command_start_not_after_its_imports(tmp_path, digits_dir):
    """Importing torch took 9-16 s on a cold 2-core machine and a 10-minute search took up to 10m03s:
    the clock must start when the command does."""
    out = tmp_path / "slow-start"
    child = (
        "import json, sys, time\n"
        "t0 = time.time()\n"
        "from automl_vision import cli\n"
        "time.sleep(3)  # a slow start: the command's own imports before the search begins\n"
        "print(json.dumps({'t0': t0}), flush=True)\n"
        f"sys.argv = ['automl-vision', 'search', {str(digits_dir)!r}, '--out', {str(out)!r}, '--time-budget', '60s',"
        " '--n-trials', '1', '--max-epochs', '1', '--image-size', '16', '--models', 'cnn', '--regime', 'standard',"
        " '--plain']\n"
        "sys.exit(cli.main())\n"
    )
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=300, env=cli_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    t0 = json.loads(proc.stdout.splitlines()[0])["t0"]
    run = json.loads((out / "run.json").read_text())
    budget = run["budget"]
    assert t0 <= budget["started"] < t0 + 3.0, (t0, budget)  # before the slow start, not after it
    assert run["sessions"][-1]["started"] == budget["started"]
    assert budget["deadline"] == budget["started"] + 60.0
    assert budget["spent"] >= 3.0  # the slow start is spent budget, and the log says so
    assert "spent starting" in proc.stdout + proc.stderr


def test_a_slow_first_epoch_does_not_cut_a_schedule_for_good():
    """The final fit of a 10-minute search was cut from 408 to 149 epochs by its first epoch."""
    from automl_vision.search.budget import Pace

    pace = Pace()
    assert pace.epochs_that_fit(1, 2.5, left=370.0, planned=408) == 408  # set-up epoch: no cut yet
    assert pace.epochs_that_fit(2, 0.9, left=369.0, planned=408) == 408  # 2 + 369 / 0.9 > 408
    for n in range(3, 7):
        assert pace.epochs_that_fit(n, 0.9, left=369.0 - n, planned=408) == 408
    assert pace.epochs_that_fit(7, 3.0, left=366.0, planned=408) == 408  # one slow epoch: the median holds
    # epochs that stay slow do cut it, to what fits
    slow = Pace()
    got = [slow.epochs_that_fit(n, 2.0, left=300.0 - 2.0 * n, planned=408) for n in range(1, 5)]
    assert got[0] == 408 and got[-1] == 4 + int((300.0 - 8.0) // 2.0)
    # the deadline itself is near: even the first epoch cuts
    assert Pace().epochs_that_fit(1, 3.0, left=5.0, planned=50) == 2


def test_a_final_fits_pace_follows_the_machine_back_up_after_a_slow_spell():
    """On flowers (10 minutes) a slow spell after the first tenth cut a final fit from 142 to 132
    epochs for good and 58 of its 378 s went unused; re-planned after every epoch, it grows back."""
    from automl_vision.search.budget import Pace

    pace, left, got = Pace(follow=True), 300.0, []
    for n, secs in enumerate([3.0] + [2.0] * 10 + [4.0] * 5 + [2.0] * 10, start=1):
        left -= secs
        got.append(pace.epochs_that_fit(n, secs, left=left, planned=1000))
    slow, fast = got[15], got[-1]
    assert slow < got[10] and fast > slow, got  # cut during the slow spell, grown back after it
    assert fast == 26 + int(left // 2.0)  # the recent epochs' pace: what is left fills up
