"""The plugin distributions in ``plugins/`` installed with pip, as a user installs them.

A fresh virtual environment gets automl-vision from (a copy of) the working tree and
the plugin distributions, each with ``pip install``; it sees the heavy dependencies
(torch, timm, optuna, ...) of the project's environment through a ``.pth`` file, so
nothing is downloaded (``--no-index``). automl-vision itself and the plugins are hidden
from that shared view, so what the tests find can only come from the pip installs and
the entry points those declare.
"""

from __future__ import annotations

import csv
import json
import subprocess
import time

import numpy as np
import pytest
from venvkit import DASHBOARD_CHECK, ROOT, install_fresh
from venvkit import run as _run

DISTS = {
    "automl-vision-digits": "automl_vision_digits",
    "automl-vision-mixer": "automl_vision_mixer",
    "automl-vision-csvlog": "automl_vision_csvlog",
}
# a test-only distribution (not an example): its source, family and metric go through every command
PROBE = ROOT / "tests" / "plugin_probe"


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """A fresh venv with automl-vision and the three plugin distributions pip-installed."""
    return install_fresh(tmp_path_factory.mktemp("plugin-venv"), [ROOT / "plugins" / name for name in DISTS] + [PROBE])


def test_plugins_are_installed_and_found_through_their_entry_points(venv):
    where = _run([venv["python"], "-c", "import automl_vision, automl_vision_mixer; "
                  "print(automl_vision.__file__); print(automl_vision_mixer.__file__)"],
                 cwd=venv["base"], env=venv["env"]).stdout.split()
    assert all(path.startswith(str(venv["dir"])) for path in where), where  # the installed copies, not the tree

    proc = _run([venv["bin"] / "automl-vision", "plugins", "--json"], cwd=venv["base"], env=venv["env"])
    plugins = {p["name"]: p for p in json.loads(proc.stdout)["plugins"]}
    for name, dist, registered in (
        ("digits", "automl-vision-digits", {"datasets": ["digits", "npz"]}),
        ("mixer", "automl-vision-mixer", {"model_families": ["mixer"], "metrics": ["mcc", "cohen_kappa"]}),
        ("csvlog", "automl-vision-csvlog", {}),
    ):
        p = plugins[name]
        assert (p["origin"], p["distribution"], p["version"], p["status"]) == ("entrypoint", dist, "0.1.0", "ok"), p
        assert p["registered"] == registered
    assert plugins["csvlog"]["hooks"] == ["on_search_end", "on_trial_end"]
    assert [p["origin"] for p in plugins.values()][:5] == ["builtin"] * 5  # built-ins first


def test_search_uses_the_installed_dataset_family_and_metric(venv):
    out = venv["base"] / "run"
    proc = _run([venv["bin"] / "automl-vision", "search", "digits:12", "--models", "mixer", "--metric", "mcc",
                 "--n-trials", "2", "--max-epochs", "1", "--image-size", "16", "--out", out, "--plain",
                 "--precision", "fp32", "--channels-last", "off"],
                cwd=venv["base"], env=venv["env"], timeout=300)
    assert "is broken" not in proc.stderr, proc.stderr
    with open(out / "leaderboard.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 and {r["family"] for r in rows} == {"mixer"}
    assert all(r["model"].split()[0] in ("mixer", "poolmixer") for r in rows)
    done = [r for r in rows if r["state"] == "COMPLETE"]
    assert done and all(r["val_mcc"] != "" and r["val_cohen_kappa"] != "" for r in done)
    assert float(done[0]["value"]) == pytest.approx(float(done[0]["val_mcc"]))

    run = json.loads((out / "run.json").read_text())
    assert run["data"]["classes"] == [str(i) for i in range(10)] and run["data"]["root"].startswith("digits:")
    assert {"digits", "mixer", "csvlog"} <= set(run["plugins"])
    report = json.loads((out / "final" / "report.json").read_text())
    assert report["metric"] == "mcc" and "mcc" in report["best_val"]
    # the tracking plugin saw every trial through on_trial_end, and the end
    with open(out / "csvlog" / "trials.csv", newline="") as fh:
        logged = list(csv.DictReader(fh))
    assert sorted(r["number"] for r in logged) == ["0", "1"] and "val_mcc" in logged[0]
    assert json.loads((out / "csvlog" / "trials.summary.json").read_text())["metric"] == "mcc"


@pytest.mark.slow
def test_each_distribution_passes_its_own_tests_against_the_installed_packages(venv):
    for name in DISTS:
        tests = venv["sources"] / name / "tests"
        _run([venv["python"], "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tests)],
             cwd=venv["sources"] / name, env=venv["env"], timeout=300)




def test_a_probe_distribution_goes_through_every_command(venv, tmp_path):
    """A pip-installed plugin's dataset source (root = a .npz file), family and metric:
    search -> ensemble --refit -> predict -> export -> dashboard, from other folders."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    data_dir, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    data_dir.mkdir()
    elsewhere.mkdir()
    images = (digits.images[:400] * 16).astype(np.uint8)
    np.savez(data_dir / "probe.npz", images=images, labels=digits.target[:400])
    cli, env = venv["bin"] / "automl-vision", venv["env"]
    out = tmp_path / "run"
    _run([cli, "search", "probe:probe.npz", "--models", "probenet", "--metric", "top2", "--n-trials", "3",
          "--max-epochs", "3", "--image-size", "16", "--out", out, "--plain"], cwd=data_dir, env=env, timeout=600)
    report = json.loads((out / "final" / "report.json").read_text())
    assert report["metric"] == "top2" and "best_trial" in report and 0 <= report["best_val"]["top2"] <= 1
    space = json.loads(_run([cli, "space", "show", "--json", "--models", "probenet"], cwd=elsewhere, env=env).stdout)
    assert space["parameters"]["probenet.dropout"]["condition"] == {"probenet.hidden": [1, 2]}

    _run([cli, "ensemble", out, "--refit"], cwd=elsewhere, env=env, timeout=600)  # re-reads probe:, not root
    assert (out / "refit").is_dir()
    photos = elsewhere / "photos"
    photos.mkdir()
    for i in range(5):
        Image.fromarray(images[i]).save(photos / f"{i}.png")
    _run([cli, "predict", out, photos, "--out", elsewhere / "pred.csv"], cwd=elsewhere, env=env)
    with open(elsewhere / "pred.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 5 and all(r["prediction"] in [str(c) for c in range(10)] for r in rows), rows
    _run([cli, "export", out, "--format", "torchscript", "--out", elsewhere / "model.pt"], cwd=elsewhere, env=env)
    meta = json.loads((elsewhere / "model.pt.preprocessing.json").read_text())
    assert meta["verified"]["max_abs_diff"] <= meta["verified"]["tolerance"]
    pages = _run([venv["python"], "-c", DASHBOARD_CHECK, str(out)], cwd=elsewhere, env=env, timeout=600)
    assert "pages ok" in pages.stdout


def test_the_installed_package_serves_its_dashboard(venv, tmp_path):
    """Issue #20: the dashboard is part of the installed package (automl_vision.dashboard, no
    top-level 'dashboard'), and `automl-vision dashboard` from that install answers Streamlit's
    health check on loopback."""
    import urllib.request

    from pgserver import free_port

    found = _run([venv["python"], "-c", "import importlib.util, automl_vision.dashboard as d; "
                  "print(d.APP.is_file(), importlib.util.find_spec('dashboard') is None, d.__file__)"],
                 cwd=tmp_path, env=venv["env"], timeout=120).stdout.split()
    assert found[:2] == ["True", "True"] and str(ROOT) not in found[2], found  # the copy pip installed
    port = free_port()
    log = (tmp_path / "dashboard.log").open("w")
    proc = subprocess.Popen([str(venv["bin"] / "automl-vision"), "dashboard", str(tmp_path), "--port", str(port)],
                            cwd=tmp_path, env=venv["env"], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline, answer = time.time() + 120, None
        while time.time() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=5) as r:
                    answer = r.read().decode()
                    break
            except OSError:
                time.sleep(1)
        assert answer == "ok", (tmp_path / "dashboard.log").read_text()[-2000:]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
