"""Tests of the digits/npz plugin, with automl-vision's test kit for plugin authors."""

import numpy as np
import pytest

from automl_vision.testing import check_dataset_source, check_plugin
from automl_vision.types import DataError

import automl_vision_digits as plugin


def test_plugin_loads_and_registers_both_sources():
    pm = check_plugin(plugin, name="digits")
    assert {"digits", "npz"} <= set(pm.datasets)
    assert pm.datasets.plugin_of("npz") == "digits"


def test_digits_source_reads_all_ten_classes_and_limits_per_class():
    full = check_dataset_source(plugin.DIGITS, "")
    assert len(full.samples) == 1797 and full.classes == [str(i) for i in range(10)]
    small = check_dataset_source(plugin.DIGITS, "5")
    assert len(small.samples) == 50
    assert np.bincount([s.label for s in small.samples]).tolist() == [5] * 10
    assert small.samples[0].array.dtype == np.uint8 and small.samples[0].array.max() > 200


def test_digits_source_rejects_a_bad_location():
    with pytest.raises(DataError, match="digits:N"):
        plugin.load_digits("lots")


def test_npz_with_string_labels_and_fixed_splits(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (12, 10, 10, 3), dtype=np.uint8)
    labels = np.array(["cat", "dog"] * 6)
    split = np.array(["train"] * 8 + ["val"] * 2 + ["test"] * 2)
    np.savez(tmp_path / "a.npz", images=images, labels=labels, split=split)
    ds = check_dataset_source(plugin.NPZ, str(tmp_path / "a.npz"), detect=True)
    assert ds.classes == ["cat", "dog"]
    assert [s.label for s in ds.samples[:2]] == [0, 1]
    assert [s.split for s in ds.samples].count("val") == 2
    assert np.array_equal(ds.samples[3].array, images[3])


def test_npz_keras_style_splits(tmp_path):
    x = np.zeros((6, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "k.npz", x_train=x, y_train=np.array([0, 1, 2, 0, 1, 2]), x_val=x[:3], y_val=np.array([0, 1, 2]))
    ds = check_dataset_source(plugin.NPZ, str(tmp_path / "k.npz"))
    assert len(ds.classes) == 3 and len(ds.samples) == 9
    assert {s.split for s in ds.samples} == {"train", "val"}


def test_npz_errors_say_what_to_do(tmp_path):
    np.savez(tmp_path / "f.npz", images=np.zeros((4, 8, 8), dtype=np.float32), labels=np.array([0, 1, 0, 1]))
    with pytest.raises(DataError, match="must be uint8"):
        plugin.load_npz(str(tmp_path / "f.npz"))
    np.savez(tmp_path / "o.npz", images=np.zeros((2, 8, 8), dtype=np.uint8), labels=np.array([{"a": 1}, {"b": 2}], dtype=object))
    with pytest.raises(DataError, match="without unpickling"):
        plugin.load_npz(str(tmp_path / "o.npz"))
    with pytest.raises(DataError, match="file not found"):
        plugin.load_npz(str(tmp_path / "missing.npz"))
