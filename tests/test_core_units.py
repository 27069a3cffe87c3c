"""Unit tests of the foundation's parts: settings, splits, registry, trainer, augmentation, device."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from automl_vision.data.prepare import stratified_split
from automl_vision.registry import ConflictError, Registry
from automl_vision.settings import SearchSettings, parse_duration
from automl_vision.training.augment import PRESETS, BatchAugmenter
from automl_vision.training.device import choose
from automl_vision.training.trainer import TensorData, TrialConfig, train
from automl_vision.types import UsageError


@pytest.mark.parametrize("text,seconds", [("90s", 90), ("10m", 600), ("2h", 7200), ("1h30m", 5400), ("300", 300), ("1.5m", 90)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "ten minutes", "5 parsecs", "0s", "-3m"])
def test_parse_duration_rejects(text):
    with pytest.raises(UsageError):
        parse_duration(text)


def test_stratified_split_keeps_every_class_in_val_and_is_seeded():
    labels = np.array([0] * 100 + [1] * 4 + [2] * 3)
    a = stratified_split(labels, (0.7, 0.15, 0.15), seed=1)
    b = stratified_split(labels, (0.7, 0.15, 0.15), seed=1)
    c = stratified_split(labels, (0.7, 0.15, 0.15), seed=2)
    for name in ("train", "val", "test"):
        assert set(labels[a[name]]) == {0, 1, 2}
        np.testing.assert_array_equal(a[name], b[name])
    assert not np.array_equal(a["val"], c["val"])
    all_idx = np.concatenate([a["train"], a["val"], a["test"]])
    assert sorted(all_idx.tolist()) == list(range(len(labels)))  # a partition


def test_grouped_split_keeps_groups_together_and_is_the_plain_split_without_them():
    labels = np.array([0] * 100 + [1] * 60 + [2] * 3)
    plain = stratified_split(labels, (0.7, 0.15, 0.15), seed=1)
    unique = stratified_split(labels, (0.7, 0.15, 0.15), seed=1, groups=np.arange(len(labels)))
    for name in plain:  # no shared group: exactly the plain split (stored runs and benchmarks unchanged)
        np.testing.assert_array_equal(plain[name], unique[name])
    groups = np.arange(len(labels))
    groups[10:40] = groups[10:40] // 3 * 3  # ten triples in class 0
    groups[100:110] = 100  # ten copies of one image in class 1
    groups[160:163] = 160  # class 2: three copies of one image, too few for a split each
    split = stratified_split(labels, (0.7, 0.15, 0.15), seed=1, groups=groups)
    where = {int(i): name for name, idx in split.items() for i in idx}
    assert sorted(where) == list(range(len(labels)))  # a partition
    for g in np.unique(groups[:160]):
        assert len({where[int(i)] for i in np.flatnonzero(groups == g)}) == 1, g
    for name in ("train", "val", "test"):
        assert {0, 1, 2} <= set(labels[split[name]].tolist())  # class 2 falls back to the plain split
        assert abs(len(split[name]) - len(plain[name])) <= 10


def test_registry_suggests_close_names_and_names_conflicting_plugins():
    reg: Registry[int] = Registry("metric")
    reg.add("accuracy", 1, "builtin")
    with pytest.raises(UsageError, match="Did you mean 'accuracy'"):
        reg.get("acuracy")
    reg.add("accuracy", 2, "thirdparty")
    with pytest.raises(ConflictError, match="builtin, thirdparty"):
        reg.get("accuracy")
    reg.preferred["accuracy"] = "thirdparty"
    assert reg.get("accuracy") == 2


def _blobs(n=128, k=3, size=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % k
    x = torch.randint(0, 60, (n, 3, size, size), generator=g, dtype=torch.uint8)
    for c in range(k):
        x[y == c, c] += 150  # each class brightens its own channel
    return x, y


def test_trainer_really_learns_a_separable_task():
    x, y = _blobs()
    xv, yv = _blobs(seed=1)
    data = TensorData(x, y, xv, yv, mean=[0.5] * 3, std=[0.25] * 3, num_classes=3)
    from automl_vision.builtin.custom_cnn import build

    params = {"cnn.block": "plain", "cnn.stages": 2, "cnn.blocks": 1, "cnn.width": 16, "cnn.kernel": 3,
              "cnn.norm": "batch", "cnn.act": "relu", "cnn.dropout": 0.0, "cnn.pool": "avg"}
    model = build(params, in_chans=3, image_size=12, num_classes=3)
    cfg = TrialConfig(family="cnn", model_params=params, image_size=12, batch_size=32, lr=3e-3, epochs=4)
    path = choose("cpu", "fp32", "off")
    seen = []
    result = train(model, cfg, data, path, on_epoch=lambda e, p, rec: seen.append((e, rec["train_loss"])))
    assert [e for e, _ in seen] == [1, 2, 3, 4]
    assert seen[-1][1] < seen[0][1]
    assert (result.val_probs.argmax(1) == yv.numpy()).mean() > 0.9
    np.testing.assert_allclose(result.val_probs.sum(1), 1.0, rtol=1e-5)


def test_trainer_plan_shortens_the_trial_and_keeps_its_schedule_whole():
    x, y = _blobs(n=64)
    data = TensorData(x, y, x, y, mean=[0.5] * 3, std=[0.25] * 3, num_classes=3)
    from automl_vision.builtin.custom_cnn import build

    params = {"cnn.block": "plain", "cnn.stages": 1, "cnn.blocks": 1, "cnn.width": 8, "cnn.kernel": 3,
              "cnn.norm": "batch", "cnn.act": "relu", "cnn.dropout": 0.0, "cnn.pool": "avg"}
    cfg = TrialConfig(family="cnn", model_params=params, image_size=12, batch_size=16, lr=1e-2, epochs=10)
    lrs = []
    result = train(build(params, 3, 12, 3), cfg, data, choose("cpu", "fp32", "off"),
                   on_epoch=lambda e, p, rec: lrs.append(rec["lr"]), plan=lambda done, secs: 3)
    assert result.epochs_run == 3
    assert "cut from 10 to 3" in result.stopped_early
    assert lrs[-1] < 0.01 * cfg.lr  # the cosine reached its end within the 3 epochs


def test_augmentation_resamples_at_a_smaller_side_with_or_without_geometry():
    x = torch.rand(4, 3, 16, 16)
    for preset in ("none", "medium"):
        aug = BatchAugmenter(PRESETS[preset], num_classes=2, label_smoothing=0.0, generator=torch.Generator().manual_seed(0))
        assert aug.geometry(x, 8).shape == (4, 3, 8, 8)
        assert aug.geometry(x).shape == x.shape


@pytest.mark.parametrize("preset", list(PRESETS))
def test_augmentation_presets_keep_shape_and_range(preset):
    x = torch.rand(8, 3, 16, 16)
    y = torch.arange(8) % 2
    aug = BatchAugmenter(PRESETS[preset], num_classes=2, label_smoothing=0.1, generator=torch.Generator().manual_seed(0))
    u8 = aug.uint8_stage((x * 255).to(torch.uint8))
    out = aug.erase(aug.colour(aug.geometry(u8.float() / 255)))
    xb, target = aug.mix(out, y)
    assert xb.shape == x.shape
    assert target.shape[0] == 8
    if preset == "none":
        torch.testing.assert_close(out, (x * 255).to(torch.uint8).float() / 255)


def test_forced_execution_path_is_respected_and_bad_values_refused():
    path = choose("cpu", "fp32", "on")
    assert (path.device, path.precision, path.channels_last) == ("cpu", "fp32", True)
    assert "forced" in path.reason
    with pytest.raises(UsageError, match="fp16"):
        choose("cpu", "fp16", "off")
    with pytest.raises(UsageError, match="--device"):
        choose("tpu", "auto", "auto")


def test_cpu_path_is_measured_per_cpu_extensions_and_a_cache_of_another_cpu_is_not_used(tmp_path, monkeypatch):
    from automl_vision.training import device

    monkeypatch.setattr(device, "CACHE_FILE", tmp_path / "exec_path.json")
    monkeypatch.setattr(device, "cpu_supports_bf16", lambda: True)
    # written on a machine of the same model name with AMX, where bf16 was fast
    amx = {"model name": "Intel(R) Xeon(R) Processor", "flags": "fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile"}
    monkeypatch.setattr(device, "_cpu_fields", lambda: amx)
    other = device._cpu_key()
    device.CACHE_FILE.write_text(json.dumps({other: {"fp32": 100.0, "fp32+cl": 120.0, "bf16+cl": 900.0, "bf16": 800.0}}))
    # this machine: the same model name, AVX512-BF16 without AMX
    monkeypatch.setattr(device, "_cpu_fields", lambda: {**amx, "flags": "fpu avx2 avx512f avx512_bf16"})
    key = device._cpu_key()
    measured = []
    monkeypatch.setattr(device, "_measure", lambda names: measured.append(names) or
                        {"fp32": 100.0, "fp32+cl": 150.0, "bf16+cl": 160.0, "bf16": 90.0})
    path = device.choose_cpu_path()
    assert measured == [["fp32", "fp32+cl", "bf16+cl", "bf16"]]
    # bf16+cl was measured fastest here, but by less than the 1.2x that buys its lower precision
    assert (path.precision, path.channels_last) == ("fp32", True)
    cached = json.loads(device.CACHE_FILE.read_text())
    assert set(cached) == {other, key}
    assert device.choose_cpu_path().precision == "fp32" and len(measured) == 1  # this machine's entry is reused


def test_a_path_measured_without_an_instruction_set_cap_is_not_reused_under_one(tmp_path, monkeypatch):
    """ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA cap the kernels on the same CPU (bf16+cl fell from
    1,848 to 84 img/s on a Zen 4 capped at AVX2): a capped process must measure its own path."""
    import torch

    from automl_vision.training import device

    monkeypatch.setattr(device, "CACHE_FILE", tmp_path / "exec_path.json")
    monkeypatch.setattr(device, "cpu_supports_bf16", lambda: True)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    measured = []
    speeds = iter([{"fp32": 900.0, "fp32+cl": 1000.0, "bf16+cl": 1800.0, "bf16": 1200.0},
                   {"fp32": 900.0, "fp32+cl": 1000.0, "bf16+cl": 90.0, "bf16": 80.0},
                   {"fp32": 700.0, "fp32+cl": 800.0, "bf16+cl": 85.0, "bf16": 80.0}])
    monkeypatch.setattr(device, "_measure", lambda names: measured.append(names) or next(speeds))
    assert device.choose_cpu_path().precision == "bf16" and len(measured) == 1
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # oneDNN capped, torch's own kernels not
    assert device.choose_cpu_path().precision == "fp32" and len(measured) == 2
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    path = device.choose_cpu_path()
    assert len(measured) == 3 and "fp32+cl 800" in path.reason
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert device.choose_cpu_path().precision == "bf16" and len(measured) == 3  # the uncapped entry is kept
    assert len(json.loads(device.CACHE_FILE.read_text())) == 3


def test_a_figure_cached_by_an_older_probe_is_measured_again(tmp_path, monkeypatch):
    """The cached speeds feed the path and the resolution choice; figures of another probe
    network (the 32 px probe before this one) would pick the wrong layout and size."""
    from automl_vision.training import device

    monkeypatch.setattr(device, "CACHE_FILE", tmp_path / "exec_path.json")
    monkeypatch.setattr(device, "cpu_supports_bf16", lambda: True)
    key = device._cpu_key()
    assert device.PROBE_VERSION in key
    old_key = key.rsplit("|probe ", 1)[0]  # how a cache written before the probe's version was spelt
    device.CACHE_FILE.write_text(json.dumps({old_key: {"fp32": 100.0, "fp32+cl": 120.0, "bf16+cl": 450.0,
                                                       "bf16": 455.0}}))
    measured = []
    monkeypatch.setattr(device, "_measure", lambda names: measured.append(names) or
                        {"fp32": 900.0, "fp32+cl": 1300.0, "bf16+cl": 2200.0, "bf16": 1400.0})
    path = device.choose_cpu_path()
    assert len(measured) == 1 and (path.precision, path.channels_last) == ("bf16", True)
    assert json.loads(device.CACHE_FILE.read_text())[key]["bf16+cl"] == 2200.0


def test_cpu_path_probe_times_every_candidate():
    from automl_vision.training.device import _measure

    rates = _measure(["fp32", "fp32+cl"], rounds=2, steps=1)
    assert set(rates) == {"fp32", "fp32+cl"}
    assert all(0 < r < float("inf") for r in rates.values())


def test_bf16_on_cpu_is_not_used_to_train_a_network_with_strided_convolutions_on_one_pixel():
    """oneDNN's bf16 weight gradient of a strided convolution over a 1x1 input is garbage on
    CPUs with AMX: a ResNet at 16 px must train in fp32; at 64 px, and on other paths, the
    path is kept; the check leaves no hook and the model's mode as it was."""
    import timm

    from automl_vision.training.device import ExecPath

    bf16 = ExecPath("cpu", "bf16", True, "measured")
    model = timm.create_model("resnet10t", num_classes=3).train()
    small = bf16.for_network(model, (3, 16, 16))
    assert (small.precision, small.channels_last) == ("fp32", True)
    assert "1-pixel" in small.reason and "16 px" in small.reason
    assert bf16.for_network(model, (3, 64, 64)) is bf16
    fp32 = ExecPath("cpu", "fp32", True, "measured")
    assert fp32.for_network(model, (3, 16, 16)) is fp32
    assert model.training
    assert not any(m._forward_pre_hooks for m in model.modules())


def test_python_api_search_stays_callable_after_its_submodules_are_imported(digits_dir, tmp_path):
    import automl_vision
    import automl_vision.search.run  # noqa: F401  (would shadow a plain function named search)

    report = automl_vision.search(str(digits_dir), out=str(tmp_path / "api"), n_trials=1, max_epochs=1,
                                  image_size=16, models="cnn")
    assert callable(automl_vision.search)
    assert report["best_trial"] == 0
    assert (tmp_path / "api" / "final" / "report.json").exists()


def test_cnn_stride2_stem_is_searched_only_for_larger_images_and_quarters_the_first_stage():
    import optuna

    from automl_vision.builtin.custom_cnn import build, suggest
    from automl_vision.types import SearchContext

    small = suggest(optuna.trial.FixedTrial({"cnn.block": "plain", "cnn.stages": 3, "cnn.blocks": 1, "cnn.width": 16,
                                              "cnn.kernel": 3, "cnn.norm": "batch", "cnn.act": "relu",
                                              "cnn.dropout": 0.0, "cnn.pool": "avg", "cnn.down": "stride"}), SearchContext(2, 3, 32))
    assert "cnn.stem_stride" not in small
    params = dict(small, **{"cnn.stem_stride": 2, "cnn.stem": "conv"})
    fixed = optuna.trial.FixedTrial(params)
    assert suggest(fixed, SearchContext(2, 3, 64))["cnn.stem_stride"] == 2
    model = build(params, in_chans=3, image_size=64, num_classes=2)
    feats = model.features[:3](torch.zeros(1, 3, 64, 64))  # the stem
    assert feats.shape[-1] == 32
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 2)


def test_cnn_scatter_stem_is_a_fixed_oriented_wavelet_front_with_the_stride2_geometry():
    import math

    import optuna

    from automl_vision.builtin.custom_cnn import ScatterStem, build, describe, suggest
    from automl_vision.types import SearchContext

    params = {"cnn.block": "plain", "cnn.stages": 4, "cnn.blocks": 1, "cnn.width": 32, "cnn.kernel": 3,
              "cnn.norm": "batch", "cnn.act": "relu", "cnn.dropout": 0.1, "cnn.pool": "avg", "cnn.down": "maxpool",
              "cnn.stem_stride": 2, "cnn.stem": "scatter"}
    assert suggest(optuna.trial.FixedTrial(params), SearchContext(2, 3, 64))["cnn.stem"] == "scatter"
    stride1 = suggest(optuna.trial.FixedTrial(dict(params, **{"cnn.stem_stride": 1})), SearchContext(2, 3, 64))
    assert "cnn.stem" not in stride1  # only the stride-2 stem has the choice
    model = build(params, in_chans=3, image_size=64, num_classes=2)
    stem = model.features[0]
    assert isinstance(stem, ScatterStem) and not list(stem.parameters())  # nothing in it is trained
    assert "scatter" in describe(params)
    # a grating along each axis: the wavelet aligned with it answers most, the one across it least,
    # and the map keeps the stride-2 stem's geometry (27 maps = 3 colours x (low-pass + 8 orientations))
    r = torch.arange(64.0)
    answers = []
    for angle in (0.0, math.pi / 2):
        wave = torch.cos(3 * math.pi / 4 * (r[None, :] * math.cos(angle) + r[:, None] * math.sin(angle)))
        out = stem(wave.expand(1, 3, 64, 64).contiguous())
        assert out.shape == (1, 27, 32, 32)
        answers.append(out[0, 3:11].mean((1, 2)))  # the first colour's 8 orientations
    assert answers[0].argmax() != answers[1].argmax()
    assert answers[0].max() > 10 * answers[0].min() and answers[1].max() > 10 * answers[1].min()
    # a constant image has no edges: every wavelet answers (almost) nothing away from the border
    flat = stem(torch.ones(1, 3, 64, 64))
    assert flat[0, 3:11, 8:24, 8:24].abs().max() < 1e-2
    assert torch.allclose(flat[0, :3, 8:24, 8:24], torch.ones(3, 16, 16), atol=1e-3)  # the low-pass keeps the mean
    # trained, it learns like the learnt stem does, and the stem stays as it was
    before = stem.bank.clone()
    x = torch.randn(16, 3, 64, 64)
    y = (x[:, 0].mean((1, 2)) > 0).long()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.equal(stem.bank, before)
    traced = torch.jit.trace(model.eval(), x[:2])  # plain convolutions: it traces (and so exports)
    assert torch.allclose(traced(x[:4]), model(x[:4]), atol=1e-5)


def test_cnn_max_pool_downsampling_and_older_trials_without_the_choice():
    from torch import nn

    from automl_vision.builtin.custom_cnn import build

    params = {"cnn.block": "plain", "cnn.stages": 4, "cnn.blocks": 1, "cnn.width": 32, "cnn.kernel": 3,
              "cnn.norm": "batch", "cnn.act": "relu", "cnn.dropout": 0.1, "cnn.pool": "avg", "cnn.stem_stride": 2}
    pooled = build(dict(params, **{"cnn.down": "maxpool"}), in_chans=3, image_size=64, num_classes=2)
    pools = [m for m in pooled.features if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 4  # one after every stage
    assert pooled.features(torch.zeros(1, 3, 64, 64)).shape[-1] == 2  # 64 -> 32 (stem) -> 16 -> 8 -> 4 -> 2
    assert pooled(torch.zeros(2, 3, 64, 64)).shape == (2, 2)
    older = build(params, in_chans=3, image_size=64, num_classes=2)  # a trial stored before the choice existed
    assert not any(isinstance(m, nn.MaxPool2d) for m in older.features)
    assert older.features(torch.zeros(1, 3, 64, 64)).shape[-1] == 4  # strided: 32 -> 32 -> 16 -> 8 -> 4


def test_a_trial_with_mixup_cutmix_and_erasing_trains_the_same_whatever_ran_before():
    """timm's mixup and erasing draw from NumPy's and Python's global generators: the
    trainer seeds them per trial, so the same configuration gives the same model."""
    import random

    from automl_vision.builtin.custom_cnn import build

    x, y = _blobs(n=64)
    data = TensorData(x, y, x, y, mean=[0.5] * 3, std=[0.25] * 3, num_classes=3)
    params = {"cnn.block": "plain", "cnn.stages": 1, "cnn.blocks": 1, "cnn.width": 8, "cnn.kernel": 3,
              "cnn.norm": "batch", "cnn.act": "relu", "cnn.dropout": 0.0, "cnn.pool": "avg"}
    cfg = TrialConfig(family="cnn", model_params=params, image_size=12, batch_size=16, lr=1e-2, epochs=2,
                      aug_preset="heavy", aug=PRESETS["heavy"], seed=7)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the float sums are done in the same order
    try:
        probs = []
        for other in (1, 2):  # something else used the global generators in between
            np.random.seed(other)
            random.seed(other)
            torch.manual_seed(cfg.seed)
            probs.append(train(build(params, 3, 12, 3), cfg, data, choose("cpu", "fp32", "off")).val_probs)
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_allclose(probs[0], probs[1], rtol=0, atol=1e-6)


def test_progress_says_why_a_schedule_changes_and_keeps_time_left_running():
    """Issue #20: epoch denominators changed mid-trial (1/20, then 3/7) without a word, and the
    live panel's "time left" stood still through a long epoch."""
    import io
    import time as _time

    from automl_vision.progress import LogProgress, RichProgress

    lp = LogProgress(stream=io.StringIO(), deadline=_time.time() + 60)
    lp.trial_start(0, "cnn", 20)
    lp.epoch(0, 1, 20, "accuracy", 0.5, 0.1)
    lp.epoch(0, 2, 7, "accuracy", 0.6, 0.1)
    lp.epoch(0, 3, 7, "accuracy", 0.6, 0.1)
    lines = lp.stream.getvalue().splitlines()
    assert "schedule" not in lines[1] and "cut from 20 to 7 epochs by the time budget" in lines[2]
    assert "schedule" not in lines[3]  # said once
    rp = RichProgress(deadline=_time.time() + 3600)
    first = rp.live.get_renderable()
    rp.deadline -= 120  # two minutes pass with no event: the panel's next draw shows it
    text = [str(cell) for col in rp.live.get_renderable().columns for cell in col._cells]
    before = [str(cell) for col in first.columns for cell in col._cells]
    assert text != before and any("58m" in t for t in text)


def test_stored_settings_hide_the_storage_password():
    # run.json and the study record as_stored(); the live settings keep the URL the storage needs
    settings = SearchSettings(data="photos", run_dir="run", study_name="s", seed=3,
                              storage="postgresql://automl:s3cret@127.0.0.1:5432/automl")
    stored = settings.as_stored()
    assert stored["storage"] == "postgresql://automl:***@127.0.0.1:5432/automl"
    assert "s3cret" not in json.dumps(stored)
    assert settings.storage.endswith(":s3cret@127.0.0.1:5432/automl")
    assert SearchSettings.from_dict(stored).seed == 3
    assert SearchSettings(data="photos", run_dir="run", study_name="s").as_stored()["storage"] is None
