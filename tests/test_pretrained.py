"""Starting from weights: local weight files, fine-tuning from an earlier run, and
``--pretrained`` on a machine that cannot reach the model hub. Every weight file is
created here."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from safetensors.torch import save_file

from automl_vision import cli
from automl_vision.rundir import RunDir, load_weights
from automl_vision.training.pretrained import freeze_stages, initialise, read_state_dict
from automl_vision.training.trainer import TrialConfig
from automl_vision.types import UsageError
from conftest import cli_env, run_cli, write_colour_shapes


def _reference_weights(num_classes: int = 1000) -> dict[str, torch.Tensor]:
    torch.manual_seed(123)
    model = timm.create_model("resnet10t", num_classes=num_classes)
    with torch.no_grad():
        model.fc.weight.fill_(7.0)  # a head that must not survive loading
    return {k: v.contiguous() for k, v in model.state_dict().items()}


class Evil:
    """Not a tensor: unpickling it would run code of the file's choosing."""


def test_local_safetensors_and_state_dict_load_with_a_new_head(tmp_path):
    state = _reference_weights(num_classes=5)
    save_file(state, str(tmp_path / "resnet10t.safetensors"))
    torch.save(state, tmp_path / "resnet10t.pth")
    init_files = [str(tmp_path / "resnet10t.safetensors"), str(tmp_path / "resnet10t.pth")]
    for path in init_files:
        model = timm.create_model("resnet10t", num_classes=5)
        cfg = TrialConfig(family="timm", model_params={"timm.arch": "resnet10t"}, image_size=32, lr=1e-3)
        info = initialise(model, cfg, {"mode": "weights", "files": {"resnet10t": path}, "freeze_stages": 0,
                                       "backbone_lr_scale": 0.1}, in_chans=3, num_classes=5)
        assert info["file"] == path
        loaded = model.state_dict()
        body = [k for k in state if not k.startswith("fc.")]
        assert all(torch.equal(loaded[k], state[k]) for k in body)
        # same number of classes, but the classifier is still new
        assert not torch.all(loaded["fc.weight"] == 7.0)
        assert cfg.head == ["fc"] and cfg.backbone_lr_scale == 0.1


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "resnet10t.pth"
    torch.save({"conv1.0.weight": torch.zeros(1), "payload": Evil()}, path)
    with pytest.raises(UsageError, match="Pickled objects other than tensors are refused"):
        read_state_dict(path)


def test_freeze_stages_freezes_the_stem_and_first_stages():
    model = timm.create_model("resnet10t", num_classes=3)
    frozen = freeze_stages(model, 2)
    assert "conv1.0.weight" in frozen and any(n.startswith("layer2.") for n in frozen)
    assert not any(n.startswith(("layer3.", "layer4.", "fc.")) for n in frozen)
    assert all(not p.requires_grad for n, p in model.named_parameters() if n in frozen)
    assert model.fc.weight.requires_grad


def test_search_with_local_weights_folder(tmp_path, digits_dir):
    weights = tmp_path / "weights"
    weights.mkdir()
    state = _reference_weights()
    save_file(state, str(weights / "resnet10t.safetensors"))
    out = tmp_path / "run"
    proc = run_cli("search", digits_dir, "--out", out, "--weights", weights, "--freeze-stages", "1", "--n-trials", "1",
                   "--max-epochs", "1", "--image-size", "16", "--no-portfolio", "--plain")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    status = json.loads((RunDir(out).trial_dir(0) / "status.json").read_text())
    assert status["state"] == "COMPLETE", status
    assert status["model"] == "resnet10t"  # --weights alone searches the backbones it has files for
    assert status["init"]["file"].endswith("resnet10t.safetensors") and status["init"]["frozen_tensors"] > 0
    trained = load_weights(RunDir(out).trial_dir(0) / "weights.safetensors")
    # the stem was frozen: it is the file's, summed over colour channels for greyscale digits
    expected = state["conv1.0.weight"].sum(dim=1, keepdim=True)
    assert torch.allclose(trained["conv1.0.weight"], expected)
    assert trained["fc.weight"].shape[0] == 10  # a new 10-class head


def test_fine_tune_from_an_earlier_run(tmp_path, tiny_run):
    shapes = write_colour_shapes(tmp_path / "shapes", per_class=16, size=24)
    source = json.loads((tiny_run / "best" / "model.json").read_text())
    source_weights = load_weights(tiny_run / "best" / "weights.safetensors")
    out = tmp_path / "ft"
    proc = run_cli("search", shapes, "--out", out, "--init-from", tiny_run, "--freeze-stages", "1", "--n-trials", "2",
                   "--max-epochs", "1", "--plain")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for n in (0, 1):
        config = json.loads((RunDir(out).trial_dir(n) / "config.json").read_text())
        assert config["family"] == source["family"]
        assert config["model_params"] == source["params"]  # the same architecture
        assert config["image_size"] == source["image_size"]
    status = json.loads((RunDir(out).trial_dir(0) / "status.json").read_text())
    assert status["state"] == "COMPLETE", status
    assert status["init"]["source"] == str((tiny_run / "best").resolve())
    model = json.loads((RunDir(out).trial_dir(0) / "model.json").read_text())
    assert model["classes"] == ["blue disc", "red square"] and model["in_chans"] == 3
    trained = load_weights(RunDir(out).trial_dir(0) / "weights.safetensors")
    # frozen stem: the earlier (greyscale) model's first convolution, spread over three channels
    first = "features.0.weight"
    assert source_weights[first].shape[1] == 1 and trained[first].shape[1] == 3
    assert torch.allclose(trained[first].sum(dim=1, keepdim=True), source_weights[first], atol=1e-5)
    head = [k for k in trained if k.startswith("head.") and k.endswith("weight")][0]
    assert trained[head].shape[0] == 2


def test_pretrained_without_network_says_so(tmp_path, digits_dir):
    # an endpoint on loopback that refuses connections stands for "no network"; an empty cache
    env = cli_env(HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf"), HF_HUB_CACHE=str(tmp_path / "hf" / "hub"))
    proc = run_cli("search", digits_dir, "--out", tmp_path / "r", "--pretrained", "--models", "resnet10t",
                   "--n-trials", "1", env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert "--pretrained: the Hugging Face hub (http://127.0.0.1:9) cannot be reached" in proc.stderr
    assert "resnet10t" in proc.stderr and "--weights DIR" in proc.stderr
    assert not (tmp_path / "r" / "trials").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--freeze-stages", "2"], "--freeze-stages and --backbone-lr-scale need --pretrained, --weights or --init-from"),
        (["--init-from", "nowhere"], "--init-from nowhere: no best/model.json"),
        (["--weights", "missing.safetensors"], "--weights missing.safetensors: no such file or folder"),
    ],
)
def test_weight_option_errors(tmp_path, capsys, digits_dir, extra, message, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = cli.main(["search", str(digits_dir), "--out", str(tmp_path / "r"), "--n-trials", "1", *extra])
    assert code == 2
    assert message in capsys.readouterr().err
