"""Each dashboard page, run by Streamlit's AppTest on a run directory made by a real search.

The pages are driven as a user would: switching pages, picking filters and trials; every
test also checks that no exception reached the page.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from automl_vision.dashboard import APP  # noqa: E402
from automl_vision.dashboard.data import ENV_RUNS, ENV_STORAGE, ENV_STUDY, RunData  # noqa: E402

TIMEOUT = 180  # the machine running the tests may be busy; this is a limit, not a measurement


def open_page(monkeypatch, runs, page: str | None = None, query: dict | None = None) -> AppTest:
    monkeypatch.setenv(ENV_RUNS, os.pathsep.join(str(r) for r in runs))
    monkeypatch.delenv(ENV_STORAGE, raising=False)
    monkeypatch.delenv(ENV_STUDY, raising=False)
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.query_params.update(query or {})
    at.run()
    if page:
        at.switch_page(f"sections/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def texts(at: AppTest) -> str:
    parts = [e.value for kind in ("title", "header", "subheader", "markdown", "caption", "info", "warning", "error",
                                  "success") for e in getattr(at, kind)]
    return "\n".join(str(p) for p in parts)


def trial_dirs(run: Path) -> list[int]:
    return sorted(int(p.name) for p in (run / "trials").iterdir() if (p / "status.json").exists())


@pytest.fixture(scope="module")
def other_run(tiny_run, tmp_path_factory) -> Path:
    """A second run directory to compare with: a copy whose best trial scored differently."""
    dst = tmp_path_factory.mktemp("runs") / "copy"
    shutil.copytree(tiny_run, dst, ignore=shutil.ignore_patterns("cache"))
    return dst


def test_overview_shows_dataset_budget_best_and_states(monkeypatch, tiny_run):
    at = open_page(monkeypatch, [tiny_run])
    report = json.loads((tiny_run / "data_report.json").read_text())
    assert at.title[0].value == f"Run {tiny_run.name}"
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Trials"] == str(len(trial_dirs(tiny_run)))
    # the best trial's own validation score (the final report's best_val may include flip TTA)
    values = [json.loads(p.read_text()).get("value") for p in tiny_run.glob("trials/*/status.json")]
    assert metrics["Best validation accuracy"] == f"{max(v for v in values if v is not None):.4f}"
    counts = at.dataframe[0].value
    assert list(counts.columns) == ["train", "val", "test"]
    assert int(counts.loc["total"].sum()) == report["num_images"]
    assert "Skipped files (0)" in [e.label for e in at.expander]
    assert "Deliverable" in texts(at)


def test_leaderboard_lists_every_trial_filters_and_opens_a_trial(monkeypatch, tiny_run):
    at = open_page(monkeypatch, [tiny_run], "leaderboard")
    table = at.dataframe[0].value
    assert sorted(table["trial"]) == trial_dirs(tiny_run)
    states = {json.loads((tiny_run / "trials" / f"{n:05d}" / "status.json").read_text())["state"] for n in trial_dirs(tiny_run)}

    state = sorted(states)[0]
    at.multiselect(key="lb_state").set_value([state]).run()
    filtered = at.dataframe[0].value
    assert set(filtered["state"]) == {state.lower()}
    at.multiselect(key="lb_state").set_value([]).run()

    # one sort control, the grid's header (tests/test_dashboard_browser.py clicks it): rows come in rank order
    assert "Sort by" not in [s.label for s in at.selectbox]
    ranked = at.dataframe[0].value
    assert list(ranked["rank"]) == list(range(1, len(ranked) + 1))
    done = ranked[ranked["state"] == "complete"]
    assert list(done["accuracy"]) == sorted(done["accuracy"], reverse=True)

    last = trial_dirs(tiny_run)[-1]
    at.selectbox(key="trial_pick").set_value(last).run()
    assert not at.exception
    status = json.loads((tiny_run / "trials" / f"{last:05d}" / "status.json").read_text())
    assert at.header[0].value == f"Trial {last}: {status['model']}"
    assert {m.label: m.value for m in at.metric}["Epochs run"] == str(status["epochs"])
    params = next(df.value for df in at.dataframe if "value" in df.value.columns)
    assert "optimizer" in params.index


def test_search_insight_history_curves_and_graceful_importances(monkeypatch, tiny_run):
    at = open_page(monkeypatch, [tiny_run], "insight")
    charts = {c.proto.id for c in at.get("plotly_chart")}
    assert len(charts) >= 2  # history and learning curves at least
    run = RunData(tiny_run)
    n_complete = int((run.leaderboard["state"] == "COMPLETE").sum())
    if n_complete < 2:
        assert f"at least 2 complete trials; this run has {n_complete}" in texts(at)
    else:
        assert "importances" in json.dumps([c.proto.spec for c in at.get("plotly_chart")]).lower() or len(charts) >= 3
    assert "Pareto front is shown for multi-objective runs" in texts(at)
    # learning curves: pick one trial only, the chart follows
    first = trial_dirs(tiny_run)[0]
    at.multiselect(key="lc_trials").set_value([first]).run()
    assert not at.exception
    curve = next(c for c in at.get("plotly_chart") if f"#{first} (" in c.proto.spec)
    assert curve is not None


def test_ensemble_page_members_weights_and_per_class(monkeypatch, tiny_run):
    at = open_page(monkeypatch, [tiny_run], "ensemble")
    ens = json.loads((tiny_run / "ensemble.json").read_text())
    members = at.dataframe[0].value
    assert list(members["trial"]) == [m["trial"] for m in ens["members"]]
    assert members["weight"].sum() == pytest.approx(1.0)
    comparison = at.dataframe[1].value
    final = json.loads((tiny_run / "final" / "report.json").read_text())
    assert comparison.loc["accuracy", "ensemble · test"] == pytest.approx(final["ensemble"]["test"]["accuracy"])
    assert comparison.loc["accuracy", "best single · validation"] == pytest.approx(final["best_val"]["accuracy"])
    tta = final["tta"]["ensemble"]
    assert any(f"{'kept' if tta['used'] else 'not kept'} for the ensemble (validation accuracy "
               f"{tta['val_without']['accuracy']:.4f} without, {tta['val_with']['accuracy']:.4f} with)" in c.value
               for c in at.caption)
    assert any(f"Rule: {tta['rule']}" in c.value for c in at.caption)  # the rule that decided it
    cal = final["calibration"]["best"]  # on by default
    assert any(f"temperature {cal['temperature']:.3f} for the best single model (test ECE "
               f"{cal['test_ece_before']:.4f} -> {cal['test_ece_after']:.4f})" in c.value for c in at.caption)
    per_class = [df.value for df in at.dataframe[2:]]
    assert len(per_class) == 2  # validation and test
    classes = json.loads((tiny_run / "data_report.json").read_text())["classes"]
    for table in per_class:
        assert list(table.index) == classes
        assert {"best single f1", "ensemble f1", "support"} <= set(table.columns)
    val_support = per_class[0]["support"].sum()
    assert val_support == len(np.load(tiny_run / "final" / "val_labels.npy"))
    # per-class recall weighted by support is the accuracy the report gives, for both models
    for table, who in ((per_class[0], "ensemble"), (per_class[1], "best single")):
        acc = float((table[f"{who} recall"] * table["support"]).sum() / table["support"].sum())
        expected = final["ensemble"]["val"] if who == "ensemble" else final["best_test"]
        assert acc == pytest.approx(expected["accuracy"], abs=1e-9)


def test_ensemble_page_says_what_the_final_fit_delivered(monkeypatch, tmp_path, tiny_run):
    # the report of a small-data search: its final fit is what was delivered (written as search/final/ does)
    run = tmp_path / "small"
    shutil.copytree(tiny_run, run)
    final = json.loads((run / "final" / "report.json").read_text())
    final["final_fit"] = {"of_trial": final["best_trial"], "epochs": 57, "images": 300, "seconds": 12.0}
    (run / "final" / "report.json").write_text(json.dumps(final))
    at = open_page(monkeypatch, [run], "ensemble")
    assert (f"trial #{final['best_trial']}'s network was trained further on all 300 labelled images for 57 "
            "epochs") in texts(at)
    assert "Final fit" not in texts(open_page(monkeypatch, [tiny_run], "ensemble"))


def test_ensemble_page_shows_a_final_fit_of_three_networks_with_a_fresh_one(monkeypatch, tmp_path, tiny_run):
    # a final fit of the pair and a fresh network of the best configuration (written as search/final/ does)
    run = tmp_path / "three"
    shutil.copytree(tiny_run, run)
    final = json.loads((run / "final" / "report.json").read_text())
    best = final["best_trial"]
    other = next(m["trial"] for m in final["ensemble"]["members"] + [{"trial": best + 1}] if m["trial"] != best)
    nets = [{"of_trial": best, "epochs": 410, "images": 300, "dir": "final_fit"},
            {"of_trial": other, "epochs": 180, "images": 300, "dir": "final_fit_2"},
            {"of_trial": best, "epochs": 402, "images": 300, "dir": "final_fit_3", "copy": 1, "warm_start": False}]
    final["final_fit"] = {**nets[0], "networks": nets, "pair_decision": "each can run 100 epochs",
                          "copies_decision": "3 networks of 2m each"}
    final["deliverable"] = "ensemble"
    final["ensemble"].update(method="final-fit average", members=[
        {"trial": f["of_trial"], "weight": 1 / 3, "dir": f["dir"], **({"copy": 1} if f.get("copy") else {})}
        for f in nets])
    (run / "final" / "report.json").write_text(json.dumps(final))
    at = open_page(monkeypatch, [run], "ensemble")
    text = texts(at)
    assert "Final fit (small-data regime), 3 networks" in text
    assert f"a fresh network of trial #{best}'s configuration for 402 epochs" in text
    members = at.dataframe[0].value
    assert len(members) == 3 and "copy" in members.columns


def test_errors_page_confusion_gallery_and_grad_cam(monkeypatch, tiny_run):
    at = open_page(monkeypatch, [tiny_run], "errors")
    probs = np.load(tiny_run / "final" / "test_probs_best.npy")
    labels = np.load(tiny_run / "final" / "test_labels.npy")
    per_class = at.dataframe[0].value
    assert int(per_class["support"].sum()) == len(labels)
    n_wrong = int((probs.argmax(1) != labels).sum())
    captions = [c for img in at.image for c in img.captions]
    gallery = [c for c in captions if " → predicted " in c]
    assert len(gallery) == min(12, n_wrong)
    assert any(c.startswith("Grad-CAM for class") for c in captions), captions
    assert "Dark red marks the pixels" in texts(at) and "Turbo colour scale" in texts(at)
    # the overlay has its colour bar
    assert any(c.startswith("colour scale: least (left, dark blue)") for c in captions), captions
    # every probability says what it is: the gallery's are the delivered model's, the Grad-CAM panel's the network's
    from automl_vision.dashboard.data import probability_kind

    final = json.loads((tiny_run / "final" / "report.json").read_text())
    kind = probability_kind(final, "best", short=True)
    assert kind != "raw" and all(c.endswith(f"%, {kind})") for c in gallery), gallery
    shown = texts(at)
    assert "raw softmax of its network, one pass: no calibration, no TTA" in shown
    assert f"**As delivered** (best model: {probability_kind(final, 'best')}, as in the gallery)" in shown
    # row percentages are percentages
    at.toggle(key="cm_norm").set_value(True).run()
    cm = json.loads(next(c for c in at.get("plotly_chart") if "cm" in c.proto.id).proto.spec)
    assert cm["data"][0]["texttemplate"] == "%{z:.0f}%" and cm["layout"]["coloraxis"]["colorbar"]["ticksuffix"] == "%"
    assert cm["layout"]["coloraxis"]["cmax"] == 100
    at.toggle(key="cm_norm").set_value(False).run()
    # explain another class: the page recomputes without error
    classes = json.loads((tiny_run / "data_report.json").read_text())["classes"]
    at.selectbox(key="cam_target").set_value(classes[-1]).run()
    assert not at.exception
    captions = [c for img in at.image for c in img.captions]
    assert f"Grad-CAM for class {classes[-1]}" in captions


def test_compare_runs_side_by_side(monkeypatch, tiny_run, other_run):
    at = open_page(monkeypatch, [tiny_run, other_run], "compare")
    table = at.dataframe[0].value
    assert list(table.columns) == [tiny_run.name, other_run.name]
    # nothing stray on the page (an expression statement would be written by Streamlit's magic)
    assert not [e.value for e in at.markdown if "None" in e.value]
    assert table.loc["trials", tiny_run.name] == str(len(trial_dirs(tiny_run)))
    one = open_page(monkeypatch, [tiny_run], "compare")
    assert "Comparing needs two or more runs" in texts(one)


# ------------------------------------------------------------------ empty and odd states
PAGES = ["overview", "leaderboard", "insight", "ensemble", "errors", "compare", "timeline"]


@pytest.mark.parametrize("page", PAGES)
def test_missing_directory_and_not_yet_a_run(monkeypatch, tmp_path, page):
    at = open_page(monkeypatch, [tmp_path / "nope"], page)
    if page != "compare":
        assert "does not exist" in texts(at)
    empty = tmp_path / "empty"
    empty.mkdir()
    at = open_page(monkeypatch, [empty], page)
    if page != "compare":
        assert "not a run directory yet" in texts(at)


@pytest.fixture()
def started_run(tiny_run, tmp_path) -> Path:
    """A run as it looks just after the data was prepared: no trial finished, no final report."""
    run = tmp_path / "started"
    run.mkdir()
    for name in ("run.json", "data_report.json", "splits.json"):
        shutil.copy(tiny_run / name, run / name)
    info = json.loads((run / "run.json").read_text())
    info.pop("finished", None)
    (run / "run.json").write_text(json.dumps(info))
    return run


@pytest.mark.parametrize("page,message", [
    ("overview", "No trial has finished yet"),
    ("leaderboard", "No trial yet"),
    ("insight", "No trial yet"),
    ("ensemble", "no final evaluation yet"),
    ("errors", "no final evaluation yet"),
    ("timeline", "No trial has started yet"),
])
def test_no_finished_trial_yet(monkeypatch, started_run, page, message):
    at = open_page(monkeypatch, [started_run], page)
    assert message in texts(at)


@pytest.fixture()
def older_run(tiny_run, tmp_path) -> Path:
    """A run directory as an older version might leave it: no layout version, no journal, no val labels."""
    run = tmp_path / "older"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("cache", "study.journal", "val_labels.npy"))
    info = json.loads((run / "run.json").read_text())
    info.pop("layout_version", None)
    (run / "run.json").write_text(json.dumps(info))
    report = json.loads((run / "final" / "report.json").read_text())
    report.pop("tta", None)  # from before flip TTA was recorded
    report.pop("calibration", None)  # and calibration
    (run / "final" / "report.json").write_text(json.dumps(report))
    return run


@pytest.mark.parametrize("page", [p for p in PAGES if p != "compare"])
def test_older_run_directory_shows_what_it_can(monkeypatch, older_run, page):
    at = open_page(monkeypatch, [older_run], page)
    shown = texts(at)
    assert "written by an older automl-vision" in shown
    assert not at.error, [e.value for e in at.error]
    if page == "insight":
        assert "study journal" in shown
    if page == "ensemble":
        assert "per-class validation metrics need final/val_labels.npy" in shown
        assert "test-time augmentation: not tried for this run" in shown
        assert "Calibration: none for this run" in shown
    if page == "errors":
        # no cache to read images from, and the data folder is elsewhere: a message per image, no crash
        assert at.get("plotly_chart")


def test_damaged_file_is_a_message_not_a_traceback(monkeypatch, tiny_run, tmp_path):
    run = tmp_path / "damaged"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("cache"))
    (run / "final" / "report.json").write_text('{"metric": "accuracy", "best_tr')
    at = open_page(monkeypatch, [run], "ensemble")
    assert at.error and "could not be shown" in at.error[0].value


def test_study_only_from_storage(monkeypatch, tiny_run):
    """--storage URL --study-name NAME: the study alone (here the run's journal file) fills the leaderboard."""
    name = json.loads((tiny_run / "run.json").read_text())["study_name"]
    monkeypatch.setenv(ENV_RUNS, "")
    monkeypatch.setenv(ENV_STORAGE, str(tiny_run / "study.journal"))
    monkeypatch.setenv(ENV_STUDY, name)
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    at.switch_page("sections/leaderboard.py").run()
    assert not at.exception
    assert sorted(at.dataframe[0].value["trial"]) == trial_dirs(tiny_run)


def test_a_running_search_refreshes_and_new_trials_appear(monkeypatch, started_run, tiny_run):
    at = open_page(monkeypatch, [started_run], "leaderboard")
    assert at.toggle(key="auto_refresh").value is True  # the run has no 'finished': a search is writing to it
    assert "No trial yet" in texts(at)
    # a trial finishes: its files appear atomically, as the search writes them
    first = trial_dirs(tiny_run)[0]
    shutil.copytree(tiny_run / "trials" / f"{first:05d}", started_run / "trials" / f"{first:05d}")
    at.run()
    assert not at.exception
    assert list(at.dataframe[0].value["trial"]) == [first]
    done = open_page(monkeypatch, [tiny_run])
    assert done.toggle(key="auto_refresh").value is False


# ------------------------------------------------------------------ the command
def test_dashboard_command_refuses_bad_input_clearly(tmp_path):
    import socket

    from conftest import run_cli

    proc = run_cli("dashboard", tmp_path / "missing")
    assert proc.returncode == 2 and "no such run directory" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("dashboard")
    assert proc.returncode == 2 and "give a run directory" in proc.stderr
    proc = run_cli("dashboard", "--storage", "sqlite:///x.db")
    assert proc.returncode == 2 and "--study-name" in proc.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = run_cli("dashboard", tmp_path, "--port", str(port))
    assert proc.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in proc.stderr and "--port" in proc.stderr


# ------------------------------------------------------------------ a study in a real PostgreSQL database
def test_study_in_postgres_alone_and_with_its_run_directory(monkeypatch, tiny_run, tmp_path, postgres):
    import optuna

    from automl_vision.rundir import read_json

    name = read_json(tiny_run / "run.json")["study_name"]
    url = postgres.create_database("dashboard_study")
    # the run's study, as a distributed search would have kept it: in the database
    journal = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tiny_run / "study.journal")))
    from automl_vision.search.study import driver_url

    optuna.copy_study(from_study_name=name, from_storage=journal, to_storage=driver_url(url), to_study_name=name)
    run = tmp_path / "pg-run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("cache", "study.journal"))

    # --storage URL --study-name NAME, no run directory
    monkeypatch.setenv(ENV_RUNS, "")
    monkeypatch.setenv(ENV_STORAGE, url)
    monkeypatch.setenv(ENV_STUDY, name)
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    at.switch_page("sections/leaderboard.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert sorted(at.dataframe[0].value["trial"]) == trial_dirs(tiny_run)

    # RUN_DIR --storage URL: the run's files and the study's trials together, search insight from the database
    monkeypatch.setenv(ENV_RUNS, str(run))
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    at.switch_page("sections/insight.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert "cannot be read" not in texts(at)
    at.switch_page("sections/leaderboard.py").run()
    params = next(df.value for df in at.dataframe if "value" in df.value.columns)
    assert "optimizer" in params.index


def test_wrong_database_is_a_message_and_is_left_untouched(monkeypatch, tmp_path, postgres):
    import psycopg2

    url = postgres.create_database("not_a_study")
    monkeypatch.setenv(ENV_RUNS, "")
    monkeypatch.setenv(ENV_STORAGE, url)
    monkeypatch.setenv(ENV_STUDY, "digits")
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    assert not at.exception, [e.value for e in at.exception]
    assert "not a run directory yet" in texts(at) and "postgresql://" in texts(at)
    conn = psycopg2.connect(host="127.0.0.1", port=postgres.port, user=postgres.user, dbname="not_a_study")
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'")
        assert cur.fetchone()[0] == 0  # the dashboard only reads: no Optuna tables were created
    conn.close()


def test_the_dashboard_never_imports_the_trainer(tiny_run):
    """Every page, run in a fresh interpreter: the trainer's modules are never loaded."""
    import subprocess
    import sys

    script = f"""
import os, sys
os.environ[{ENV_RUNS!r}] = {str(tiny_run)!r}
from streamlit.testing.v1 import AppTest
at = AppTest.from_file({str(APP)!r}, default_timeout={TIMEOUT}).run()
for page in {PAGES!r}:
    at.switch_page("sections/" + page + ".py").run()
    assert not at.exception, (page, [e.value for e in at.exception])
print(sorted(m for m in sys.modules if m.startswith("automl_vision.training") or m == "automl_vision.search.objective"))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"


@pytest.fixture()
def two_objective_run(tiny_run, tmp_path) -> Path:
    """The tiny run's trials as a two-objective study (validation accuracy up, parameter count down)."""
    import optuna

    from automl_vision.rundir import read_json, write_json

    run = tmp_path / "pareto"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("cache", "study.journal"))
    info = read_json(run / "run.json")
    old = optuna.load_study(study_name=info["study_name"], storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tiny_run / "study.journal"))))
    study = optuna.create_study(study_name=info["study_name"], directions=["maximize", "minimize"],
                                storage=optuna.storages.JournalStorage(
                                    optuna.storages.journal.JournalFileBackend(str(run / "study.journal"))))
    for t in old.get_trials():
        done = t.state == optuna.trial.TrialState.COMPLETE
        study.add_trial(optuna.trial.create_trial(
            state=t.state, params=t.params, distributions=t.distributions, user_attrs=t.user_attrs,
            values=[t.value, float(t.user_attrs.get("params_count", 0))] if done else None))
    info.update(objectives=["accuracy", "params"], directions=["maximize", "minimize"])
    write_json(run / "run.json", info)
    return run


def test_two_objective_run_shows_its_pareto_front(monkeypatch, two_objective_run):
    at = open_page(monkeypatch, [two_objective_run], "insight")
    specs = [c.proto.spec for c in at.get("plotly_chart")]
    assert any("Pareto-front" in s or "Pareto Front" in s or "pareto" in s.lower() for s in specs)
    assert "the Pareto front is shown for multi-objective runs" not in texts(at)
    at.switch_page("sections/leaderboard.py").run()
    assert not at.exception
    assert "params" in at.dataframe[0].value.columns


def test_overview_says_when_the_machine_got_slower(monkeypatch, tmp_path, tiny_run):
    # a trial the throughput watchdog flagged (its status.json as search/objective.py writes it)
    run = tmp_path / "slow"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("cache"))
    number = trial_dirs(run)[0]
    status_file = run / "trials" / f"{number:05d}" / "status.json"
    status = json.loads(status_file.read_text())
    status["slowdown"] = "training runs at 30 img/s over the last 75s, 1/43 of the 1,289 img/s it reached earlier"
    status_file.write_text(json.dumps(status))
    warnings = "\n".join(w.value for w in open_page(monkeypatch, [run]).warning)
    assert "slower than measured" in warnings and f"trial #{number}: training runs at 30 img/s" in warnings
    assert "slower than measured" not in texts(open_page(monkeypatch, [tiny_run]))
