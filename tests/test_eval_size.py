"""The evaluation sides: a network trained on random-resized crops predicts on whole images
decoded at its training side and a little larger (``eval_sizes`` in model.json; ``eval_size``
is the one side for a single input), averaging the probabilities, and every consumer of the
model (the run's own test scoring, ``predict``, the Python API, the preprocessing JSON) does so."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import automl_vision
from automl_vision.builtin.custom_cnn import build as build_cnn
from automl_vision.predict import ProbabilityModel, decode_batch, load_deliverable
from automl_vision.rundir import RunDir
from automl_vision.models import crop_offsets, crop_views
from automl_vision.training.augment import PRESETS, eval_crops, eval_size, eval_sizes
from automl_vision.training.inference import accepts_size
from conftest import run_cli


def test_the_side_follows_the_crop_and_is_never_smaller():
    medium = PRESETS["medium"].crop_scale
    # half of the 1 / E[sqrt(area)] enlargement, to a multiple of 4 px: the sides that were measured
    assert [eval_size(s, medium) for s in (64, 96, 128)] == [72, 108, 144]
    assert eval_size(64, 1.0) == 64 and eval_size(64, PRESETS["none"].crop_scale) == 64  # no crop: as trained
    sides = [eval_size(128, c) for c in (0.2, 0.35, 0.5, 0.7, 0.9, 1.0)]
    assert sides == sorted(sides, reverse=True) and min(sides) == 128  # the smaller the crops, the larger
    # predictions are averaged from the training side up to the full enlargement (medium: 1.23x)
    assert [eval_sizes(s, medium) for s in (64, 96, 128)] == [[64, 72, 80], [96, 108, 120], [128, 144, 156]]
    assert eval_sizes(64, 1.0) == [64] and eval_sizes(64, PRESETS["none"].crop_scale) == [64]
    for c in (0.2, 0.35, 0.5, 0.7, 0.9):
        several = eval_sizes(128, c)
        assert several == sorted(set(several)) and several[0] == 128 and eval_size(128, c) in several


def test_a_member_of_several_sides_averages_its_probabilities():
    torch.manual_seed(0)
    cnn = build_cnn({"cnn.block": "plain", "cnn.stages": 2, "cnn.blocks": 1, "cnn.width": 8, "cnn.kernel": 3,
                     "cnn.norm": "batch", "cnn.act": "relu", "cnn.dropout": 0.0, "cnn.pool": "avg",
                     "cnn.down": "maxpool"}, in_chans=3, image_size=16, num_classes=3).eval()
    spec = {"image_size": 16, "in_chans": 3, "mean": [0.5] * 3, "std": [0.25] * 3}
    rng = np.random.default_rng(0)
    images = {s: rng.integers(0, 256, (4, s, s, 3), dtype=np.uint8) for s in (16, 20)}
    several = ProbabilityModel([cnn], [{**spec, "eval_size": 20, "eval_sizes": [16, 20]}], [1.0], tta=True)
    assert several.sizes == [16, 20]
    one = {s: ProbabilityModel([cnn], [{**spec, "eval_size": s}], [1.0], tta=True).probs([images[s]]) for s in (16, 20)}
    np.testing.assert_allclose(several.probs([images[16], images[20]]), (one[16] + one[20]) / 2, atol=1e-6)
    # in an ensemble, the member of several sides and a member of one side share the 20 px input
    other = {**spec, "eval_size": 20}
    mixed = ProbabilityModel([cnn, cnn], [{**spec, "eval_size": 20, "eval_sizes": [16, 20]}, other], [1.0, 3.0])
    expected = 0.25 * (ProbabilityModel([cnn], [spec], [1.0], tta=False).probs([images[16]]) / 2
                       + ProbabilityModel([cnn], [other], [1.0]).probs([images[20]]) / 2) \
        + 0.75 * ProbabilityModel([cnn], [other], [1.0]).probs([images[20]])
    np.testing.assert_allclose(mixed.probs([images[16], images[20]]), expected, atol=1e-6)


def test_a_member_with_crops_averages_them_with_its_sides():
    """eval_crops: five crops of the training side (centre, four corners) cut from the largest side's
    image, every view (sides and crops, each with its flip) weighted alike."""
    medium = PRESETS["medium"].crop_scale
    assert eval_crops(64, medium) == 5 and eval_crops(64, 1.0) == 0 and eval_crops(64, PRESETS["none"].crop_scale) == 0
    assert crop_offsets(20, 16, 5) == [(2, 2), (0, 0), (0, 4), (4, 0), (4, 4)]
    torch.manual_seed(0)
    cnn = build_cnn({"cnn.block": "plain", "cnn.stages": 2, "cnn.blocks": 1, "cnn.width": 8, "cnn.kernel": 3,
                     "cnn.norm": "batch", "cnn.act": "relu", "cnn.dropout": 0.0, "cnn.pool": "avg",
                     "cnn.down": "maxpool"}, in_chans=3, image_size=16, num_classes=3).eval()
    spec = {"image_size": 16, "in_chans": 3, "mean": [0.5] * 3, "std": [0.25] * 3}
    sides = {**spec, "eval_size": 20, "eval_sizes": [16, 20]}
    assert crop_views({**sides, "eval_crops": 5}) == (5, 20, 16) and crop_views(sides) == (0, 0, 0)
    assert crop_views({**spec, "eval_crops": 5}) == (0, 0, 0)  # no larger side to cut crops from
    rng = np.random.default_rng(1)
    images = {s: rng.integers(0, 256, (4, s, s, 3), dtype=np.uint8) for s in (16, 20)}
    crops = ProbabilityModel([cnn], [{**sides, "eval_crops": 5}], [1.0], tta=True)
    assert crops.sizes == [16, 20]  # the crops need no input of their own

    def one(x: np.ndarray) -> np.ndarray:
        return ProbabilityModel([cnn], [spec], [1.0], tta=True).probs([np.ascontiguousarray(x)])

    views = [one(images[16]), one(images[20])] + [one(images[20][:, t:t + 16, left:left + 16])
                                                  for t, left in crop_offsets(20, 16, 5)]
    got = crops.probs([images[16], images[20]])
    np.testing.assert_allclose(got, np.mean(views, axis=0), atol=1e-6)
    # not the sides alone: the crops move the probabilities
    assert not np.allclose(got, ProbabilityModel([cnn], [sides], [1.0], tta=True).probs([images[16], images[20]]),
                           atol=1e-4)


def test_only_a_network_that_takes_the_larger_side_gets_one():
    cnn = build_cnn({"cnn.block": "plain", "cnn.stages": 3, "cnn.blocks": 1, "cnn.width": 8, "cnn.kernel": 3,
                     "cnn.norm": "batch", "cnn.act": "relu", "cnn.dropout": 0.0, "cnn.pool": "avg",
                     "cnn.down": "maxpool"}, in_chans=3, image_size=32, num_classes=2)
    cnn.train()
    assert accepts_size(cnn, 3, 36)
    assert cnn.training  # the probe leaves the network as it found it
    fixed = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 2))  # a fixed input size, like a ViT's
    assert accepts_size(fixed, 3, 32) and not accepts_size(fixed, 3, 36)


@pytest.fixture(scope="module")
def cropped_run(tmp_path_factory, digits_dir) -> Path:
    """A real tiny search whose trials all train on medium random-resized crops at 32 px."""
    space = tmp_path_factory.mktemp("space") / "space.yaml"
    space.write_text("aug:\n  preset: medium\n")
    out = tmp_path_factory.mktemp("evalsize") / "run"
    proc = run_cli("search", digits_dir, "--out", out, "--n-trials", "2", "--max-epochs", "2", "--image-size", "32",
                   "--models", "cnn", "--space", space, "--plain")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def test_the_deliverable_predicts_at_its_eval_sizes_everywhere(cropped_run):
    sides = eval_sizes(32, PRESETS["medium"].crop_scale)
    assert sides == [32, 36, 40]
    best = json.loads((cropped_run / "best" / "model.json").read_text())
    assert best["image_size"] == 32 and best["eval_size"] == 36 and best["eval_sizes"] == sides
    assert best["eval_crops"] == 5  # and five crops of 32 px cut from the 40 px image
    # only the validation and test images were decoded at the larger sides, not the whole folder again
    cache = cropped_run / "cache"
    for side in (36, 40):
        assert (cache / f"{side}px_1ch_val" / "images.npy").is_file() and (cache / f"{side}px_1ch_test" / "images.npy").is_file()
        assert not (cache / f"{side}px_1ch").exists()
    # a user without automl-vision is told the sides to decode at, and what the network was trained at
    prep = json.loads((cropped_run / "best" / "preprocessing.json").read_text())
    assert prep["image_size"] == 36 and prep["trained_at"] == 32 and prep["average_over_sizes"] == sides
    assert prep["average_over_crops"] == {"crops": 5, "of_size": 40, "crop": 32,
                                          "top_left": [[4, 4], [0, 0], [0, 8], [8, 0], [8, 8]]}
    assert "crops of average_over_crops" in prep["output"]

    rd = RunDir(cropped_run)
    report = rd.read_final()
    root = Path(rd.read_data_report()["root"])
    files = [str(root / k) for k in report["test_keys"]]
    predictor = automl_vision.load(str(cropped_run), model="best")
    assert predictor.sizes == sides
    # the run's own test scoring (its honest estimate) averaged those sides: predict reproduces it
    np.testing.assert_allclose(predictor.predict_proba(files), np.load(cropped_run / "final" / "test_probs_best.npy"),
                               atol=1e-5)
    # and that is not what the same network gives on images decoded at one side
    d = load_deliverable(cropped_run, "best")
    assert "averaged over 32/36/40 px, and 5 crops" in d.describe()
    (at_one,), ok, _ = decode_batch(files, [36], d.module.in_chans)
    one_side = {k: v for k, v in best.items() if k not in ("eval_sizes", "eval_crops")}
    as_one = ProbabilityModel(list(d.module.members), [one_side], [1.0],
                              temperature=d.module.temperature, tta=d.module.tta).probs([at_one])
    assert as_one.shape == (len(ok), 10)
    assert not np.allclose(as_one, predictor.predict_proba([files[i] for i in ok]), atol=1e-4)


def test_training_crops_are_cut_from_photos_decoded_larger_and_validation_stays_at_the_side(tmp_path):
    """A network trained on random-resized crops gets its training photos decoded at 1.5x its side, so a
    crop keeps the photo's detail instead of being upsampled; what it is scored on is decoded at its side."""
    from automl_vision.builtin.image_folder import load_image_folder
    from automl_vision.data.prepare import prepare
    from automl_vision.training.augment import train_side
    from conftest import write_colour_shapes

    medium, light = PRESETS["medium"].crop_scale, PRESETS["light"].crop_scale
    assert [train_side(s, medium) for s in (32, 64, 96, 128)] == [48, 96, 144, 192]
    assert train_side(64, light) == 96
    assert train_side(64, PRESETS["none"].crop_scale) == 64  # no crops: decoded at the side
    assert train_side(224, medium) == 224  # large sides: not measured, and the cache would grow 2.25x

    root = write_colour_shapes(tmp_path / "shapes", per_class=12, size=80)
    data = prepare(load_image_folder(str(root)), RunDir(tmp_path / "run"), image_size=32, seed=0)
    tr, va = data.split_index["train"], data.split_index["val"]
    x_train, x_val = data.training_arrays(tr, va, 32, train_side=train_side(32, medium))
    assert x_train.shape == (len(tr), 48, 48, 3) and x_val.shape == (len(va), 32, 32, 3)
    plain_train, _ = data.training_arrays(tr, va, 32)
    assert plain_train.shape == (len(tr), 32, 32, 3)


def test_a_search_trains_its_cropping_networks_on_photos_decoded_larger(cropped_run, tmp_path):
    """The trials and the final fit of a real search ask for the training photos at train_side: the
    folder is decoded once at 48 px for the 32-px networks, and the final fit says so in its record."""
    import shutil

    from automl_vision.data.prepare import reload_prepared
    from automl_vision.plugins import run_plugin_manager
    from automl_vision.search.final import retrain
    from automl_vision.training.device import choose

    cache = cropped_run / "cache"
    assert sorted(p.name for p in cache.iterdir() if p.name.endswith("px_1ch")) == ["32px_1ch", "48px_1ch"]
    assert np.load(cache / "48px_1ch" / "images.npy", mmap_mode="r").shape[1:3] == (48, 48)

    run = tmp_path / "run"
    shutil.copytree(cropped_run, run)
    rd = RunDir(run)
    pm = run_plugin_manager(rd.read_run() or {}, [])
    data = reload_prepared(rd, pm)
    number = int(json.loads((run / "final" / "report.json").read_text())["best_trial"])
    idx = np.sort(np.concatenate([data.split_index[s] for s in ("train", "val")]))
    info = retrain(rd, number, data, pm, choose("cpu", "fp32", "off"), idx, 1, run / "fit", "final_fit",
                   lambda m: None)
    assert info["decoded_at"] == 48
    spec = json.loads((run / "fit" / "model.json").read_text())
    assert spec["image_size"] == 32 and spec["final_fit"]["decoded_at"] == 48
