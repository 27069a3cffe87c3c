"""The search space: conditional parameters, space files, ``space show``, seeds, the
warm-start portfolio and ``--models`` patterns."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pandas as pd
import pytest

from automl_vision import cli
from automl_vision.settings import settings_from_options
from automl_vision.plugins import get_plugin_manager
from automl_vision.search import space_file
from automl_vision.search.portfolio import fit_entry, load_portfolio
from automl_vision.search.space import LR_RANGES, batch_choices, explore, families_and_models, sample
from automl_vision.types import UsageError
from conftest import run_cli

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _sampled(n: int, **options) -> list[dict]:
    """Parameters of ``n`` trials sampled (not trained) from the real space."""
    pm = get_plugin_manager()
    settings = settings_from_options("data", image_size=[32, 64], n_trials=n, **options)
    space_file.apply(settings, pm)
    families, named = families_and_models(settings, pm)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    out = []
    for _ in range(n):
        trial = study.ask()
        cfg = sample(trial, settings, pm, families, named, 5, 3, 500, "cpu", 3)
        out.append({"params": dict(trial.params), "cfg": cfg})
        study.tell(trial, 0.5)
    return out


def test_conditional_parameters_exist_only_where_they_apply():
    trials = _sampled(150)
    families = {t["params"]["family"] for t in trials}
    assert families == {"cnn", "timm"}
    for t in trials:
        p = t["params"]
        has_cnn = any(k.startswith("cnn.") for k in p)
        assert has_cnn == (p["family"] == "cnn"), p
        assert ("timm.arch" in p) == (p["family"] == "timm"), p
        assert ("warmup" in p) == (p["schedule"] == "cosine"), p
        assert t["cfg"].warmup == (p["warmup"] if "warmup" in p else 0.0)
        assert ("aug.auto_magnitude" in p) == (p.get("aug.auto") == "rand"), p
        assert ("cnn.groups" in p) == (p.get("cnn.norm") == "group"), p
        lrs = [k for k in p if k.startswith("lr.")]
        assert lrs == [f"lr.{p['optimizer']}"], p
        lo, hi = LR_RANGES[p["optimizer"]]
        # the learning rate is the base rate (batch 64) scaled with the batch size
        assert t["cfg"].lr == pytest.approx(p[lrs[0]] * p["batch_size"] / 64)
        assert lo <= p[lrs[0]] <= hi
        custom_only = [k for k in p if k.startswith("aug.") and k != "aug.preset"]
        assert not custom_only or p["aug.preset"] == "custom", p
    # every branch was reached
    assert any(t["params"].get("aug.auto") == "rand" for t in trials)
    assert any(t["params"].get("cnn.norm") == "group" for t in trials)


def test_explore_reports_conditions():
    pm = get_plugin_manager()
    found = explore(settings_from_options("data", image_size=[64], n_trials=1), pm)
    assert found["warmup"].condition == {"schedule": ["cosine"]}
    assert found["aug.auto_magnitude"].condition == {"aug.auto": ["rand"]}
    assert found["cnn.width"].condition == {"family": ["cnn"]}
    assert found["lr.sgd"].condition == {"optimizer": ["sgd"]}
    assert found["cnn.groups"].condition == {"cnn.norm": ["group"]}
    assert found["optimizer"].condition == {}


SPACE_YAML = """\
# restrict some parameters, extend others
optimizer: [sgd, lamb]
lr:
  sgd: {low: 0.02, high: 0.05}
weight_decay: 0.001
aug:
  preset: [custom]
  auto: rand
cnn:
  width: [16, 96]
schedule: [cosine]
"""


def test_space_file_restricts_and_extends(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(SPACE_YAML)
    trials = _sampled(40, models="cnn", space=str(path))
    seen_opt = {t["params"]["optimizer"] for t in trials}
    assert seen_opt == {"sgd", "lamb"}  # lamb is not in the default space: extended
    for t in trials:
        p = t["params"]
        assert p["weight_decay"] == 0.001
        assert p["cnn.width"] in (16, 96)
        assert p["aug.preset"] == "custom" and p["aug.auto"] == "rand" and "aug.auto_magnitude" in p
        if p["optimizer"] == "sgd":
            assert 0.02 <= p["lr.sgd"] <= 0.05
        else:
            assert LR_RANGES["lamb"][0] <= p["lr.lamb"] <= LR_RANGES["lamb"][1]
        assert p["schedule"] == "cosine" and "warmup" in p
    assert {t["params"]["cnn.width"] for t in trials} == {16, 96}


def test_space_show_prints_the_effective_space(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(SPACE_YAML)
    proc = run_cli("space", "show", "--models", "cnn", "--space", path, "--json", "--portfolio")
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)
    params = shown["parameters"]
    assert params["optimizer"]["choices"] == ["sgd", "lamb"]
    assert params["lr.sgd"] == {"kind": "float", "low": 0.02, "high": 0.05, "log": True, "condition": {"optimizer": ["sgd"]}}
    assert "timm.arch" not in params  # --models cnn
    assert "condition" not in params["warmup"]  # the file fixes the schedule to cosine
    # the portfolio's parameters that the file rules out are left to the sampler
    for entry in shown["portfolio"]:
        assert entry["params"].get("optimizer") in (None, "sgd", "lamb")
    table = run_cli("space", "show", "--models", "cnn")
    assert table.returncode == 0, table.stderr
    line = next(ln for ln in table.stdout.splitlines() if " warmup " in ln)
    assert "schedule=cosine" in line


@pytest.mark.parametrize(
    "text, expected",
    [
        ("optimzer: [adamw]\n", ["optimzer: unknown parameter", "Did you mean optimizer"]),
        ("optimizer: [adam, sgd]\n", ["optimizer[0]: adam is not a possible value", "adamw"]),
        ("weight_decay: {low: 1.0e-4, hgih: 0.1}\n", ["weight_decay.hgih: unknown key", "Did you mean high"]),
        ("lr:\n  adamw: {low: 0, high: 0.01}\n", ["lr.adamw.low: 0.0 is outside the sensible range"]),
        ("weight_decay: {low: 0, high: 0.01}\n", ["weight_decay: a log range needs low > 0"]),
        ("batch_size: {low: 16, high: 64}\n", ["batch_size: a choice parameter takes a list"]),
        ("cnn:\n  stages: {low: 2, high: 9}\n", ["cnn.stages.high: 9 is outside"]),
        ("lr: {low: 0.001, high: 0.01}\n", ["lr: is a group, not a parameter", "lr.adamw"]),
        ("timm:\n  arch: [resnet19]\n", ["timm.arch: unknown timm model 'resnet19'", "resnet18"]),
        ("ema: maybe\n", ["ema: 'maybe' is not true or false"]),
        ("optimizer: [adamw\n", ["not valid YAML at line"]),
    ],
)
def test_space_file_errors_name_the_key(tmp_path, capsys, text, expected):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    assert cli.main(["space", "show", "--space", str(path)]) == 2  # in-process: the CLI's own error path
    err = capsys.readouterr().err
    assert str(path) in err
    for piece in expected:
        assert piece in err, err


def test_search_rejects_a_bad_space_file_before_any_work(tmp_path, digits_dir):
    path = tmp_path / "space.yaml"
    path.write_text("aug:\n  preset: [light, extreme]\n")
    out = tmp_path / "run"
    proc = run_cli("search", digits_dir, "--out", out, "--space", path, "--n-trials", "1", "--plain")
    assert proc.returncode == 2
    assert "aug.preset[1]: extreme is not a possible value" in proc.stderr
    assert not (out / "trials").exists()


def _trial_params(run_dir) -> list[dict]:
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(run_dir / "study.journal")))
    (summary,) = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    return study.trials


def test_same_seed_same_trial_sequence_and_portfolio_first(tmp_path, digits_dir):
    args = ["search", digits_dir, "--n-trials", "6", "--max-epochs", "1", "--image-size", "16", "--models", "cnn",
            "--seed", "3", "--plain"]
    first = run_cli(*args, "--out", tmp_path / "a")
    assert first.returncode == 0, first.stdout + first.stderr
    second = run_cli(*args, "--out", tmp_path / "b")
    assert second.returncode == 0, second.stdout + second.stderr
    a, b = _trial_params(tmp_path / "a"), _trial_params(tmp_path / "b")
    assert len(a) == len(b) == 6
    # the portfolio and TPE's seeded start-up trials (5) do not depend on training results;
    # later TPE trials do, and multi-threaded CPU training is not bit-reproducible (a trial's
    # accuracy differed by one validation image between two identical runs), so they may differ
    assert [t.params for t in a[:5]] == [t.params for t in b[:5]]

    # the portfolio's entries that fit the space ran first, in order, then the sampler
    pm = get_plugin_manager()
    settings = settings_from_options("data", image_size=[16], models="cnn", n_trials=1)
    families, named = families_and_models(settings, pm)
    num_train = json.loads((tmp_path / "a" / "run.json").read_text())["data"]["counts"]["train"]
    space = explore(settings, pm, families, named, num_classes=10, in_chans=1, num_train=num_train)
    fitting = [(e["name"], fit_entry(e["params"], space)) for e in load_portfolio()]
    fitting = [(n, p) for n, p in fitting if p is not None]
    assert len(fitting) >= 2
    for trial, (name, params) in zip(a, fitting):
        assert trial.user_attrs.get("portfolio") == name
        assert {k: trial.params[k] for k in params} == params
    rest = a[len(fitting):]
    assert rest and all("portfolio" not in t.user_attrs for t in rest)
    board = pd.read_csv(tmp_path / "a" / "leaderboard.csv").sort_values("number")
    assert list(board["portfolio"][: len(fitting)]) == [n for n, _ in fitting]  # visible in the leaderboard
    assert "warm start:" in first.stdout


def test_no_portfolio_option(tmp_path, digits_dir):
    proc = run_cli("search", digits_dir, "--out", tmp_path / "r", "--n-trials", "1", "--max-epochs", "1",
                   "--image-size", "16", "--models", "cnn", "--no-portfolio", "--plain")
    assert proc.returncode == 0, proc.stderr
    (trial,) = _trial_params(tmp_path / "r")
    assert "portfolio" not in trial.user_attrs


def test_models_wildcards_expand_against_timm():
    proc = run_cli("space", "show", "--models", "resnet1*t,efficientnet_b0", "--json")
    assert proc.returncode == 0, proc.stderr
    arch = json.loads(proc.stdout)["parameters"]["timm.arch"]["choices"]
    assert {"resnet10t", "resnet14t", "efficientnet_b0"} <= set(arch)
    assert all(a.startswith("resnet1") and a.endswith("t") or a == "efficientnet_b0" for a in arch)


def test_unknown_model_is_exit_2_with_close_names(tmp_path, digits_dir):
    proc = run_cli("search", digits_dir, "--out", tmp_path / "r", "--models", "resnet19,cnn", "--n-trials", "1")
    assert proc.returncode == 2
    assert "unknown timm model 'resnet19'" in proc.stderr
    assert "Did you mean" in proc.stderr and "resnet18" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run_cli("space", "show", "--models", "nosuchnet*")
    assert proc.returncode == 2
    assert "no timm model matches 'nosuchnet*'" in proc.stderr


def test_resumed_study_with_other_choices_is_a_clear_error(tmp_path, digits_dir):
    out = tmp_path / "r"
    base = ["search", digits_dir, "--out", out, "--max-epochs", "1", "--image-size", "16", "--models", "cnn",
            "--no-portfolio", "--plain"]
    assert run_cli(*base, "--n-trials", "1").returncode == 0
    path = tmp_path / "space.yaml"
    path.write_text("optimizer: [adamw]\n")
    proc = run_cli(*base, "--n-trials", "2", "--space", path)
    assert proc.returncode == 2
    assert "already searched 'optimizer'" in proc.stderr


def test_a_study_resumed_by_a_newer_version_keeps_its_batch_sizes(tmp_path, digits_dir):
    """A study an older version started with other batch-size choices for the same split (before
    batch_choices took a quarter of the split, 210 images offered [32, 64]) resumes with those."""
    out = tmp_path / "r"
    base = ["search", digits_dir, "--out", out, "--max-epochs", "1", "--image-size", "16", "--models", "cnn",
            "--no-portfolio", "--plain"]
    assert run_cli(*base, "--n-trials", "1").returncode == 0
    run = json.loads((out / "run.json").read_text())
    assert run["settings"]["batch_sizes"] == batch_choices(210) == [32]
    del run["settings"]["batch_sizes"]  # run.json as the older version wrote it
    (out / "run.json").write_text(json.dumps(run))
    journal = out / "study.journal"
    stored = '{\\"choices\\": [32]}'  # the distribution, as JSON inside the journal's JSON
    assert stored in journal.read_text()
    journal.write_text(journal.read_text().replace(stored, '{\\"choices\\": [32, 64]}'))
    proc = run_cli(*base, "--n-trials", "2")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "run.json").read_text())["settings"]["batch_sizes"] == [32, 64]
    study = optuna.load_study(study_name=run["study_name"],
                              storage=optuna.storages.JournalStorage(
                                  optuna.storages.journal.JournalFileBackend(str(journal))))
    assert len(study.trials) == 2
    assert all(list(t.distributions["batch_size"].choices) == [32, 64] for t in study.trials)


def test_python_api_settings_accept_a_space_mapping():
    pm = get_plugin_manager()
    settings = settings_from_options("data", space={"optimizer": "sgd", "image_size": [48]}, n_trials=1)
    space_file.apply(settings, pm)
    assert settings.options.space["optimizer"] == ["sgd"]
    assert settings.image_sizes == [48]
    with pytest.raises(UsageError, match="space: nonsense: unknown parameter"):
        space_file.apply(settings_from_options("data", space={"nonsense": 1}, n_trials=1), pm)


def test_a_family_parameter_that_exists_for_some_int_values_is_shown_and_settable(tmp_path):
    """A plugin family's define-by-run parameter behind an int (not a categorical) is part of the space."""
    plugin = str(Path(__file__).parent / "plugins" / "tiny_vit.py")
    proc = run_cli("space", "show", "--json", "--models", "tinyvit", "--plugin", plugin, timeout=120)
    assert proc.returncode == 0, proc.stderr
    params = json.loads(proc.stdout)["parameters"]
    assert params["tinyvit.drop"]["condition"] == {"tinyvit.depth": [2, 3, 4]}
    assert params["tinyvit.drop"]["low"] == 0.0 and params["tinyvit.drop"]["high"] == 0.3
    text = run_cli("space", "show", "--models", "tinyvit", "--plugin", plugin, timeout=120).stdout
    assert "tinyvit.depth=2|3|4" in text
    space = tmp_path / "space.yaml"
    space.write_text("tinyvit:\n  drop: 0.25\n  depth: [3]\n")  # was refused as "unknown parameter"
    shown = run_cli("space", "show", "--json", "--models", "tinyvit", "--plugin", plugin, "--space", space,
                    timeout=120)
    assert shown.returncode == 0, shown.stderr
    params = json.loads(shown.stdout)["parameters"]
    assert params["tinyvit.drop"]["low"] == params["tinyvit.drop"]["high"] == 0.25
    assert params["tinyvit.depth"]["choices"] == [3]


def _recipe_plugin_manager():
    """The built-ins plus a family that ships its own training recipe (AdamW, light augmentation)."""
    import types

    from torch import nn

    from automl_vision import hookimpl
    from automl_vision.plugins import PluginManager
    from automl_vision.types import ModelFamily

    recipe = {"optimizer": ["adamw"], "lr.adamw": {"low": 1e-4, "high": 1e-3}, "aug.preset": ["none", "light"],
              "label_smoothing": 0.1}
    module = types.ModuleType("automl_vision_test_recipe_family")

    @hookimpl
    def register_model_families(register):
        register(ModelFamily("vit", suggest=lambda t, c: {"vit.depth": t.suggest_int("vit.depth", 1, 2)},
                             build=lambda p, in_chans, image_size, num_classes: nn.Sequential(
                                 nn.Flatten(), nn.Linear(in_chans * image_size * image_size, num_classes)),
                             recipe=recipe))

    module.register_model_families = register_model_families
    pm = PluginManager().load(entry_points=False)
    pm.add_plugin(module, name="recipe")
    return pm


def _sample_with(pm, n: int, **options) -> list[dict]:
    settings = settings_from_options("data", image_size=[16], n_trials=n, models="cnn,vit", **options)
    space_file.apply(settings, pm)
    families, named = families_and_models(settings, pm)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    out = []
    for _ in range(n):
        trial = study.ask()  # one study for both families: Optuna must accept every distribution
        cfg = sample(trial, settings, pm, families, named, 5, 3, 500, "cpu", 3)
        out.append({"params": dict(trial.params), "cfg": cfg})
        study.tell(trial, 0.5)
    return out


def test_a_family_recipe_shapes_its_trials_and_the_user_space_file_wins(tmp_path):
    """issue #21: a transformer family is trained with AdamW and light augmentation, not the CNN defaults."""
    pm = _recipe_plugin_manager()
    trials = _sample_with(pm, 60)
    vit = [t for t in trials if t["cfg"].family == "vit"]
    cnn = [t for t in trials if t["cfg"].family == "cnn"]
    assert vit and cnn
    for t in vit:
        p, cfg = t["params"], t["cfg"]
        assert cfg.optimizer == "adamw" and p["vit.optimizer"] == "adamw" and "optimizer" not in p
        assert 1e-4 <= p["lr.adamw"] <= 1e-3
        assert cfg.aug_preset in ("none", "light") and cfg.label_smoothing == 0.1
    assert {t["cfg"].optimizer for t in cnn} > {"adamw"}  # the other family keeps the whole space
    # space show lists the recipe's parameters under the family, with their condition
    found = explore(settings_from_options("data", image_size=[16], n_trials=1, models="cnn,vit"), pm)
    assert found["vit.optimizer"].choices == ["adamw"] and found["vit.optimizer"].condition == {"family": ["vit"]}
    # the user's space file overrides the family's recipe
    space = tmp_path / "space.yaml"
    space.write_text("optimizer: [sgd]\n")
    for t in _sample_with(pm, 20, space=str(space)):
        assert t["cfg"].optimizer == "sgd"


def test_the_kit_catches_a_misspelt_recipe_key():
    from automl_vision.testing import PluginCheckError, check_model_family

    pm = _recipe_plugin_manager()
    family = pm.model_families.get("vit")
    check_model_family(family, trials=1)  # the real recipe passes
    family.recipe = {"optimiser": ["adamw"]}
    with pytest.raises(PluginCheckError, match="recipe key 'optimiser' is not a parameter of the training space"):
        check_model_family(family, trials=1)


def _named_models_plugin_manager():
    """The built-ins plus a third-party family that offers named models (``tiny-a``, ``tiny-b``)
    and declares the values of its categorical parameter, as the built-in timm and CNN do."""
    import fnmatch
    import types

    from torch import nn

    from automl_vision import hookimpl
    from automl_vision.plugins import PluginManager
    from automl_vision.types import ModelFamily

    names = ["tiny-a", "tiny-b"]

    def resolve(items, what):
        out = [n for item in items for n in names if fnmatch.fnmatchcase(n, item)]
        if not out:
            raise UsageError(f"{what}: no zoo2 model matches {items}")
        return out

    def suggest(trial, ctx):
        return {"zoo2.arch": trial.suggest_categorical("zoo2.arch", ctx.models or names),
                "zoo2.act": trial.suggest_categorical("zoo2.act", ["relu", "gelu"])}

    module = types.ModuleType("automl_vision_test_named_family")

    @hookimpl
    def register_model_families(register):
        register(ModelFamily("zoo2", suggest=suggest, resolve_models=resolve, model_param="zoo2.arch",
                             param_values={"zoo2.act": ["relu", "gelu"]},
                             build=lambda p, in_chans, image_size, num_classes: nn.Sequential(
                                 nn.Flatten(), nn.Linear(in_chans * image_size * image_size, num_classes))))

    module.register_model_families = register_model_families
    pm = PluginManager().load(entry_points=False)
    pm.add_plugin(module, name="zoo2")
    return pm


def test_a_plugin_family_claims_its_model_names_like_the_builtins(tmp_path):
    """Issue #19: any --models name that was not a family was assumed to be timm's, and the
    space file's checks hard-coded the cnn.* values; a third-party family could offer neither."""
    pm = _named_models_plugin_manager()
    settings = settings_from_options("data", image_size=[16], models="tiny-*,cnn,resnet18")
    families, named = families_and_models(settings, pm)
    assert families == ["cnn", "zoo2", "timm"] and named == {"timm": ["resnet18"], "zoo2": ["tiny-a", "tiny-b"]}
    settings = settings_from_options("data", image_size=[16], models="tiny-b")
    families, named = families_and_models(settings, pm)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):
        trial = study.ask()
        cfg = sample(trial, settings, pm, families, named, 3, 3, 100, "cpu", 2)
        assert cfg.family == "zoo2" and cfg.model_params["zoo2.arch"] == "tiny-b"  # the family saw ctx.models
        study.tell(trial, 0.5)
    with pytest.raises(UsageError, match="unknown timm model 'nothing-like-it'.* Model families loaded: cnn, timm, zoo2"):
        families_and_models(settings_from_options("data", models="nothing-like-it"), pm)  # no family claims it
    for text, ok in (("zoo2.arch: [tiny-a]\n", True), ("zoo2.arch: [tiny-z]\n", False),
                     ("zoo2.act: [gelu]\n", True), ("zoo2.act: [tanh]\n", False)):
        space = tmp_path / "space.yaml"
        space.write_text(text)
        settings = settings_from_options("data", image_size=[16], models="zoo2", space=str(space))
        if ok:
            space_file.apply(settings, pm)
        else:
            with pytest.raises(UsageError, match="no zoo2 model matches|not a possible value"):
                space_file.apply(settings, pm)


def test_batch_choices_leave_at_least_four_batches_an_epoch():
    # a few hundred photos (a 70% split of 244-365) train in batches of 32: 64 left 2-3 steps an epoch
    assert batch_choices(171) == [32]
    assert batch_choices(255) == [32]
    assert batch_choices(256) == [32, 64]
    assert batch_choices(2100) == [32, 64, 128]
    for n in (10, 100, 300, 600, 1000, 5000):
        assert all(b <= max(32, n // 4) for b in batch_choices(n)), n
        assert batch_choices(n), n  # never empty: a tiny set still gets the smallest batch
