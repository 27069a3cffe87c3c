"""Bad input on the command line: exit status 2, one clear message on stderr, no traceback.

Option errors run the real ``automl-vision`` command as a subprocess, as a user would;
the data errors call the same ``cli.main`` in this process, which saves importing
PyTorch once per case (an uncaught exception would fail the test just the same).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from automl_vision import cli
from conftest import run_cli

SEARCH = ["--n-trials", "1", "--max-epochs", "1", "--image-size", "16", "--models", "cnn", "--plain"]


def _images(folder: Path, n: int, seed: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(folder / f"{i}.png")


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("good") / "data"
    _images(root / "a", 6, 1)
    _images(root / "b", 6, 2)
    return root


class Result:
    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def main(capsys, monkeypatch):
    """``automl-vision ARGS`` through ``cli.main`` in this process."""
    monkeypatch.setenv("AUTOML_VISION_DISABLE_ENTRYPOINTS", "1")

    def call(*args) -> Result:
        capsys.readouterr()
        code = cli.main([str(a) for a in args])
        out = capsys.readouterr()
        return Result(code, out.out, out.err)

    return call


def _usage_error(proc, *needles: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    err = proc.stderr.strip()
    assert err, "no message on stderr"
    for needle in needles:
        assert needle in err, f"{needle!r} not in: {err}"
    return err


def test_missing_data_dir(tmp_path):
    proc = run_cli("search", tmp_path / "nowhere", "--out", tmp_path / "run", *SEARCH)
    _usage_error(proc, "nowhere", "does not exist")
    assert not (tmp_path / "run").exists()  # nothing is created for a mistyped path


def test_folder_without_any_image(main, tmp_path):
    (tmp_path / "data" / "a").mkdir(parents=True)
    (tmp_path / "data" / "b").mkdir(parents=True)
    proc = main("search", tmp_path / "data", "--out", tmp_path / "run", *SEARCH)
    _usage_error(proc, "no image found", "one folder per class")


def test_folder_of_files_that_are_not_images(main, tmp_path):
    for cls in ("a", "b"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        (tmp_path / "data" / cls / "readme.jpg").write_text("not a picture")
    proc = main("search", tmp_path / "data", "--out", tmp_path / "run", *SEARCH)
    _usage_error(proc, "none of the 2 files", "data_report.json")
    report = (tmp_path / "run" / "data_report.json").read_text()
    assert "not an image" in report  # the user can see why each file was refused


def test_single_class(main, tmp_path):
    _images(tmp_path / "data" / "only", 5)
    proc = main("search", tmp_path / "data", "--out", tmp_path / "run", *SEARCH)
    _usage_error(proc, "one class", "at least two")


def test_a_split_missing_a_class(main, tmp_path):
    root = tmp_path / "data"
    for cls in ("a", "b"):
        _images(root / "train" / cls, 4)
    _images(root / "val" / "a", 3)
    (root / "val" / "b").mkdir()
    proc = main("search", root, "--out", tmp_path / "run", *SEARCH)
    _usage_error(proc, "'val'", "b")


@pytest.mark.parametrize(
    "option, needles",
    [
        (["--pruner", "sometimes"], ["--pruner", "invalid choice", "hyperband"]),
        (["--precision", "fp8"], ["--precision", "invalid choice"]),
        (["--time-budget", "soon"], ["--time-budget", "invalid duration", "10m"]),
        (["--time-budget", "0s"], ["--time-budget", "more than zero"]),
        (["--n-trials", "-3"], ["--n-trials", "at least 1"]),
        (["--image-size", "huge"], ["--image-size", "pixels"]),
    ],
    ids=["pruner", "precision", "time-budget-word", "time-budget-zero", "n-trials", "image-size"],
)
def test_bad_option_values(good, tmp_path, option, needles):
    proc = run_cli("search", good, "--out", tmp_path / "run", *SEARCH, *option)
    _usage_error(proc, *needles)


def test_unknown_metric_names_the_close_ones(main, good, tmp_path):
    proc = main("search", good, "--out", tmp_path / "run", *SEARCH, "--metric", "acuracy")
    _usage_error(proc, "--metric", "acuracy", "accuracy")


def test_unknown_model_name(main, good, tmp_path):
    proc = main("search", good, "--out", tmp_path / "run", *[a for a in SEARCH if a != "cnn" and a != "--models"],
                   "--models", "notamodel")
    _usage_error(proc, "notamodel")


def test_unknown_option(good, tmp_path):
    proc = run_cli("search", good, "--out", tmp_path / "run", *SEARCH, "--epochs", "3")
    _usage_error(proc, "unrecognized arguments", "--epochs")
