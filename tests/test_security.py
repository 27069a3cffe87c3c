"""Untrusted files: checkpoints, run directories, CSV manifests, plugins, storage URLs.

A run directory may come from someone else (shared, downloaded, edited): opening it
must never run code, and anything that is not what automl-vision wrote is refused with
a clear error.
"""

from __future__ import annotations

import io
import pickle
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from automl_vision import cli
from automl_vision.builtin.csv_manifest import load_csv_manifest
from automl_vision.models import load_model
from automl_vision.rundir import RunDir, TamperedCheckpointError, TamperedFileError
from automl_vision.types import UsageError
from conftest import ROOT, TINY, run_cli


class _Payload:
    """Unpickling this creates the marker file: what a malicious checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _malicious_pickle(marker: Path) -> bytes:
    return pickle.dumps({"conv.weight": _Payload(marker)})


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> RunDir:
    dst = tmp_path / "copy"
    shutil.copytree(tiny_run, dst)
    return RunDir(dst)


def _a_complete_trial(rd: RunDir) -> Path:
    for rec in rd.iter_trials():
        if rec.get("state") == "COMPLETE":
            return rd.trial_dir(rec["number"])
    raise AssertionError("the tiny run has no complete trial")


def test_the_payload_is_live(tmp_path):
    """The malicious file used below really runs code when unpickled (so the tests can fail)."""
    marker = tmp_path / "pwned"
    (tmp_path / "evil.pkl").write_bytes(_malicious_pickle(marker))
    pickle.loads((tmp_path / "evil.pkl").read_bytes())
    assert marker.exists()


def test_pickled_weights_are_refused_and_never_unpickled(run_copy, tmp_path):
    tdir = _a_complete_trial(run_copy)
    marker = tmp_path / "pwned"
    (tdir / "weights.safetensors").write_bytes(_malicious_pickle(marker))
    with pytest.raises(TamperedCheckpointError, match="never unpickles|changed since it was saved"):
        load_model(tdir)
    # the same file without the recorded digest: refused as not-safetensors, still never unpickled
    spec = (tdir / "model.json").read_text()
    (tdir / "model.json").write_text(re.sub(r'"weights_sha256": "[0-9a-f]+"', '"weights_sha256": null', spec))
    with pytest.raises(TamperedCheckpointError, match="not a valid safetensors"):
        load_model(tdir)
    assert not marker.exists()


def test_pickled_arrays_in_a_run_directory_are_refused(run_copy, tmp_path):
    tdir = _a_complete_trial(run_copy)
    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    np.save(buf, np.array([_Payload(marker)], dtype=object), allow_pickle=True)
    (tdir / "val_probs.npy").write_bytes(buf.getvalue())
    with pytest.raises(TamperedFileError, match="never unpickles"):
        run_copy.read_val_probs(int(tdir.name))
    assert not marker.exists()


def test_edited_weights_are_refused_with_a_clear_error(run_copy):
    tdir = _a_complete_trial(run_copy)
    data = bytearray((tdir / "weights.safetensors").read_bytes())
    data[-5] ^= 0xFF  # one weight changed: still valid safetensors, but not what was saved
    (tdir / "weights.safetensors").write_bytes(bytes(data))
    with pytest.raises(TamperedCheckpointError, match="changed since it was saved"):
        load_model(tdir)
    (tdir / "weights.safetensors").write_bytes(bytes(data[: len(data) // 2]))  # truncated
    with pytest.raises(TamperedCheckpointError):
        load_model(tdir)
    assert issubclass(TamperedCheckpointError, UsageError)  # the CLI prints it, no traceback


def test_predict_with_a_tampered_deliverable_exits_2(run_copy, tmp_path, capsys):
    best = run_copy.best_dir / "weights.safetensors"
    best.write_bytes(_malicious_pickle(tmp_path / "pwned"))
    img = tmp_path / "x.png"
    Image.new("L", (8, 8), 128).save(img)
    code = cli.main(["predict", str(run_copy.path), str(img), "--model", "best", "--out", str(tmp_path / "p.csv")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "weights.safetensors" in err and "Traceback" not in err
    assert not (tmp_path / "pwned").exists()


def test_no_code_path_unpickles():
    """No reader in the package may use pickle: a guard against a future shortcut."""
    offenders = []
    for path in list((ROOT / "automl_vision").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        for pattern in (r"pickle\.loads?\(", r"allow_pickle\s*=\s*True", r"torch\.load\((?![^)]*weights_only\s*=\s*True)",
                        r"joblib\.load\(", r"dill\.", r"cloudpickle"):
            for m in re.finditer(pattern, text):
                offenders.append(f"{path.relative_to(ROOT)}:{text[: m.start()].count(chr(10)) + 1}: {m.group(0)}")
    assert offenders == []


def test_csv_manifest_paths_cannot_escape_their_root(tmp_path):
    root = tmp_path / "data"
    (root / "img").mkdir(parents=True)
    outside = tmp_path / "private"
    outside.mkdir()
    for p in (root / "img" / "a.png", root / "img" / "b.png", outside / "secret.png"):
        Image.new("RGB", (8, 8)).save(p)
    (root / "img" / "sneaky.png").symlink_to(outside / "secret.png")
    (root / "labels.csv").write_text(
        "path,label\n"
        "img/a.png,x\n"
        "img/../img/b.png,y\n"  # stays inside: fine
        "../private/secret.png,x\n"
        f"{outside / 'secret.png'},y\n"
        "img/sneaky.png,x\n"
        "/etc/passwd,y\n"
    )
    ds = load_csv_manifest(str(root / "labels.csv"))
    assert sorted(s.key for s in ds.samples) == ["img/../img/b.png", "img/a.png"]
    refused = {s["path"]: s["reason"] for s in ds.skipped}
    for raw in ("../private/secret.png", str(outside / "secret.png"), "img/sneaky.png", "/etc/passwd"):
        assert "escapes the manifest's root" in refused[raw], raw
    assert all(str(s.path).startswith(str(root.resolve())) for s in ds.samples)


def test_plugins_come_only_from_entry_points_or_names_given(tmp_path, monkeypatch):
    """A module lying in the current directory is never imported unless the user names it."""
    marker = tmp_path / "imported"
    (tmp_path / "automl_vision_sidecar.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).touch()\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("AUTOML_VISION_PLUGINS", raising=False)
    from automl_vision.plugins import PluginManager

    pm = PluginManager().load(entry_points=True)
    assert not marker.exists()
    assert "automl_vision_sidecar" not in sys.modules
    assert all(p.origin in ("builtin", "entrypoint") for p in pm.plugins.values())
    PluginManager().load(["automl_vision_sidecar"], entry_points=False)  # named: loaded
    assert marker.exists()
    sys.modules.pop("automl_vision_sidecar", None)


def test_storage_password_is_never_printed_or_stored(digits_dir, tmp_path):
    secret = "s3cret-Passw0rd"
    out = tmp_path / "run"
    url = f"postgresql://automl:{secret}@127.0.0.1:9/automl"  # nothing listens on port 9
    proc = run_cli("search", digits_dir, "--out", out, *TINY, "--storage", url)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert "cannot open the storage" in proc.stderr
    assert secret not in proc.stdout + proc.stderr
    assert "automl:***@127.0.0.1" in proc.stderr
    leaked = [str(p) for p in out.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert leaked == []
    assert (out / "run.json").exists()  # the run directory was written, without the password
