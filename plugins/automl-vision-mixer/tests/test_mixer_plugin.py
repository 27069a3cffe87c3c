"""Tests of the mixer plugin, with automl-vision's test kit for plugin authors."""

import numpy as np
import optuna
import torch

from automl_vision.testing import check_metric, check_model_family, check_plugin
from automl_vision.types import SearchContext

import automl_vision_mixer as plugin


def test_plugin_conforms_and_registers_family_and_metrics():
    pm = check_plugin(plugin, name="mixer")  # also runs check_model_family and check_metric on each
    assert "mixer" in pm.model_families
    assert {"mcc", "cohen_kappa"} <= set(pm.metrics)


def test_family_works_at_several_image_sizes():
    for size in (16, 24):
        check_model_family(plugin.MIXER, trials=2, image_size=size, num_classes=5)


def test_space_is_conditional():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = []
    for _ in range(30):
        trial = study.ask()
        params = plugin.suggest(trial, SearchContext(num_classes=3, in_chans=1, image_size=16))
        assert ("mixer.token_ratio" in params) == (params["mixer.token_mixing"] == "mlp")
        assert ("mixer.drop_path" in params) == (params["mixer.depth"] >= 3)
        seen.append(params["mixer.token_mixing"])
        study.tell(trial, 0.0)
    assert set(seen) == {"mlp", "pool"}


def test_mixer_learns_a_separable_task():
    torch.manual_seed(0)
    y = torch.arange(64) % 2
    x = torch.randn(64, 1, 16, 16) * 0.3
    x[y == 1, :, :8] += 1.5  # class 1: bright top half
    params = {"mixer.patches": 4, "mixer.dim": 32, "mixer.depth": 2, "mixer.token_mixing": "pool", "mixer.channel_ratio": 2}
    model = plugin.build(params, in_chans=1, image_size=16, num_classes=2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(25):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    assert (model(x).argmax(1) == y).float().mean() > 0.95


def test_metrics_match_known_values():
    for m in plugin.METRICS:
        check_metric(m, num_classes=4)
    y = np.array([0, 0, 1, 1])
    probs = np.eye(2)[[0, 1, 1, 1]]
    # one of four wrong: kappa = (0.75 - 0.5) / 0.5; MCC = 1/sqrt(3)
    assert abs(plugin.cohen_kappa(y, probs) - 0.5) < 1e-9
    assert abs(plugin.mcc(y, probs) - 1 / np.sqrt(3)) < 1e-9
