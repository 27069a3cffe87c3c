"""The dashboard on a large run: 120 trials of up to 250 epochs on two workers, with pruned,
skipped (no time), failed and never-run trials, a time budget and its final steps.

The run directory is written here file by file, as the search writes it (see
docs/run-directory.md), without training anything: the dashboard only reads files, so
this is the run it would see after an hour-long search. The browser tests
(tests/test_dashboard_browser.py) use the same run to measure the charts.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from automl_vision.dashboard.data import RunData, state_label  # noqa: E402
from test_dashboard_apptest import open_page, texts  # noqa: E402  (the same page helpers)

T0 = 1_700_000_000.0  # when the big search started
BUDGET = 3600.0  # its --time-budget
RESERVE = 120.0  # seconds kept for the final steps
WORKERS = ("gpu-box-4101", "gpu-box-4102")
CLASSES = [f"class {c}" for c in "abcdefghijkl"]  # 12 classes
N_SKIPPED, N_FAILED, N_QUEUED = 12, 3, 5
SKIP_REASON = "not started: about 310s needed for 1 epochs, 40s left"  # as search/costs.py writes it


def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1))


def write_big_run(out: Path, n_trials: int = 120, epochs: int = 200, seed: int = 0) -> Path:
    """A finished search's run directory with ``n_trials`` trials (complete ones run ``epochs``
    to ``epochs + 50`` epochs), the last ``N_SKIPPED`` skipped for lack of time, ``N_FAILED``
    failed, and ``N_QUEUED`` queued configurations the search never started."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    rng = np.random.default_rng(seed)
    out.mkdir(parents=True)
    counts = {"train": {c: 70 for c in CLASSES}, "val": {c: 15 for c in CLASSES}, "test": {c: 15 for c in CLASSES}}
    _write(out / "data_report.json", {
        "root": str(out.parent / "photos"), "classes": CLASSES, "in_chans": 3, "image_size": 64,
        "num_images": 1200, "num_skipped": 0, "split_source": "stratified by automl-vision", "counts": counts,
        "skipped": [], "duplicates": [], "warnings": [],
    })
    finished = T0 + BUDGET - 8
    _write(out / "run.json", {
        "layout_version": 1, "command": ["automl-vision", "search", "photos", "--time-budget", "1h"],
        "versions": {"automl_vision": "0.1.0"},
        "settings": {"data": "photos", "run_dir": str(out), "study_name": "big", "storage": None,
                     "time_budget": BUDGET, "n_trials": None, "max_epochs": None, "image_sizes": [64],
                     "metric": "accuracy", "seed": 0, "device": "auto", "preset": "balanced", "models": [],
                     "pruner": "hyperband", "plugins": [], "prefer": {}, "workers": 2, "regime": "auto",
                     "options": {"tta": False, "calibrate": False}},
        "objectives": ["accuracy"], "directions": ["maximize"], "max_epochs": epochs, "study_name": "big",
        "storage": "journal file study.journal in the run directory",
        "budget": {"regime": "standard", "why": "1200 labelled images", "started": T0, "time_budget": BUDGET,
                   "final_steps": RESERVE, "final_fit": 0.0, "deadline": T0 + BUDGET, "reserve": RESERVE},
        "data": {"root": str(out.parent / "photos"), "classes": CLASSES, "in_chans": 3,
                 "counts": {k: sum(v.values()) for k, v in counts.items()}, "skipped": 0},
        "started": T0, "sessions": [{"started": T0, "time_budget": BUDGET, "n_trials": None}],
        "finished": finished,
    })
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(out / "study.journal")))
    study = optuna.create_study(study_name="big", storage=storage, direction="maximize")
    dists = {
        "image_size": CategoricalDistribution((64,)),  # one value: nothing to learn from it
        "family": CategoricalDistribution(("cnn", "timm")),
        "cnn.width": CategoricalDistribution((16, 32, 64)),
        "timm.arch": CategoricalDistribution(("resnet10t", "mobilenetv3_small_050")),
        "optimizer": CategoricalDistribution(("adamw", "sgd")),
        "lr.adamw": FloatDistribution(1e-4, 1e-2, log=True),
        "lr.sgd": FloatDistribution(1e-3, 1e-1, log=True),
        "weight_decay": FloatDistribution(1e-5, 1e-1, log=True),
        "batch_size": CategoricalDistribution((32, 64, 128)),
        "ema": CategoricalDistribution((False, True)),
        "aug.preset": CategoricalDistribution(("light", "medium", "heavy")),
    }
    lanes = {w: T0 + 30.0 for w in WORKERS}  # the data was prepared in the first 30 s
    stop = T0 + BUDGET - RESERVE
    n_run = n_trials - N_SKIPPED
    for n in range(n_trials):
        family = ("cnn", "timm")[n % 2]
        optimizer = ("adamw", "sgd")[(n // 2) % 2]
        params = {"image_size": 64, "family": family,
                  **({"cnn.width": int(rng.choice([16, 32, 64]))} if family == "cnn" else
                     {"timm.arch": str(rng.choice(["resnet10t", "mobilenetv3_small_050"]))}),
                  "optimizer": optimizer, f"lr.{optimizer}": float(10 ** rng.uniform(-3.0, -2.0)),
                  "weight_decay": float(10 ** rng.uniform(-5, -1)), "batch_size": int(rng.choice([32, 64, 128])),
                  "ema": False, "aug.preset": str(rng.choice(["light", "medium", "heavy"]))}
        worker = min(lanes, key=lanes.get)
        model = f"cnn w{params['cnn.width']}" if family == "cnn" else params["timm.arch"]
        if n >= n_run:
            state, planned, reason = "PRUNED", 0, SKIP_REASON
            start = max(lanes[worker], stop - 40.0 + 3.0 * (n - n_run) / 2)
            seconds = 1.5  # building the model and timing one batch
        elif n in (7, 40, 77)[:N_FAILED]:
            state, planned, reason = "FAIL", int(rng.integers(1, 5)), "RuntimeError: CUDA error: an illegal memory access"
        elif n % 4 == 3:
            state, planned = "PRUNED", int(rng.integers(3, 150))
            reason = f"pruned after epoch {planned} (accuracy 0.4000)"
        else:
            state, planned, reason = "COMPLETE", int(epochs + rng.integers(0, 51)), ""
        if planned:
            epoch_seconds = float(rng.uniform(0.24, 0.29)) * (1.6 if family == "timm" else 1.0) * 200 / epochs
            seconds = planned * epoch_seconds + 2.0
            start = lanes[worker]
        ceiling = float(rng.uniform(0.55, 0.93))
        history = []
        for e in range(1, planned + 1):
            acc = ceiling * (1 - np.exp(-e / 25.0)) + float(rng.normal(0, 0.01))
            history.append({"epoch": e, "train_loss": float(2.5 * np.exp(-e / 40.0) + 0.1), "lr": 1e-3,
                            "train_seconds": epoch_seconds * 0.9, "eval_seconds": epoch_seconds * 0.1,
                            "images_per_second": float(840 / (epoch_seconds * 0.9)),
                            "val_accuracy": acc, "val_log_loss": float(2.5 - 2 * acc)})
        lanes[worker] = start + seconds
        tdir = out / "trials" / f"{n:05d}"
        _write(tdir / "config.json", {"family": family, "model_params": {}, "image_size": 64, "epochs": planned,
                                      "optimizer": optimizer, "aug_preset": params["aug.preset"], "worker": worker})
        if history:
            _write(tdir / "history.json", history)
        value = history[-1]["val_accuracy"] if history and state != "FAIL" else None
        status = {"number": n, "state": state, "worker": worker, "started": start, "model": model, "family": family,
                  "image_size": 64, "aug": params["aug.preset"], "params_count": int(rng.integers(50_000, 5_000_000)),
                  "epochs": len(history) if state != "COMPLETE" else planned, "reason": reason, "seconds": seconds,
                  "finished": start + seconds}
        if value is not None:
            status.update(value=value, values=[value], metrics={"accuracy": value})
        _write(tdir / "status.json", status)
        inter = {min(100, 100 * h["epoch"] // max(1, planned)): h["val_accuracy"] for h in history}
        study.add_trial(optuna.trial.create_trial(
            state=getattr(optuna.trial.TrialState, state), value=value if state == "COMPLETE" else None,
            params=params, distributions={k: dists[k] for k in params}, intermediate_values=inter,
            user_attrs={"model": model, "worker": worker, **({"reason": reason} if reason else {})}))
    for i in range(N_QUEUED):  # portfolio entries still queued when the time ran out
        study.enqueue_trial({"family": "cnn", "cnn.width": 32}, user_attrs={"portfolio": f"cnn-entry-{i}"})
    done = [t for t in study.get_trials() if t.state.name == "COMPLETE"]
    best = max(done, key=lambda t: t.value)
    _write(out / "final" / "report.json", {
        "metric": "accuracy", "direction": "maximize", "has_test": False, "finished": stop + 2.0,
        "best_trial": best.number, "best_model": best.user_attrs["model"], "best_val": {"accuracy": best.value},
        "ensemble": {"method": "greedy", "members": [{"trial": best.number, "weight": 1.0}],
                     "val": {"accuracy": best.value}},
        "deliverable": "best", "why": "the ensemble is the best model alone",
        "tta": {"requested": False}, "calibration": {"requested": False},
        "note": "the data has no test split: the scores shown are validation scores",
        "seconds": 95.0, "search_seconds": BUDGET - 8, "time_budget": BUDGET,
    })
    return out


@pytest.fixture(scope="session")
def big_run(tmp_path_factory) -> Path:
    return write_big_run(tmp_path_factory.mktemp("runs") / "big")


def chart(at: AppTest, key: str) -> dict:
    """The plotly figure (as the browser gets it) of the chart with this key."""
    found = [c for c in at.get("plotly_chart") if c.proto.id.endswith(key) or f"-{key}-" in c.proto.id
             or key in c.proto.id]
    assert found, (key, [c.proto.id for c in at.get("plotly_chart")])
    return json.loads(found[0].proto.spec)


# ------------------------------------------------------------------ the states, from the run files
def test_skipped_and_never_run_trials_have_their_own_state(big_run):
    run = RunData(big_run)
    states = run.leaderboard.set_index("number")["state"]
    skipped = sorted(int(n) for n in states[states == "SKIPPED"].index)
    # every trial whose status.json says "pruned, not started" and 0 epochs, and only those
    expected = sorted(int(p.parent.name) for p in big_run.glob("trials/*/status.json")
                      if json.loads(p.read_text())["reason"].startswith("not started:"))
    assert skipped == expected and len(skipped) == N_SKIPPED
    assert (states == "NOT_RUN").sum() == N_QUEUED and "WAITING" not in set(states)
    assert (states == "PRUNED").sum() > 0  # the pruner's own stay pruned
    by_state = run.trials_by_state()
    assert by_state["SKIPPED"] == N_SKIPPED and by_state["NOT_RUN"] == N_QUEUED
    assert state_label("SKIPPED") == "skipped (no time)" and state_label("NOT_RUN") == "not run"


def test_overview_counts_skipped_and_not_run_and_keeps_the_time_short(monkeypatch, big_run):
    at = open_page(monkeypatch, [big_run])
    captions = "\n".join(c.value for c in at.caption)
    assert f"{N_SKIPPED} skipped (no time)" in captions and f"{N_QUEUED} not run" in captions
    assert " pruned" in captions and "waiting" not in captions
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Time used"] == "59.9 min"  # the budget goes below, so the value is never cut
    assert "of a 60.0 min time budget" in captions
    settings = next(df.value for df in at.dataframe if "value" in df.value.columns)
    assert settings.loc["models", "value"].startswith("default zoo")
    assert settings.loc["max_epochs", "value"].startswith("200 ")
    assert "None" not in settings["value"].tolist()
    bars = chart(at, "states")
    assert {"skipped (no time)", "not run"} <= {t.get("name") for t in bars["data"]}


def test_leaderboard_one_sort_note_beside_state_and_dashes(monkeypatch, big_run):
    at = open_page(monkeypatch, [big_run], "leaderboard")
    table = at.dataframe[0].value
    assert list(table.columns[:4]) == ["rank", "trial", "state", "note"]
    assert list(table["rank"]) == list(range(1, len(table) + 1))
    assert "Sort by" not in [s.label for s in at.selectbox] and not [t for t in at.toggle if t.label == "Ascending"]
    assert at.dataframe[0].proto.placeholder == "—"
    skipped = table[table["state"] == "skipped (no time)"]
    assert len(skipped) == N_SKIPPED and skipped["note"].str.startswith("not started:").all()
    assert (table["state"] == "not run").sum() == N_QUEUED and not (table["state"] == "waiting").any()
    assert "pruned" not in set(skipped["state"])
    # the state filter offers the new states by their names
    at.multiselect(key="lb_state").set_value(["SKIPPED"]).run()
    assert set(at.dataframe[0].value["state"]) == {"skipped (no time)"}
    detail = texts(at)
    assert "Skipped for lack of time" in detail and "Why it stopped" not in detail


def test_a_complete_trial_has_no_why_it_stopped_box(monkeypatch, big_run):
    run = RunData(big_run)
    complete = int(run.leaderboard[run.leaderboard["state"] == "COMPLETE"]["number"].iloc[0])
    pruned = int(run.leaderboard[run.leaderboard["state"] == "PRUNED"]["number"].iloc[0])
    at = open_page(monkeypatch, [big_run], "leaderboard", query={"trial": str(complete)})
    assert at.header[0].value.startswith(f"Trial {complete}:")
    assert not [i for i in at.info if "Why it stopped" in i.value]
    at.selectbox(key="trial_pick").set_value(pruned).run()
    assert any("Why it stopped: pruned after epoch" in i.value for i in at.info)
    assert at.query_params["trial"] == str(pruned)  # the address follows the pick: a link to share


def test_a_link_opens_its_trial(monkeypatch, big_run):
    at = open_page(monkeypatch, [big_run], "leaderboard", query={"trial": "42"})
    assert at.header[0].value.startswith("Trial 42:")
    assert at.selectbox(key="trial_pick").value == 42
    assert "[Link to this trial](leaderboard?trial=42)" in texts(at)
    # a trial that does not exist falls back to the first row, no error
    at = open_page(monkeypatch, [big_run], "leaderboard", query={"trial": "9999"})
    assert at.header[0].value.startswith(f"Trial {int(at.dataframe[0].value['trial'].iloc[0])}:")


def test_learning_curve_at_200_epochs_has_automatic_ticks(monkeypatch, big_run):
    run = RunData(big_run)
    longest = int(run.leaderboard.dropna(subset=["epochs"]).sort_values("epochs").iloc[-1]["number"])
    at = open_page(monkeypatch, [big_run], "leaderboard", query={"trial": str(longest)})
    fig = chart(at, f"curve_fig_{longest}")
    xaxis = fig["layout"]["xaxis"]
    assert xaxis.get("dtick") is None and xaxis.get("nticks", 0) <= 15
    assert len(json.loads((big_run / "trials" / f"{longest:05d}" / "history.json").read_text())) >= 200
    speed = chart(at, f"speed_fig_{longest}")
    assert {t["name"] for t in speed["data"]} == {"seconds per epoch", "training images/s"}


# ------------------------------------------------------------------ search insight at scale
def test_importances_only_from_parameters_that_vary(monkeypatch, big_run):
    at = open_page(monkeypatch, [big_run], "insight")
    fig = chart(at, "importances")
    bars = fig["data"][0]
    names = list(bars["y"])
    assert "image_size" not in names and "ema" not in names  # one value in every trial
    assert {"optimizer", "weight_decay"} <= set(names)
    assert fig["layout"]["height"] >= 24 * len(names)  # a row for every label
    assert "parameters that take a single value" in texts(at)


def test_parallel_coordinates_leave_single_values_out_and_title_the_objective(monkeypatch, big_run):
    at = open_page(monkeypatch, [big_run], "insight")
    chosen = at.multiselect(key="pc_params").value
    assert chosen and "image_size" not in chosen and "ema" not in chosen
    assert "image_size" in at.multiselect(key="pc_params").options  # still there to pick
    fig = chart(at, "parallel")
    labels = fig["layout"]["xaxis"]["ticktext"]
    assert labels[0] == "validation accuracy<br>(objective)"
    assert fig["layout"]["margin"]["l"] >= 60


def test_few_trials_show_slice_plots_and_optunas_warnings(monkeypatch, tmp_path):
    run = write_big_run(tmp_path / "small", n_trials=N_SKIPPED + 5, epochs=5)
    at = open_page(monkeypatch, [run], "insight")
    n_complete = int((RunData(run).leaderboard["state"] == "COMPLETE").sum())
    assert 2 <= n_complete < 5
    assert f"only {n_complete} complete trials" in texts(at)
    fig = chart(at, "importances")
    assert "slice" in json.dumps(fig["layout"].get("title", "")).lower()


# ------------------------------------------------------------------ the timeline
def test_timeline_bars_per_worker_by_state_with_final_steps_and_budget(monkeypatch, big_run):
    at = open_page(monkeypatch, [big_run], "timeline")
    fig = chart(at, "timeline")
    names = {t.get("name") for t in fig["data"]}
    assert {"complete", "pruned", "skipped (no time)", "failed", "final steps"} <= names
    lanes = {y for t in fig["data"] for y in (t.get("y") or [])}
    assert set(WORKERS) <= lanes and "final steps" in lanes
    shown = json.dumps(fig["layout"].get("shapes", [])) + json.dumps(fig["layout"].get("annotations", []))
    assert "time budget" in shown and "trials stop" in shown
    spent = next(df.value for df in at.dataframe if "what" in df.value.columns)
    assert {"complete", "pruned", "skipped (no time)", "final steps", "outside trials"} <= set(spent["what"])
    assert spent.loc[spent["what"] == "final steps", "time"].iloc[0] == "1.6 min"  # 95 s in final/report.json
    seconds = RunData(big_run).time_by_state().set_index("what")["seconds"]
    assert seconds["final steps"] == pytest.approx(95.0) and seconds["skipped (no time)"] == pytest.approx(1.5 * N_SKIPPED)
    # outside trials: the wall clock from start to finish less what some trial or the final steps covered
    assert 0 < seconds["outside trials"] < BUDGET / 10
    assert "2 workers" in texts(at)


# ------------------------------------------------------------------ compare
def test_compare_warns_on_different_datasets(monkeypatch, big_run, tiny_run):
    at = open_page(monkeypatch, [big_run, tiny_run], "compare")
    warnings = "\n".join(w.value for w in at.warning)
    assert "different classes" in warnings and "big: 12 classes" in warnings and "tiny: 10 classes" in warnings
    table = at.dataframe[0].value
    assert not table.isna().any().any() and "None" not in table.to_numpy() and "—" in table.to_numpy()
    assert table.loc["complete/pruned/skipped/failed", "big"] == f"79 / 26 / {N_SKIPPED} / {N_FAILED}"
    same = open_page(monkeypatch, [tiny_run, tiny_run.parent / "tiny"], "compare")  # one run twice: same data
    assert not [w for w in same.warning if "not comparable" in w.value]


def test_compare_refuses_a_folder_that_is_not_a_run_and_keeps_added_runs_in_the_url(monkeypatch, big_run,
                                                                                   tiny_run, digits_dir):
    at = open_page(monkeypatch, [big_run], "compare")
    at.sidebar.text_input[0].input(str(digits_dir))
    at.sidebar.button[0].click().run()
    assert any("looks like a data folder" in e.value for e in at.sidebar.error)
    assert "add" not in at.query_params
    at.sidebar.text_input[0].input(str(tiny_run))
    at.sidebar.button[0].click().run()
    assert not at.exception
    assert at.query_params["add"] == str(tiny_run)
    assert list(at.dataframe[0].value.columns) == ["big", "tiny"]
    # a reload, or the link opened elsewhere: the added run comes back from the address
    again = open_page(monkeypatch, [big_run], "compare", query={"add": str(tiny_run)})
    assert list(again.dataframe[0].value.columns) == ["big", "tiny"]
    refused = open_page(monkeypatch, [big_run], query={"add": str(digits_dir)})
    assert any("not a run directory" in e.value for e in refused.sidebar.error)
    assert "add" not in refused.query_params
