"""The data scanner under hostile and careless input (issue #23): no file crashes a search,
symlink loops and labelling conflicts are caught, every entry is accounted for, odd pixel
formats keep their content, and a full disk while caching is one line, not a SIGBUS.

Every file is generated here with Pillow; nothing is downloaded.
"""

from __future__ import annotations

import errno
import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from automl_vision.builtin.csv_manifest import load_csv_manifest
from automl_vision.builtin.image_folder import load_image_folder
from automl_vision.data import cache
from automl_vision.data.images import ImageDecodeError, decode, inspect
from automl_vision.data.prepare import prepare
from automl_vision.rundir import RunDir
from automl_vision.types import DataError, Sample
from conftest import TINY, cli_env, run_cli

RED, BLUE = (220, 30, 30), (30, 30, 220)
CUTS = 40  # cut points per format in the decoder fuzz


def _noise(seed: int, colour=RED, size: int = 20) -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
    arr[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = colour
    return Image.fromarray(arr, "RGB")


def _class_folders(root: Path, n: int = 5, seed: int = 0) -> Path:
    """Two classes of ``n`` readable images each, all different (for different ``seed``s too)."""
    for cls, colour, base in (("a", RED, seed), ("b", BLUE, seed + 100)):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            _noise(base + i, colour).save(root / cls / f"{i}.png")
    return root


def _prepare(root: Path, run: Path, **kw):
    data = prepare(load_image_folder(str(root)), RunDir(run), image_size=16, **kw)
    return data, json.loads((run / "data_report.json").read_text())


def _reasons(report: dict) -> dict[str, str]:
    return {s["path"]: s["reason"] for s in report["skipped"]}


def _encoded() -> dict[str, bytes]:
    """Small real files in the formats whose truncation Pillow fails on in odd ways."""
    frames = [_noise(i, size=24) for i in range(4)]
    out = {}
    for name, fmt, kw in (
        ("animated.gif", "GIF", dict(save_all=True, append_images=frames[1:], duration=40)),
        ("pages.tiff", "TIFF", dict(save_all=True, append_images=frames[1:3], compression="tiff_deflate")),
        ("plain.png", "PNG", {}),
        ("photo.jpg", "JPEG", dict(quality=90)),
    ):
        buf = io.BytesIO()
        frames[0].save(buf, fmt, **kw)
        out[name] = buf.getvalue()
    return out


def test_decoder_fuzz_over_cut_points_never_crashes_the_scan(tmp_path):
    """A half-downloaded GIF, TIFF, PNG or JPEG cut at any byte is used or skipped with a reason."""
    root = _class_folders(tmp_path / "data")
    written = []
    for n, (name, data) in enumerate(_encoded().items()):
        folder = root / ("a" if n % 2 == 0 else "b")
        for cut in sorted(set(np.linspace(0, len(data), CUTS).astype(int).tolist())):
            path = folder / f"cut{cut:06d}_{name}"
            path.write_bytes(data[:cut])
            written.append(str(path.relative_to(root)))
    data, report = _prepare(root, tmp_path / "run")
    used, reasons = {s.key for s in data.samples}, _reasons(report)
    for key in written:
        assert (key in used) != (key in reasons), key  # exactly one of the two
        assert key in used or reasons[key], key
    assert {w for w in written if w.startswith("a/cut") and w.endswith(".gif")} & used  # the whole file reads
    # the exceptions that used to crash the search are named in the report
    named = " ".join(reasons.values())
    assert "IndexError" in named and "TypeError" in named, sorted(set(reasons.values()))


def test_any_decoder_exception_is_an_unreadable_file_but_ctrl_c_still_stops(tmp_path, monkeypatch):
    path = tmp_path / "x.png"
    _noise(0).save(path)
    for exc in (struct.error("unpack requires a buffer of 4 bytes"), KeyError(317), IndexError("list index")):
        def broken(*a, _exc=exc, **k):
            raise _exc

        monkeypatch.setattr(Image, "open", broken)
        for read in (lambda: inspect(path), lambda: decode(path, 16, 3)):
            with pytest.raises(ImageDecodeError, match=type(exc).__name__):
                read()

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(Image, "open", interrupted)
    with pytest.raises(KeyboardInterrupt):
        decode(path, 16, 3)


def test_a_link_to_the_data_folder_is_a_loop_not_a_relabelling(tmp_path):
    """``a/x -> ..`` used to relabel every image of every class as ``a``."""
    root = _class_folders(tmp_path / "data")
    (root / "a" / "x").symlink_to("..", target_is_directory=True)
    (root / "a" / "y").symlink_to("../b", target_is_directory=True)
    data, report = _prepare(root, tmp_path / "run")
    assert sorted(s.key for s in data.samples if data.classes[s.label] == "a") == [f"a/{i}.png" for i in range(5)]
    assert sorted(s.key for s in data.samples if data.classes[s.label] == "b") == [f"b/{i}.png" for i in range(5)]
    reasons = _reasons(report)
    assert reasons["a/x"] == "symlink loop (folder already read)"
    assert reasons["a/y"].startswith("symlink into another class folder")
    assert not report["duplicates"]


def test_a_link_up_from_a_presplit_class_is_a_loop(tmp_path):
    root = tmp_path / "data"
    for split in ("train", "val"):
        _class_folders(root / split, n=3 if split == "train" else 2)
    (root / "val" / "b" / "back").symlink_to("../../train", target_is_directory=True)
    (root / "train" / "a" / "up").symlink_to("../..", target_is_directory=True)
    ds = load_image_folder(str(root))
    assert all(s.key.count("/") == 2 for s in ds.samples), [s.key for s in ds.samples]
    reasons = {s["path"]: s["reason"] for s in ds.skipped}
    assert reasons["train/a/up"] == reasons["val/b/back"] == "symlink loop (folder already read)"


def test_identical_bytes_in_two_classes_are_a_labelling_conflict_even_in_one_split(tmp_path):
    root = tmp_path / "data"
    for seed, split in enumerate(("train", "val")):
        _class_folders(root / split, n=3, seed=1000 * seed)
    (root / "train" / "b" / "mislabelled.png").write_bytes((root / "train" / "a" / "0.png").read_bytes())
    data, report = _prepare(root, tmp_path / "run")
    [conflict] = [d for d in report["duplicates"] if len(d["classes"]) > 1]
    assert conflict == {"files": ["train/a/0.png", "train/b/mislabelled.png"], "splits": ["train"],
                        "classes": ["a", "b"], "leak": True}
    assert any(w.startswith("labelling conflict: 1 group(s) of identical images") for w in report["warnings"])


def _write_messy(root: Path) -> None:
    """A real user's folder: version control, macOS debris, links, loose and broken files."""
    _class_folders(root)
    (root / ".git" / "objects").mkdir(parents=True)
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (root / "__MACOSX" / "a").mkdir(parents=True)
    (root / "__MACOSX" / "a" / "._0.png").write_bytes(b"\x00\x05\x16\x07")
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "b" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "b" / ".thumbnails").mkdir()
    (root / "b" / ".thumbnails" / "0.png").write_bytes((root / "b" / "0.png").read_bytes())
    (root / "README.txt").write_text("images scraped on monday\n")
    (root / "gone.png").symlink_to(root / "nowhere.png")
    (root / "a" / "gone.png").symlink_to(root / "nowhere.png")
    (root / "a" / "alias.png").symlink_to("1.png")
    (root / "a" / "again").symlink_to("..", target_is_directory=True)
    (root / "a" / "truncated.png").write_bytes((root / "a" / "2.png").read_bytes()[:90])
    (root / "a" / "empty.png").write_bytes(b"")
    (root / "b" / "sub").mkdir()
    _noise(7, BLUE).save(root / "b" / "sub" / "nested.png")
    os.mkfifo(root / "b" / "pipe")


def _entries(root: Path) -> list[str]:
    """Every entry a user sees in the folder, counted once: files, links, and folders that
    are not read (hidden ones and links to folders, whose contents are not entries)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        for d in list(dirnames):
            p = here / d
            if d.startswith(".") or d == "__MACOSX" or p.is_symlink():
                out.append(str(p.relative_to(root)))
                dirnames.remove(d)
        out += [str((here / f).relative_to(root)) for f in filenames]
    return sorted(out)


def test_every_entry_of_a_messy_folder_is_used_or_skipped_with_a_reason(tmp_path):
    root = tmp_path / "data"
    _write_messy(root)
    data, report = _prepare(root, tmp_path / "run")
    used = [s.key for s in data.samples]
    skipped = [s["path"] for s in report["skipped"]]
    assert sorted(used + skipped) == _entries(root)  # counts in = used + skipped, nothing counted twice
    assert report["num_images"] + report["num_skipped"] == len(_entries(root))
    reasons = _reasons(report)
    assert reasons[".git"] == reasons["__MACOSX"] == reasons["b/.thumbnails"] == "hidden folder"
    assert reasons[".DS_Store"] == reasons["b/.DS_Store"] == "hidden or system file"
    assert reasons["gone.png"].startswith("broken symlink") and reasons["a/gone.png"].startswith("broken symlink")
    assert reasons["README.txt"] == "file at the top level, outside any class folder"
    assert reasons["b/pipe"] == "not a regular file"
    assert reasons["a/again"] == "symlink loop (folder already read)"
    assert "b/sub/nested.png" in used and "a/alias.png" in used


def test_val_and_validation_together_are_refused_in_one_line(tmp_path):
    root = tmp_path / "data"
    for split in ("train", "val", "validation"):
        _class_folders(root / split, n=2)
    with pytest.raises(DataError, match=r"both val/ and validation/ are there"):
        load_image_folder(str(root))
    proc = run_cli("search", root, "--out", tmp_path / "run", *TINY, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert "val/ and validation/" in proc.stderr and str(root) in proc.stderr


def test_a_folder_beside_the_splits_is_reported(tmp_path):
    root = tmp_path / "data"
    for split in ("train", "val", "extra"):
        _class_folders(root / split, n=2)
    ds = load_image_folder(str(root))
    assert {s["path"]: s["reason"] for s in ds.skipped}["extra"].startswith("folder beside train/ and val/")
    assert not any(s.key.startswith("extra/") for s in ds.samples)


def test_a_csv_naming_a_file_twice_with_two_labels_is_a_conflict_in_one_split(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    rows = ["path,label"]
    for i in range(12):
        _noise(i, RED if i % 2 else BLUE).save(root / f"{i}.png")
        rows.append(f"images/{i}.png,{'red' if i % 2 else 'blue'}")
    rows += ["images/3.png,blue", "./images/5.png,red"]  # 3 is red above; 5 is listed again as red
    manifest = tmp_path / "labels.csv"
    manifest.write_text("\n".join(rows) + "\n")

    data = prepare(load_csv_manifest(str(manifest)), RunDir(tmp_path / "run"), image_size=16, seed=4)
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    keys = [s.key for s in data.samples]
    assert sorted(keys) == sorted(f"images/{i}.png" for i in range(12))  # each file once, first label
    assert data.classes[data.samples[keys.index("images/3.png")].label] == "red"
    reasons = _reasons(report)
    assert reasons["images/3.png (line 14)"] == "labelling conflict: line 14 labels it 'blue', line 5 'red'; line 5 is used"
    assert reasons["./images/5.png (line 15)"].startswith("listed again at line 15")
    assert any(w.startswith("labelling conflict: 1 file(s) listed again") for w in report["warnings"])

    def split_of(d):
        return {d.samples[i].key: name for name, idx in d.split_index.items() for i in idx}

    # the same CSV gives the same split: on resume, and in a fresh run with the same seed
    again = prepare(load_csv_manifest(str(manifest)), RunDir(tmp_path / "run"), image_size=16, seed=4)
    fresh = prepare(load_csv_manifest(str(manifest)), RunDir(tmp_path / "fresh"), image_size=16, seed=4)
    assert split_of(again) == split_of(data) == split_of(fresh)


def test_a_float_tiff_in_0_1_keeps_its_content_and_says_how(tmp_path):
    ramp = np.tile(np.linspace(0, 1, 32, dtype=np.float32), (32, 1))
    Image.fromarray(ramp, "F").save(tmp_path / "unit.tiff")
    Image.fromarray(ramp * 10 - 5, "F").save(tmp_path / "signed.tiff")
    assert "float image with values in 0..1 scaled x255 to 8 bits" in inspect(tmp_path / "unit.tiff").fixes()
    assert "float image with values in -5..5 stretched to 8 bits" in inspect(tmp_path / "signed.tiff").fixes()
    for name in ("unit.tiff", "signed.tiff"):
        row = decode(tmp_path / name, 16, 1)[8, :, 0].astype(int)
        assert row[0] <= 10 and row[-1] >= 245 and np.all(np.diff(row) >= 0), (name, row)


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width x height`` RGB pixels with a few bytes of image data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 40, 9))
            + chunk(b"IEND", b""))


def test_a_tiny_png_declaring_one_line_of_20_million_pixels_is_refused_from_its_header(tmp_path):
    root = _class_folders(tmp_path / "data")
    (root / "a" / "line.png").write_bytes(_png_header(1, 20_000_000))
    assert (root / "a" / "line.png").stat().st_size < 100
    expected = "decompression bomb refused (1x20000000: a side longer than 65535 pixels)"
    with pytest.raises(ImageDecodeError, match=r"^decompression bomb refused \(1x20000000"):
        decode(root / "a" / "line.png", 16, 3)
    _data, report = _prepare(root, tmp_path / "run")
    assert _reasons(report)["a/line.png"] == expected


def _samples(root: Path) -> list[Sample]:
    return [Sample(key=p.name, label=0, path=p) for p in sorted(root.rglob("*.png"))]


def test_a_full_disk_while_caching_is_an_oserror_naming_the_file_and_leaves_no_tmp(tmp_path, monkeypatch):
    samples = _samples(_class_folders(tmp_path / "data"))
    directory = tmp_path / "run" / "cache" / "16px_3ch"

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(OSError) as caught:
        cache.load_or_build(samples, directory, 16, 3)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(directory / "images.npy.tmp")
    assert not list(directory.glob("*.tmp"))
    monkeypatch.undo()  # space freed: the same call builds the cache
    arr, failures = cache.load_or_build(samples, directory, 16, 3)
    assert arr.shape == (10, 16, 16, 3) and not failures and arr.max() > 0


def test_a_file_size_limit_makes_the_cache_fail_cleanly_instead_of_a_signal(tmp_path):
    """Real writes refused by the kernel (RLIMIT_FSIZE, no root needed): an OSError, never a signal."""
    _class_folders(tmp_path / "data")
    code = (
        "import resource, signal, sys\n"
        "from pathlib import Path\n"
        "from automl_vision.data import cache\n"
        "from automl_vision.types import Sample\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (16384, 16384))\n"
        "samples = [Sample(key=p.name, label=0, path=p) for p in sorted(Path(sys.argv[1]).rglob('*.png'))]\n"
        "try:\n"
        "    cache.load_or_build(samples, Path(sys.argv[2]), 64, 3)\n"
        "except OSError as exc:\n"
        "    print('refused', exc.errno, exc.filename)\n"
    )
    directory = tmp_path / "cache"
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "data"), str(directory)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["refused", str(errno.EFBIG), str(directory / "images.npy.tmp")]
    assert not list(directory.glob("*.tmp"))


def test_leftover_tmp_files_of_a_dead_process_are_removed_on_the_next_start(tmp_path):
    samples = _samples(_class_folders(tmp_path / "data"))
    directory = tmp_path / "cache"
    directory.mkdir()
    for name in ("images.npy.tmp", "subset-0123456789abcdef.npy.tmp"):
        (directory / name).write_bytes(b"\x00" * 4096)  # a killed build's half-written files
    cache.load_or_build(samples, directory, 16, 3)
    assert not list(directory.glob("*.tmp"))
    assert (directory / "images.npy").exists() and (directory / "manifest.json").exists()


def test_a_full_disk_while_caching_is_one_line_from_the_command_line(tmp_path, digits_dir):
    out = tmp_path / "run"
    code = (
        "import errno, os, sys\n"
        "def full(fd, offset, length):\n"
        "    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n"
        "os.posix_fallocate = full\n"
        "from automl_vision.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, "search", str(digits_dir), "--out", str(out), *TINY],
                          capture_output=True, text=True, timeout=300, env=cli_env())
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    [line] = [ln for ln in proc.stderr.splitlines() if "error" in ln]
    assert line.startswith("automl-vision search: error: the disk is full while writing ")
    assert "images.npy.tmp" in line and "run the same command again" in line
    assert not list(out.rglob("*.tmp"))
