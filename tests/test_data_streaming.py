"""A dataset larger than memory still trains: splits over the memory limit are read from a
memory-mapped file in the cache instead of being copied into the process."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from automl_vision.data import cache
from automl_vision.types import Sample, UsageError
from conftest import TINY, run_cli, cli_env


def _samples(n: int, seed: int = 0) -> list[Sample]:
    rng = np.random.default_rng(seed)
    return [Sample(key=f"img{i}", label=i % 2, array=rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)) for i in range(n)]


def test_split_under_the_limit_is_a_copy_and_over_it_a_reused_memory_map(tmp_path):
    arr, _ = cache.load_or_build(_samples(40), tmp_path, 8, 3)
    idx = np.array([3, 1, 30, 7, 22])
    held = cache.gather(arr, idx, tmp_path, limit=10**6)
    assert not isinstance(held, np.memmap)
    np.testing.assert_array_equal(held, arr[idx])

    mapped = cache.gather(arr, idx, tmp_path, limit=100)  # 5 images x 192 bytes > 100
    assert isinstance(mapped, np.memmap)
    np.testing.assert_array_equal(mapped, arr[idx])  # in the split's order, not sorted
    files = list(tmp_path.glob("subset-*.npy"))
    assert len(files) == 1
    written = files[0].stat().st_mtime_ns
    mapped[0] = 0  # copy-on-write: a trial writing to its batch never changes the file
    again = cache.gather(arr, idx, tmp_path, limit=100)
    assert files[0].stat().st_mtime_ns == written
    np.testing.assert_array_equal(again, arr[idx])


def test_rebuilding_the_cache_drops_subsets_gathered_from_the_old_images(tmp_path):
    arr, _ = cache.load_or_build(_samples(10), tmp_path, 8, 3)
    cache.gather(arr, np.arange(6), tmp_path, limit=0)
    assert list(tmp_path.glob("subset-*.npy"))
    new, _ = cache.load_or_build(_samples(10, seed=1), tmp_path, 8, 3)  # the sources changed
    assert not list(tmp_path.glob("subset-*.npy"))
    np.testing.assert_array_equal(cache.gather(new, np.arange(6), tmp_path, limit=0), new[:6])


def test_memory_limit_is_half_the_available_memory_or_the_environment(monkeypatch):
    monkeypatch.delenv(cache.MEMORY_ENV, raising=False)
    limit, why = cache.memory_limit()
    assert limit is not None and 0 < limit < 2**50 and "available memory" in why
    monkeypatch.setenv(cache.MEMORY_ENV, "1.5")
    assert cache.memory_limit()[0] == int(1.5 * 2**20)
    monkeypatch.setenv(cache.MEMORY_ENV, "lots")
    with pytest.raises(UsageError, match=cache.MEMORY_ENV):
        cache.memory_limit()


def test_training_from_a_memory_map_learns_exactly_what_training_in_memory_learns(tmp_path):
    from automl_vision.builtin.custom_cnn import build
    from automl_vision.training.device import choose
    from automl_vision.training.trainer import TensorData, TrialConfig, train

    rng = np.random.default_rng(0)
    y = np.arange(96) % 2
    x = rng.integers(0, 80, (96, 12, 12, 3), dtype=np.uint8)
    x[y == 1, 3:9, 3:9, 0] = 230  # class 1 has a red square
    store, _ = cache.load_or_build([Sample(key=str(i), label=int(y[i]), array=x[i]) for i in range(96)], tmp_path, 12, 3)
    tr, va = np.arange(0, 96, 3), np.setdiff1d(np.arange(96), np.arange(0, 96, 3))
    params = {"cnn.block": "plain", "cnn.stages": 1, "cnn.blocks": 1, "cnn.width": 8, "cnn.kernel": 3,
              "cnn.norm": "batch", "cnn.act": "relu", "cnn.dropout": 0.0, "cnn.pool": "avg"}
    cfg = TrialConfig(family="cnn", model_params=params, image_size=12, batch_size=16, lr=1e-2, epochs=3)
    results = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bit-for-bit comparison
    try:
        for limit in (None, 0):
            x_tr, x_va = (cache.gather(store, i, tmp_path, limit) for i in (tr, va))
            data = TensorData.from_arrays(x_tr, y[tr], x_va, y[va], 2)
            assert data.streamed == (limit == 0)
            torch.manual_seed(0)
            results.append(train(build(params, 3, 12, 2), cfg, data, choose("cpu", "fp32", "off")))
    finally:
        torch.set_num_threads(threads)
    in_memory, mapped = results
    assert [h["train_loss"] for h in mapped.history] == [h["train_loss"] for h in in_memory.history]
    np.testing.assert_array_equal(mapped.val_probs, in_memory.val_probs)


def test_a_search_over_its_memory_limit_trains_from_the_cache_and_says_so(tmp_path, digits_dir):
    out = tmp_path / "run"
    proc = run_cli("search", digits_dir, "--out", out, *TINY, "--refit", env=cli_env(**{cache.MEMORY_ENV: "0"}))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "read from a memory-mapped file in the cache" in proc.stdout
    assert list((out / "cache").glob("*/subset-*.npy"))
    states = [json.loads(p.read_text())["state"] for p in sorted(out.glob("trials/*/status.json"))]
    assert states and all(s in ("COMPLETE", "PRUNED") for s in states), states
    assert (out / "final" / "report.json").exists()


def test_a_malformed_memory_limit_is_a_usage_error_before_any_work(tmp_path, digits_dir):
    out = tmp_path / "run"
    proc = run_cli("search", digits_dir, "--out", out, *TINY, env=cli_env(**{cache.MEMORY_ENV: "4GB"}))
    assert proc.returncode == 2
    assert cache.MEMORY_ENV in proc.stderr and "Traceback" not in proc.stderr
    assert not list(out.glob("trials/*"))
