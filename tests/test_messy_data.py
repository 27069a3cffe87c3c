"""Messy real-world image folders: every odd file gets the right treatment, and
``data_report.json`` says what was skipped or fixed and why.

The corpus is generated here (no downloads): broken files, every common format and
mode, EXIF rotation, huge images, a decompression bomb, symlinks, an empty class.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from automl_vision.builtin.image_folder import load_image_folder
from automl_vision.data.images import decode
from automl_vision.data.prepare import prepare
from automl_vision.rundir import RunDir
from automl_vision.types import DataError
from conftest import TINY, run_cli

RED, BLUE = (220, 30, 30), (30, 30, 220)


def _noise(seed: int, size: int = 24, colour=(200, 60, 60)) -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
    arr[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = colour
    return Image.fromarray(arr, "RGB")


def _jpeg_bytes(img: Image.Image, **kw) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, "JPEG", **kw)
    return buf.getvalue()


def write_messy_corpus(root: Path, outside: Path) -> Path:
    """The folder a user scraped from the web, with one of every kind of trouble."""
    cat, dog, empty = root / "cat", root / "dog", root / "empty"
    for d in (cat, dog, empty, outside):
        d.mkdir(parents=True, exist_ok=True)
    for i in range(8):
        _noise(i, colour=(200, 60, 60)).save(cat / f"good{i}.jpg", quality=90)
        _noise(100 + i, colour=(60, 60, 200)).save(dog / f"good{i}.png")

    # broken files
    (cat / "truncated.jpg").write_bytes(_jpeg_bytes(_noise(50, size=64))[:700])
    (cat / "zero.jpg").write_bytes(b"")
    (cat / "notes.jpg").write_text("this is a text file someone saved with a .jpg name\n")
    (cat / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")

    # formats and modes
    _noise(60).save(cat / "no_extension", format="PNG")
    frames = [Image.new("RGB", (16, 16), c) for c in (RED, (30, 200, 30), BLUE)]
    frames[0].save(dog / "animated.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    _noise(61).save(dog / "photo.webp", quality=90)
    _noise(62).save(dog / "photo.bmp")
    _noise(63).save(dog / "photo.tiff")
    Image.fromarray(np.full((12, 12), 65535, dtype=np.uint16)).save(cat / "deep16.png")
    _noise(64).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(dog / "palette.png")
    rgba = np.zeros((12, 12, 4), dtype=np.uint8)  # fully transparent: must come out white, not black
    Image.fromarray(rgba, "RGBA").save(dog / "transparent.png")
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(cat / "cmyk.jpg")  # pure red in CMYK
    Image.new("RGB", (1, 1), RED).save(cat / "one_pixel.png")

    # EXIF orientation 6: the stored pixels are lying on their side (left half red, right half
    # blue); a viewer rotates them 90 degrees clockwise, which puts the red half on top.
    side = np.zeros((20, 40, 3), dtype=np.uint8)
    side[:, :20] = RED
    side[:, 20:] = BLUE
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(side, "RGB").save(cat / "rotated.jpg", exif=exif, quality=95)

    # a very large photo (a smooth gradient keeps the file small) and a decompression bomb
    gx = np.linspace(0, 255, 6000, dtype=np.float32)[None, :, None]
    big = np.broadcast_to(gx, (4000, 6000, 3)).astype(np.uint8)
    Image.fromarray(big, "RGB").save(dog / "huge.jpg", quality=70)
    Image.new("1", (10_000, 10_000)).save(cat / "bomb.png")  # 100 M pixels in a few kB

    # symlinks: one inside the folder (followed), one file and one folder outside (refused)
    _noise(70).save(outside / "secret.png")
    (cat / "alias.jpg").symlink_to(cat / "good0.jpg")
    (cat / "outside.png").symlink_to(outside / "secret.png")
    (dog / "linked_folder").symlink_to(outside, target_is_directory=True)
    (dog / "dangling.png").symlink_to(root / "does-not-exist.png")
    return root


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    base = tmp_path_factory.mktemp("messy")
    root = write_messy_corpus(base / "scraped", base / "elsewhere")
    run_dir = RunDir(base / "run")
    data = prepare(load_image_folder(str(root)), run_dir, image_size=16, seed=0)
    report = json.loads(run_dir.data_report.read_text())
    return root, run_dir, data, report


def _skip_reason(report: dict, key: str) -> str:
    matches = [s["reason"] for s in report["skipped"] if s["path"] == key]
    assert matches, f"{key} is not listed as skipped; skipped: {report['skipped']}"
    return matches[0]


def _fixes(report: dict, key: str) -> list[str]:
    for f in report["fixed"]:
        if f["path"] == key:
            return f["fixes"]
    return []


def _pixels(data, key: str) -> np.ndarray:
    index = [s.key for s in data.samples].index(key)
    return np.asarray(data.images(16)[index])


def _used(data) -> set[str]:
    return {s.key for s in data.samples}


def test_broken_files_are_skipped_with_a_reason(messy):
    _root, _rd, data, report = messy
    assert "truncated" in _skip_reason(report, "cat/truncated.jpg")
    assert "empty file" in _skip_reason(report, "cat/zero.jpg")
    assert "not an image" in _skip_reason(report, "cat/notes.jpg")
    assert "hidden" in _skip_reason(report, "cat/.DS_Store")
    assert not {"cat/truncated.jpg", "cat/zero.jpg", "cat/notes.jpg"} & _used(data)
    assert report["num_skipped"] == len(report["skipped"])


def test_decompression_bomb_is_refused_from_its_header(messy):
    _root, _rd, data, report = messy
    # the same wording whichever check fires (ours or Pillow's), so a resumed run reports the same
    assert _skip_reason(report, "cat/bomb.png") == "decompression bomb refused (100000000 pixels > 89478485)"
    assert "cat/bomb.png" not in _used(data)


def test_every_common_format_is_read(messy):
    _root, _rd, data, report = messy
    used = _used(data)
    for key in ("dog/photo.webp", "dog/photo.bmp", "dog/photo.tiff", "dog/animated.gif", "cat/no_extension"):
        assert key in used, key
    assert "no file extension: read as PNG" in _fixes(report, "cat/no_extension")
    assert report["in_chans"] == 3


def test_animated_gif_uses_its_first_frame(messy):
    _root, _rd, data, report = messy
    assert "animated (3 frames): first frame used" in _fixes(report, "dog/animated.gif")
    px = _pixels(data, "dog/animated.gif").reshape(-1, 3).mean(axis=0)
    assert px[0] > 150 and px[2] < 100, px  # red, the first frame, not the blue last one


def test_odd_modes_are_converted(messy):
    _root, _rd, data, report = messy
    assert any("16-bit" in f for f in _fixes(report, "cat/deep16.png"))
    assert _pixels(data, "cat/deep16.png").min() >= 250  # 65535 is white, not clipped to 255 of 65535
    assert "transparency composited on white" in _fixes(report, "dog/transparent.png")
    assert _pixels(data, "dog/transparent.png").min() >= 250
    assert "palette image converted" in _fixes(report, "dog/palette.png")
    assert "CMYK converted to RGB" in _fixes(report, "cat/cmyk.jpg")
    r, g, b = _pixels(data, "cat/cmyk.jpg").reshape(-1, 3).mean(axis=0)
    assert r > 200 and g < 60 and b < 60, (r, g, b)


def test_exif_orientation_is_applied_to_the_pixels(messy):
    _root, _rd, data, report = messy
    assert "EXIF orientation 6 applied to the pixels" in _fixes(report, "cat/rotated.jpg")
    px = _pixels(data, "cat/rotated.jpg").astype(int)
    top, bottom = px[:6].reshape(-1, 3).mean(axis=0), px[-6:].reshape(-1, 3).mean(axis=0)
    assert top[0] > 150 and top[2] < 100, top  # red on top once rotated
    assert bottom[2] > 150 and bottom[0] < 100, bottom
    left = px[:, :6].reshape(-1, 3).mean(axis=0)
    assert not (left[0] > 150 and left[2] < 100)  # the un-rotated layout (red on the left) is gone


def test_one_pixel_and_very_large_images(messy):
    _root, _rd, data, report = messy
    assert "tiny (1x1): upscaled" in _fixes(report, "cat/one_pixel.png")
    assert tuple(_pixels(data, "cat/one_pixel.png")[8, 8]) == RED
    assert "very large (6000x4000): decoded at reduced scale (JPEG draft mode)" in _fixes(report, "dog/huge.jpg")
    row = _pixels(data, "dog/huge.jpg")[8, :, 0].astype(int)
    assert row[0] < 40 and row[-1] > 215  # the gradient survives the reduced decode


def test_very_large_jpeg_is_never_fully_decoded(messy):
    """Decoding the 6000x4000 photo must stay far below its 72 MB of full-size pixels."""
    root, *_ = messy
    # VmHWM is this process's peak resident memory (ru_maxrss would include the parent's, across exec)
    code = (
        "import re, sys\n"
        "from automl_vision.data.images import decode\n"
        "def peak():\n"
        "    return int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))\n"
        "before = peak()\n"
        "arr = decode(sys.argv[1], 64, 3)\n"
        "print(arr.shape, (peak() - before) // 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(root / "dog" / "huge.jpg")], capture_output=True, text=True,
                         check=True).stdout.split()
    grown_mb = int(out[-1])
    assert out[0].startswith("(64,")
    assert grown_mb < 30, f"decoding the large JPEG grew the process by {grown_mb} MB"


def test_symlinks_inside_followed_outside_refused(messy):
    _root, _rd, data, report = messy
    assert "cat/alias.jpg" in _used(data)
    assert "symlink followed: cat/alias.jpg" in report["notes"]
    assert "outside the data folder" in _skip_reason(report, "cat/outside.png")
    assert "outside the data folder" in _skip_reason(report, "dog/linked_folder")
    assert "broken symlink" in _skip_reason(report, "dog/dangling.png")
    assert not any("secret" in k for k in _used(data))


def test_empty_class_folder_is_dropped_and_reported(messy):
    _root, _rd, data, report = messy
    assert data.classes == ["cat", "dog"]
    assert report["classes"] == ["cat", "dog"]
    assert report["dropped_classes"] == [{"class": "empty", "reason": "no usable image in its folder"}]
    assert any("empty" in w for w in report["warnings"])
    assert set(data.labels.tolist()) == {0, 1}


def test_resume_reuses_the_cache_and_remembers_broken_files(messy, monkeypatch):
    """A second prepare (a resumed search) decodes nothing again and reports the same."""
    root, run_dir, data, report = messy
    from automl_vision.data import cache

    def no_decoding(*a, **k):
        raise AssertionError("the cache was rebuilt although no source changed")

    monkeypatch.setattr(cache, "_decode_one", no_decoding)
    again = prepare(load_image_folder(str(root)), run_dir, image_size=16, seed=0)
    assert [s.key for s in again.samples] == [s.key for s in data.samples]
    again_report = json.loads(run_dir.data_report.read_text())
    assert sorted(map(str, again_report["skipped"])) == sorted(map(str, report["skipped"]))


def test_duplicates_across_splits_are_reported(tmp_path):
    root = tmp_path / "presplit"
    for s, split in enumerate(("train", "val")):
        for c, (cls, colour) in enumerate((("a", RED), ("b", BLUE))):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(3):  # a distinct seed per photo: only the copy below is a duplicate
                _noise(100 * s + 10 * c + i, colour=colour).save(d / f"{i}.png")
    # the same photo saved in train/ and val/ under different names
    (root / "val" / "a" / "copy_of_train_0.png").write_bytes((root / "train" / "a" / "0.png").read_bytes())
    run_dir = RunDir(tmp_path / "run")
    prepare(load_image_folder(str(root)), run_dir, image_size=16)
    report = json.loads(run_dir.data_report.read_text())
    leaks = [d for d in report["duplicates"] if d["leak"]]
    assert leaks == [{"files": ["train/a/0.png", "val/a/copy_of_train_0.png"], "splits": ["train", "val"],
                      "classes": ["a"], "leak": True}]
    assert any("more than one split" in w for w in report["warnings"])
    assert report["split_source"] == "fixed by the data"


def test_identical_files_in_a_class_folder_stay_in_one_split(tmp_path):
    """A photo saved twice ("cat.4220.jpg", "cat.4220(1).jpg") is never in training and in
    validation or test at once when automl-vision makes the split: validation stays honest."""
    root = tmp_path / "copies"
    for c, (cls, colour) in enumerate((("a", RED), ("b", BLUE))):
        d = root / cls
        d.mkdir(parents=True)
        for i in range(20):  # a distinct seed per photo: only the copies below are duplicates
            _noise(100 * c + i, colour=colour).save(d / f"{i}.png")
        for i in range(8):  # eight photos of each class saved twice, one three times
            (d / f"{i} (1).png").write_bytes((d / f"{i}.png").read_bytes())
        (d / "0 (2).png").write_bytes((d / "0.png").read_bytes())
    run_dir = RunDir(tmp_path / "run")
    said = []
    data = prepare(load_image_folder(str(root)), run_dir, image_size=16, log=said.append)
    assert "note: 16 group(s) of identical files, each kept in one split (listed in data_report.json)" in said
    report = json.loads(run_dir.data_report.read_text())
    assert len(report["duplicates"]) == 16 and not any(d["leak"] for d in report["duplicates"])
    assert not any("more than one split" in w for w in report["warnings"])
    split_of = {data.samples[i].key: name for name, idx in data.split_index.items() for i in idx}
    for cls in ("a", "b"):
        for i in range(8):
            copies = {split_of[f"{cls}/{i}.png"], split_of[f"{cls}/{i} (1).png"]}
            assert len(copies) == 1, (cls, i, copies)
    sizes = {name: len(idx) for name, idx in data.split_index.items()}
    assert sizes["val"] >= 4 and sizes["test"] >= 4 and sum(sizes.values()) == 58  # still about 70/15/15


def test_extreme_imbalance_keeps_every_class_in_validation(tmp_path):
    root = tmp_path / "imbalanced"
    for cls, n, colour in (("common", 60, RED), ("rare", 3, BLUE)):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            _noise(i + (0 if cls == "common" else 500), colour=colour).save(root / cls / f"{i}.png")
    run_dir = RunDir(tmp_path / "run")
    data = prepare(load_image_folder(str(root)), run_dir, image_size=16, seed=3)
    report = json.loads(run_dir.data_report.read_text())
    assert report["counts"]["val"]["rare"] >= 1 and report["counts"]["train"]["rare"] >= 1
    assert any("extreme class imbalance" in w for w in report["warnings"])
    assert sum(report["counts"]["val"].values()) == len(data.split_index["val"])
    # class-weighted loss is a searched choice, so the search can fix the imbalance itself
    from automl_vision.search import space

    assert "class_weighting" in Path(space.__file__).read_text()


def test_a_class_with_a_single_image_is_a_clear_error(tmp_path):
    root = tmp_path / "single"
    for cls, n in (("many", 6), ("lonely", 1)):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            _noise(i).save(root / cls / f"{i}.png")
    with pytest.raises(DataError, match="lonely have a single usable image"):
        prepare(load_image_folder(str(root)), RunDir(tmp_path / "run"), image_size=16)


def test_symlink_loop_does_not_hang(tmp_path):
    root = tmp_path / "loop"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(2):
            _noise(i).save(root / cls / f"{i}.png")
    (root / "a" / "again").symlink_to(root / "a", target_is_directory=True)
    ds = load_image_folder(str(root))
    assert sorted(s.key for s in ds.samples if s.label == 0) == ["a/0.png", "a/1.png"]
    assert any(s["reason"].startswith("symlink loop") for s in ds.skipped)


def test_decode_rejects_garbage_with_imagedecodeerror(tmp_path):
    from automl_vision.data.images import ImageDecodeError

    p = tmp_path / "x.png"
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    with pytest.raises(ImageDecodeError):
        decode(p, 16, 3)


def test_search_runs_end_to_end_on_the_messy_folder(messy, tmp_path):
    root, *_ = messy
    out = tmp_path / "run"
    proc = run_cli("search", root, "--out", out, *TINY)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    report = json.loads((out / "data_report.json").read_text())
    assert report["classes"] == ["cat", "dog"]
    assert "skipped (see data_report.json)" in proc.stdout + proc.stderr
    assert "warning: class folder(s) with no usable image" in proc.stdout + proc.stderr


def test_a_joining_worker_sees_the_same_labels_after_a_class_is_dropped(tmp_path):
    """The empty class sorts first, so dropping it shifts every label: a worker must agree."""
    from automl_vision.data.prepare import reload_prepared
    from automl_vision.plugins import get_plugin_manager

    root = tmp_path / "data"
    (root / "aaa_empty").mkdir(parents=True)
    for cls, colour in (("cat", RED), ("dog", BLUE)):
        (root / cls).mkdir()
        for i in range(4):
            _noise(i, colour=colour).save(root / cls / f"{i}.png")
    run_dir = RunDir(tmp_path / "run")
    data = prepare(load_image_folder(str(root)), run_dir, image_size=16)
    assert data.classes == ["cat", "dog"]
    joined = reload_prepared(run_dir, get_plugin_manager(), location=str(root))  # a worker, or `ensemble`
    assert joined.classes == data.classes
    assert [s.key for s in joined.samples] == [s.key for s in data.samples]
    assert joined.labels.tolist() == data.labels.tolist()
