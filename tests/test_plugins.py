"""The plugin system: load order, broken plugins, conflicts, events, the plugins command.

Throwaway plugins live in ``tests/plugins/`` and are loaded by file path, as a plugin
author does with ``--plugin path/to/plugin.py``. Installing real distributions with
pip is tested in ``test_plugin_distributions.py``.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from torch import nn

from automl_vision.plugins import BUILTIN_PLUGINS, PluginManager
from automl_vision.registry import ConflictError
from automl_vision.testing import PluginCheckError, check_metric, check_model_family, check_plugin
from automl_vision.types import Metric, ModelFamily, UsageError

from conftest import TINY, cli_env, run_cli

HERE = Path(__file__).resolve().parent
TEST_PLUGINS = HERE / "plugins"


def plugin_file(name: str) -> str:
    return str(TEST_PLUGINS / f"{name}.py")


def load(*names: str, entry_points: bool = False) -> PluginManager:
    return PluginManager().load([plugin_file(n) for n in names], entry_points=entry_points)


# ------------------------------------------------------------------ load order


def test_builtins_load_first_then_entry_points_then_modules(tmp_path, monkeypatch):
    # an installed distribution, as pip leaves it: a package and a dist-info with entry_points.txt
    (tmp_path / "epplugin_pkg.py").write_text(
        "from automl_vision import hookimpl\nfrom automl_vision.types import Metric\n"
        "@hookimpl\ndef register_metrics(register):\n    register(Metric('ep_metric', 'maximize', lambda y, p: 1.0))\n"
    )
    info = tmp_path / "epplugin-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: epplugin\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text("[automl_vision]\nepplugin = epplugin_pkg\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("AUTOML_VISION_PLUGINS", plugin_file("conflict_a"))

    pm = PluginManager().load([plugin_file("unknown_hook")], entry_points=True)

    names = list(pm.plugins)
    builtin = [m.rsplit(".", 1)[-1] for m in BUILTIN_PLUGINS]
    assert names[: len(builtin)] == builtin
    rest = names[len(builtin):]
    assert rest.index("epplugin") < rest.index("conflict_a") < rest.index("unknown_hook")
    ep = pm.plugins["epplugin"]
    assert (ep.origin, ep.distribution, ep.version) == ("entrypoint", "epplugin", "1.2.3")
    assert pm.metrics.plugin_of("ep_metric") == "epplugin"
    # registries keep load order: built-in metrics come before plugin metrics
    metrics = list(pm.metrics)
    assert metrics.index("accuracy") < metrics.index("ep_metric") < metrics.index("agreement")


def test_entry_points_are_skipped_when_disabled_and_plugins_can_be_blocked(monkeypatch):
    monkeypatch.setenv("AUTOML_VISION_BLOCK", "timm_backbones,conflict_a")
    pm = PluginManager().load(["conflict_a"], entry_points=False)
    assert "timm_backbones" not in pm.plugins and "timm" not in pm.model_families
    assert "conflict_a" not in pm.plugins
    assert "cnn" in pm.model_families


def test_builtins_go_through_the_hooks():
    pm = PluginManager().load(entry_points=False)
    assert pm.plugins["custom_cnn"].hooks == ["register_model_families"]
    assert pm.plugins["custom_cnn"].registered == {"model_families": ["cnn"]}
    assert pm.datasets.plugin_of("folder") == "image_folder"
    assert pm.datasets.plugin_of("csv") == "csv_manifest"
    assert pm.model_families.plugin_of("timm") == "timm_backbones"
    assert pm.metrics.plugin_of("accuracy") == "classification_metrics"
    assert not pm.broken()


# ------------------------------------------------------------------ broken plugins


def test_import_failure_is_named_and_the_rest_keeps_working():
    pm = load("broken_import", "conflict_a")
    info = pm.plugins["broken_import"]
    assert info.broken and info.origin == "module"
    assert "broken_import.py" in info.errors[0] and "automl_vision_no_such_dependency" in info.errors[0]
    assert "agreement" in pm.metrics and "cnn" in pm.model_families
    assert [p.name for p in pm.broken()] == ["broken_import"]


def test_missing_module_gets_an_install_hint():
    pm = PluginManager().load(["automl_vision_plugin_that_is_not_installed"], entry_points=False)
    (err,) = pm.plugins["automl_vision_plugin_that_is_not_installed"].errors
    assert "is it installed" in err


def test_plugin_name_clash_and_missing_file_are_reported(tmp_path):
    pm = PluginManager().load([str(tmp_path / "nowhere.py")], entry_points=False)
    (err,) = pm.plugins["nowhere"].errors
    assert "no plugin file" in err and "nowhere.py" in err
    info = pm.add_plugin(sys.modules["automl_vision.builtin.custom_cnn"].__class__("other"), name="custom_cnn")
    assert info.name == "custom_cnn#2" and "plugin name 'custom_cnn' is already used" in info.errors[0]
    assert pm.model_families.plugin_of("cnn") == "custom_cnn" and not pm.plugins["custom_cnn"].broken


def test_hook_that_raises_is_named_with_the_hook_and_keeps_what_it_registered():
    pm = load("hook_raises")
    (err,) = pm.plugins["hook_raises"].errors
    assert err == "hook register_metrics raised RuntimeError: could not reach the licence server"
    assert pm.metrics.plugin_of("raises_first") == "hook_raises"


def test_wrong_types_bad_names_and_returned_values_are_reported():
    pm = load("wrong_type")
    info = pm.plugins["wrong_type"]
    errors = "\n".join(info.errors)
    assert "hook register_datasets: register() expects a automl_vision.types.DatasetSource, got builtins.dict" in errors
    assert "DatasetSource name 'Bad Name' is not allowed" in errors
    assert "hook register_metrics returned a list" in errors and "call register(obj)" in errors
    assert len(info.errors) == 3
    # what was right is registered; what was wrong is not
    assert "wrongtype_ok" in pm.datasets and "dictsource" not in pm.datasets
    assert "returned_metric" not in pm.metrics
    assert info.registered == {"datasets": ["wrongtype_ok"]}


def test_unknown_hook_is_reported_with_a_suggestion():
    pm = load("unknown_hook")
    (err,) = pm.plugins["unknown_hook"].errors
    assert "unknown hook 'on_trail_end'" in err and "Did you mean on_trial_end?" in err
    assert "unknown_hook_metric" in pm.metrics


def test_hook_with_an_argument_the_spec_lacks_is_rejected():
    pm = load("bad_signature")
    (err,) = pm.plugins["bad_signature"].errors
    assert "invalid hook implementation" in err and "extra" in err
    assert not pm.pm.hook.on_trial_end.get_hookimpls()


def test_reserved_metric_name_and_duplicate_registration_are_refused():
    class Plugin:
        from automl_vision import hookimpl

        @hookimpl
        def register_metrics(self, register):
            register(Metric("params", "minimize", lambda y, p: 0.0))
            register(Metric("twice", "maximize", lambda y, p: 0.0))
            register(Metric("twice", "maximize", lambda y, p: 1.0))

    pm = PluginManager()
    info = pm.add_plugin(Plugin(), name="dupes")
    assert any("'params' is reserved" in e for e in info.errors)
    assert any("'twice' is registered twice by the same plugin" in e for e in info.errors)
    assert pm.metrics.get("twice").fn(None, None) == 0.0


def test_event_hook_that_raises_never_stops_the_others(caplog):
    calls = []

    class Bad:
        from automl_vision import hookimpl

        @hookimpl
        def on_trial_end(self, record):
            raise RuntimeError("down")

    class Good:
        from automl_vision import hookimpl

        @hookimpl
        def on_trial_end(self, run_dir, trial, record):
            calls.append((run_dir, trial, record["number"]))

    pm = PluginManager()
    pm.add_plugin(Bad(), name="bad")
    pm.add_plugin(Good(), name="good")
    for n in range(3):
        pm.on_trial_end("run", "T", {"number": n})
    assert calls == [("run", "T", 0), ("run", "T", 1), ("run", "T", 2)]
    assert pm.event_failures() == {"bad:on_trial_end": 3}
    shown = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert shown == ["plugin bad: hook on_trial_end raised RuntimeError: down (the search goes on)"]


def test_event_hooks_run_in_pluggys_order_tryfirst_and_trylast_included():
    from automl_vision import hookimpl

    calls = []

    def plugin(tag, **marks):
        class P:
            @hookimpl(**marks)
            def on_search_end(self, run_dir):
                calls.append(tag)
        return P()

    pm = PluginManager()
    for name, marks in (("late", {"trylast": True}), ("a", {}), ("early", {"tryfirst": True}), ("b", {})):
        pm.add_plugin(plugin(name, **marks), name=name)
    pm.on_search_end("run", None, {})
    # pluggy's documented order: tryfirst first, trylast last, the others last registered first
    assert calls == ["early", "b", "a", "late"]


def test_a_third_party_hook_wrapper_wraps_every_event_call_and_a_failure_inside_is_contained():
    """Events go through pluggy: a new-style wrapper sees the call before and after the
    plain implementations, and one of those raising neither skips the others nor the wrapper."""
    from automl_vision import hookimpl

    calls = []

    class Wrapper:
        @hookimpl(wrapper=True)
        def on_trial_end(self, record):
            calls.append(("before", record["number"]))
            result = yield
            calls.append(("after", record["number"]))
            return result

    class Failing:
        @hookimpl(tryfirst=True)
        def on_trial_end(self, record):
            calls.append(("failing", record["number"]))
            raise ValueError("tracking server gone")

    class Plain:
        @hookimpl
        def on_trial_end(self, record):
            calls.append(("plain", record["number"]))

    pm = PluginManager()
    for obj in (Wrapper(), Failing(), Plain()):
        assert not pm.add_plugin(obj, name=type(obj).__name__.lower()).broken
    pm.on_trial_end("run", None, {"number": 7})
    assert calls == [("before", 7), ("failing", 7), ("plain", 7), ("after", 7)]
    assert pm.event_failures() == {"failing:on_trial_end": 1}


def test_trace_variable_prints_every_event_call(monkeypatch, capsys):
    class Tracker:
        from automl_vision import hookimpl

        @hookimpl
        def on_search_start(self, run_dir):
            pass

        @hookimpl
        def on_search_end(self, summary):
            raise KeyError("best")

    pm = PluginManager()
    pm.add_plugin(Tracker(), name="tracker")
    monkeypatch.setenv("AUTOML_VISION_TRACE_PLUGINS", "1")
    pm.on_search_start("run", {})
    pm.on_search_end("run", None, {})
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("[plugin trace] tracker.on_search_start(run_dir) ok in ")
    assert err[1] == "[plugin trace] tracker.on_search_end raised KeyError: 'best'"


# ------------------------------------------------------------------ conflicts


def test_conflict_names_both_plugins_until_one_is_picked():
    pm = load("conflict_a", "conflict_b")
    assert pm.metrics.conflicts() == {"agreement": ["conflict_a", "conflict_b"]}
    assert "agreement" not in list(pm.metrics)  # not computed while unresolved
    with pytest.raises(ConflictError, match="conflict_a, conflict_b.*--prefer agreement="):
        pm.metrics.get("agreement")
    assert any("agreement" in m for m in pm.unresolved_conflicts())
    pm.apply_preferences({"agreement": "conflict_b"})
    assert pm.metrics.get("agreement").fn(np.array([0]), np.array([[1.0, 0.0]])) == 0.25
    assert "agreement" in list(pm.metrics) and not pm.unresolved_conflicts()


def test_prefer_with_a_plugin_that_does_not_register_the_name_is_a_usage_error():
    pm = load("conflict_a", "conflict_b")
    with pytest.raises(UsageError, match="does not register the metric 'agreement'.*conflict_a, conflict_b"):
        pm.apply_preferences({"agreement": "custom_cnn"})
    with pytest.raises(UsageError, match="no plugin registers anything called 'nothing'"):
        pm.apply_preferences({"nothing": "conflict_a"})


def test_conflicting_dataset_source_found_by_detect_names_both(tmp_path):
    from automl_vision.data.sources import resolve_source
    from automl_vision.types import DatasetSource

    def make(plugin_name):
        class P:
            from automl_vision import hookimpl

            @hookimpl
            def register_datasets(self, register):
                register(DatasetSource("arrays", load=lambda loc: None, detect=lambda loc: loc.endswith(".arr")))

        return P()

    pm = PluginManager()
    pm.add_plugin(make("one"), name="one")
    pm.add_plugin(make("two"), name="two")
    with pytest.raises(ConflictError, match="dataset source 'arrays'.*one, two"):
        resolve_source(str(tmp_path / "x.arr"), pm)
    pm.apply_preferences({"arrays": "two"})
    assert resolve_source("arrays:foo", pm)[1] == "foo"


def test_unknown_dataset_scheme_suggests_close_names():
    from automl_vision.data.sources import resolve_source

    pm = PluginManager().load(entry_points=False)
    with pytest.raises(UsageError, match="unknown dataset source 'csvv'.*Did you mean 'csv'"):
        resolve_source("csvv:data.csv", pm)


# ------------------------------------------------------------------ the test kit


def test_kit_catches_a_family_with_wrong_logits_and_unprefixed_parameters():
    def suggest(trial, ctx):
        return {"bad.width": trial.suggest_int("bad.width", 2, 4)}

    shape = ModelFamily("bad", suggest=suggest, build=lambda p, in_chans, image_size, num_classes: nn.Sequential(
        nn.Flatten(), nn.Linear(in_chans * image_size * image_size, num_classes + 1)))
    with pytest.raises(PluginCheckError, match=r"expected \(2, 3\) logits"):
        check_model_family(shape, trials=1)
    naming = ModelFamily("good", suggest=suggest, build=shape.build)
    with pytest.raises(PluginCheckError, match="parameter 'bad.width' must be named good.<name>"):
        check_model_family(naming, trials=1)


def test_kit_catches_a_metric_with_the_wrong_direction():
    check_metric(Metric("acc", "maximize", lambda y, p: float(np.mean(p.argmax(1) == y))))
    with pytest.raises(PluginCheckError, match="direction is 'minimize' but perfect predictions score 1.0"):
        check_metric(Metric("acc", "minimize", lambda y, p: float(np.mean(p.argmax(1) == y))))


def test_kit_turns_a_dataset_source_that_raises_into_a_check_error(tmp_path):
    """The docs promise PluginCheckError from the kit, also when the plugin's own code raises."""
    from automl_vision.testing import check_dataset_source
    from automl_vision.types import Dataset, DatasetSource, Sample

    def load(location):
        return {"x": 1}["missing"]  # a plugin bug: KeyError

    with pytest.raises(PluginCheckError, match=r"dataset source 'npz': load\('data.npz'\) raised KeyError: 'missing'"):
        check_dataset_source(DatasetSource("npz", load=load), "data.npz")
    with pytest.raises(PluginCheckError, match=r"detect\('data.npz'\) raised ZeroDivisionError"):
        check_dataset_source(DatasetSource("npz", load=load, detect=lambda loc: 1 / 0), "data.npz", detect=True)
    arrays = [Sample(key=str(i), label=lab, array=np.zeros((4, 4), np.uint8)) for i, lab in enumerate(["a", 1])]
    with pytest.raises(PluginCheckError, match="label a is not an index"):
        check_dataset_source(DatasetSource("npz", load=lambda loc: Dataset(["a", "b"], arrays)), "x")


def test_kit_reports_a_broken_plugin():
    with pytest.raises(PluginCheckError, match="plugin hook_raises: broken"):
        check_plugin(plugin_file("hook_raises"))


def test_builtin_families_and_metrics_pass_the_kit():
    from automl_vision.builtin import classification_metrics, custom_cnn

    check_model_family(custom_cnn.FAMILY, trials=2)
    for metric in classification_metrics.METRICS:
        check_metric(metric, num_classes=6)
    pm = check_plugin("automl_vision.builtin.classification_metrics")
    assert pm.plugins["classification_metrics"].registered["metrics"][0] == "accuracy"


# ------------------------------------------------------------------ command line


def test_plugins_command_json_shows_broken_plugins_and_conflicts():
    proc = run_cli("plugins", "--json", "--plugin", plugin_file("broken_import"), "--plugin", plugin_file("wrong_type"),
                   "--plugin", plugin_file("conflict_a"), "--plugin", plugin_file("conflict_b"), timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    by_name = {p["name"]: p for p in out["plugins"]}
    assert by_name["broken_import"]["status"] == "broken"
    assert "automl_vision_no_such_dependency" in by_name["broken_import"]["errors"][0]
    assert by_name["wrong_type"]["status"] == "broken" and by_name["wrong_type"]["registered"] == {"datasets": ["wrongtype_ok"]}
    assert by_name["custom_cnn"] == {**by_name["custom_cnn"], "status": "ok", "origin": "builtin",
                                     "distribution": "automl-vision", "registered": {"model_families": ["cnn"]}}
    assert out["conflicts"]["metrics"] == {"agreement": {"plugins": ["conflict_a", "conflict_b"], "preferred": None}}
    assert "agreement" not in out["registered"]["metrics"]  # unusable until picked
    assert out["registered"]["metrics"]["log_loss"]["direction"] == "minimize"
    assert out["registered"]["datasets"]["wrongtype_ok"]["plugin"] == "wrong_type"
    assert set(out["hooks"]) >= {"register_datasets", "register_model_families", "register_metrics", "on_trial_end"}


def test_plugins_command_text_marks_broken_plugins():
    proc = run_cli("plugins", "--plugin", plugin_file("hook_raises"), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "hook_raises  module  -  BROKEN" in proc.stdout
    assert "error: hook register_metrics raised RuntimeError: could not reach the licence server" in proc.stdout
    assert "metrics: raises_first" in proc.stdout


def test_a_plugin_given_twice_is_a_duplicate_not_broken_and_descriptions_show():
    # a built-in stands for an installed plugin that is also given with --plugin
    proc = run_cli("plugins", "--plugin", "automl_vision.builtin.custom_cnn", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "automl_vision.builtin.custom_cnn  module  -  duplicate" in proc.stdout
    assert "the same module as plugin custom_cnn, already loaded" in proc.stdout
    assert "BROKEN" not in proc.stdout and "0 broken" in proc.stdout
    assert "accuracy: share of correct top-1 predictions" in proc.stdout  # descriptions, not only in --json


def test_search_with_conflicting_objective_exits_2_naming_both(digits_dir, tmp_path):
    proc = run_cli("search", digits_dir, "--out", tmp_path / "run", "--n-trials", "1", "--models", "cnn",
                   "--metric", "agreement", "--plugin", plugin_file("conflict_a"), "--plugin", plugin_file("conflict_b"),
                   timeout=120)
    assert proc.returncode == 2
    assert "metric 'agreement' is registered by more than one plugin: conflict_a, conflict_b" in proc.stderr
    assert "--prefer agreement=" in proc.stderr and "Traceback" not in proc.stderr
    bad = run_cli("search", digits_dir, "--out", tmp_path / "run", "--prefer", "agreement", timeout=60)
    assert bad.returncode == 2 and "expected NAME=PLUGIN" in bad.stderr


def test_search_with_a_flaky_family_a_failing_event_hook_and_a_picked_metric(digits_dir, tmp_path):
    """One real search exercises the rest: a family that fails one trial, events, --prefer."""
    events = tmp_path / "events.jsonl"
    out = tmp_path / "run"
    proc = run_cli(
        "search", digits_dir, "--out", out, "--n-trials", "3", "--max-epochs", "1", "--image-size", "16", "--plain", "--precision", "fp32",
        "--channels-last", "off",
        "--models", "flaky", "--metric", "agreement", "--prefer", "agreement=conflict_b", "--prefer", "flaky=flaky_family",
        "--plugin", plugin_file("flaky_family"), "--plugin", plugin_file("flaky_twin"), "--plugin", plugin_file("conflict_a"),
        "--plugin", plugin_file("conflict_b"), "--plugin", plugin_file("broken_import"),
        env=cli_env(AUTOML_VISION_TEST_EVENTS=str(events)), timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # the broken plugin is named on stderr, and the search went on
    assert "warning: plugin 'broken_import' is broken" in proc.stderr
    # the event hook that raised for trial 2 is named, and did not stop the search
    assert "plugin flaky_family: hook on_trial_end raised RuntimeError: tracking server unreachable" in proc.stderr

    with open(out / "leaderboard.csv", newline="") as fh:
        rows = {int(r["number"]): r for r in csv.DictReader(fh)}
    assert [rows[n]["state"] for n in (0, 1, 2)] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert "this architecture does not fit in trial 1" in rows[1]["reason"]
    assert "model family 'flaky' failed to build" in rows[1]["reason"]
    assert rows[0]["family"] == "flaky" and rows[0]["model"].startswith("flaky w")
    # the picked plugin's metric is the objective: conflict_b's constant 0.25
    assert float(rows[0]["val_agreement"]) == 0.25 and float(rows[2]["value"]) == 0.25

    seen = [json.loads(line) for line in events.read_text().splitlines()]
    assert [e["hook"] for e in seen] == ["on_search_start"] + ["on_trial_end"] * 3 + ["on_search_end"]
    assert seen[0]["models"] == ["flaky"]
    assert [(e["number"], e["state"]) for e in seen[1:4]] == [(0, "COMPLETE"), (1, "FAIL"), (2, "COMPLETE")]
    assert "agreement" in seen[1]["metrics"] and "accuracy" in seen[1]["metrics"]
    assert seen[4]["n_trials"] == 3

    run = json.loads((out / "run.json").read_text())
    assert run["settings"]["prefer"] == {"agreement": "conflict_b", "flaky": "flaky_family"}
    report = json.loads((out / "final" / "report.json").read_text())
    assert report["metric"] == "agreement" and report["best_trial"] in (0, 2)

    # a worker joining the study from elsewhere loads the same plugin files and picks, and sends the events
    worker = run_cli("worker", "--storage", out / "study.journal", "--n-trials", "4", "--plain", "--precision", "fp32",
                     "--channels-last", "off", cwd=tmp_path, env=cli_env(AUTOML_VISION_TEST_EVENTS=str(events)),
                     timeout=300)
    assert worker.returncode == 0, worker.stdout[-2000:] + worker.stderr[-2000:]
    seen = [json.loads(line) for line in events.read_text().splitlines()][5:]
    assert [e["hook"] for e in seen] == ["on_search_start", "on_trial_end"]
    assert (seen[1]["number"], seen[1]["state"]) == (3, "COMPLETE") and "agreement" in seen[1]["metrics"]

    # predict never imports the plugin files run.json names: without --plugin it says which one to give
    image = next(Path(digits_dir).glob("3/*.png"))
    pred = run_cli("predict", out, image, "--out", tmp_path / "pred.csv", timeout=180)
    assert pred.returncode == 2 and "model family 'flaky'" in pred.stderr and "--plugin" in pred.stderr
    # given again, it rebuilds the model with the picked family, from the picks stored in run.json
    pred = run_cli("predict", out, image, "--out", tmp_path / "pred.csv", "--plugin", plugin_file("flaky_family"),
                   "--plugin", plugin_file("flaky_twin"), timeout=180)
    assert pred.returncode == 0, pred.stderr[-2000:]
    with open(tmp_path / "pred.csv", newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["prediction"] in [str(i) for i in range(10)] and row["error"] == ""


@pytest.mark.parametrize("args", [["--help"], ["search", "--help"], ["plugins", "--help"]])
def test_help_loads_no_plugin_and_no_torch(args):
    """`--help` must stay fast: no plugin is loaded and neither torch nor numpy is imported."""
    import subprocess

    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "automl_vision.cli", *args],
                          capture_output=True, text=True, env=cli_env(), timeout=120)
    assert proc.returncode == 0 and "usage: automl-vision" in proc.stdout
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "automl_vision.hookspecs" in imported  # the import log is real
    heavy = sorted(m for m in imported if m.split(".")[0] in ("torch", "timm", "optuna", "numpy", "sklearn")
                   or m.startswith(("automl_vision.plugins", "automl_vision.builtin")))
    assert heavy == []


def test_models_naming_a_family_whose_plugin_is_missing_lists_the_loaded_families():
    from automl_vision.search.space import families_and_models
    from automl_vision.settings import SearchSettings

    pm = PluginManager().load(entry_points=False)
    settings = SearchSettings(data="x", run_dir="r", study_name="s", models=["mixer"])
    with pytest.raises(UsageError, match=r"Model families loaded: cnn, timm \(a plugin's family needs its plugin"):
        families_and_models(settings, pm)
    pm.add_plugin(sys.modules.setdefault("automl_vision_test_mixer_family", _plugin_with_a_mixer_family()), name="mixer")
    assert families_and_models(settings, pm) == (["mixer"], {})


def _plugin_with_a_mixer_family():
    import types

    from automl_vision import hookimpl

    module = types.ModuleType("automl_vision_test_mixer_family")

    @hookimpl
    def register_model_families(register):
        register(ModelFamily("mixer", suggest=lambda t, c: {}, build=lambda p, **kw: nn.Identity()))

    module.register_model_families = register_model_families
    return module


def test_a_metric_the_data_cannot_give_is_refused_before_any_trial(digits_dir, tmp_path):
    out = tmp_path / "run"
    proc = run_cli("search", digits_dir, "--out", out, *TINY, "--metric", "needs_twenty",
                   "--plugin", plugin_file("bad_metrics"), timeout=180)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert ("metric 'needs_twenty' (plugin bad_metrics) needs at least 20 classes and this data has 10"
            in proc.stderr), proc.stderr
    assert "Traceback" not in proc.stderr and not list((out / "trials").glob("*/status.json"))


def test_a_nan_objective_fails_every_trial_and_delivers_nothing(digits_dir, tmp_path):
    out = tmp_path / "run"
    proc = run_cli("search", digits_dir, "--out", out, *TINY, "--metric", "always_nan",
                   "--plugin", plugin_file("bad_metrics"), timeout=300)
    statuses = [json.loads(p.read_text()) for p in (out / "trials").glob("*/status.json")]
    assert len(statuses) == 3 and all(s["state"] == "FAIL" for s in statuses), statuses
    assert all("objective metric 'always_nan' (plugin bad_metrics) returned nan" in s["reason"] for s in statuses)
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (out / "best").exists() and not (out / "ensemble.json").exists()
    assert proc.returncode == 1, "a search that delivers nothing must not exit 0"
    assert "nothing to deliver" in proc.stdout + proc.stderr


def test_later_commands_reread_a_plugin_source_from_any_folder(tmp_path):
    """ensemble --refit lists the data again through the source that read it, not from Dataset.root."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    here.mkdir()
    elsewhere.mkdir()
    np.savez(here / "digits.npz", images=(digits.images[:300] * 16).astype(np.uint8), labels=digits.target[:300])
    out = tmp_path / "run"
    source = plugin_file("npz_source")
    proc = run_cli("search", "digits.npz", "--out", out, *TINY, "--plugin", source, cwd=here, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads((out / "run.json").read_text())["data"]["location"] == f"testnpz:{here / 'digits.npz'}"
    refit = run_cli("ensemble", out, "--refit", "--plugin", source, cwd=elsewhere, timeout=300)
    assert refit.returncode == 0, refit.stdout + refit.stderr
    assert (out / "refit").is_dir()
    # without the plugin: which source is missing and how to give it, not "is a file, not a folder"
    bare = run_cli("ensemble", out, cwd=elsewhere, timeout=300)
    assert bare.returncode == 2 and "testnpz" in bare.stderr and "--plugin" in bare.stderr, bare.stderr
    assert "not a folder" not in bare.stderr


def test_on_epoch_end_gives_a_tracking_plugin_every_learning_curve(digits_dir, tmp_path):
    log = tmp_path / "epochs.jsonl"
    out = tmp_path / "run"
    proc = run_cli("search", digits_dir, "--out", out, *TINY, "--plugin", plugin_file("epoch_log"),
                   env=cli_env(EPOCH_LOG=str(log)), timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    seen = [json.loads(line) for line in log.read_text().splitlines()]
    for status in out.glob("trials/*/status.json"):
        number = json.loads(status.read_text())["number"]
        history = json.loads((status.parent / "history.json").read_text())
        curve = [e for e in seen if e["trial"] == number]
        assert [e["epoch"] for e in curve] == [h["epoch"] for h in history]
        assert [e["val_accuracy"] for e in curve] == [h["val_accuracy"] for h in history]
