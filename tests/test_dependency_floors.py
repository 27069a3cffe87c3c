"""Issue #20: the lower bounds pyproject.toml declares are the ones a test proves.

A fresh virtual environment gets every runtime dependency at exactly its declared floor
(``name>=X`` installed as ``name==X`` from the package index; what those need comes at
whatever version pip picks), then automl-vision from a copy of the working tree, and runs
a real search, ``predict`` and the dashboard's health check. torch and torchvision are the
exception: they are shared from the project's environment, because a torch 2.5 wheel for
Linux is a 4 GB download with its NVIDIA libraries; their floors rest on the APIs named
beside them in pyproject.toml (``torch.OutOfMemoryError``, ``torch.amp.GradScaler(device)``
and the dynamo ONNX exporter are torch 2.5).

It downloads the floor versions from the package index (about a minute here with pip's
cache warm); the first run of this test found streamlit's floor wrong (1.35 has no
``st.Page``).
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import time
import tomllib
import urllib.request

import pytest
from packaging.version import Version
from venvkit import DASHBOARD_CHECK, ROOT, install_fresh
from venvkit import run as _run

# shared from the project's environment: torch, torchvision and what torch itself needs
SHARED = ("torch", "functorch", "nvidia", "cuda", "triton", "sympy", "isympy", "mpmath", "networkx", "jinja2",
          "markupsafe", "fsspec", "typing_extensions", "setuptools", "_distutils_hack", "pip")
NOT_PINNED = {"torch", "torchvision"}


def declared_floors() -> dict[str, str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    floors = {}
    for dep in deps:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9][0-9A-Za-z.]*)", dep.split(";")[0].strip())
        assert m, f"pyproject.toml: {dep!r} has no plain lower bound (name>=version)"
        floors[m.group(1).lower()] = m.group(2)
    return floors


def test_every_dependency_declares_a_floor():
    floors = declared_floors()
    assert {"torch", "optuna", "timm", "pluggy", "streamlit", "scipy"} <= set(floors)


def test_the_declared_floors_install_together_and_run_a_search(tmp_path, digits_dir):
    floors = declared_floors()
    pins = [f"{name}=={version}" for name, version in floors.items() if name not in NOT_PINNED]
    venv = install_fresh(tmp_path, [], share=SHARED, constraints=pins)
    py, env = venv["python"], venv["env"]
    freeze = _run([py, "-m", "pip", "list", "--format", "json"], cwd=tmp_path, env=env).stdout
    installed = {d["name"].lower().replace("_", "-"): d["version"] for d in json.loads(freeze)}
    for name, version in floors.items():
        if name not in NOT_PINNED:  # 0.20 and 0.20.0 are one version
            got = installed.get(name.replace("_", "-"))
            assert got and Version(got) == Version(version), (name, version, got)

    cli, out = venv["cli"], tmp_path / "run"
    _run([cli, "search", digits_dir, "--n-trials", "1", "--max-epochs", "15", "--image-size", "16", "--models", "cnn",
          "--out", out, "--plain"], cwd=tmp_path, env=env, timeout=900)
    report = json.loads((out / "final" / "report.json").read_text())
    assert 0.5 <= report["best_test"]["accuracy"] <= 1.0, report["best_test"]
    _run([cli, "predict", out, digits_dir / "3", "--out", tmp_path / "pred.csv"], cwd=tmp_path, env=env)
    with open(tmp_path / "pred.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and all(r["prediction"] in [str(c) for c in range(10)] for r in rows)
    # a timm backbone is built and trained one step under the floor timm / huggingface-hub / safetensors
    _run([py, "-c", "import timm, torch; m = timm.create_model('resnet18', num_classes=3); "
          "m(torch.zeros(2, 3, 32, 32)).sum().backward(); print('timm ok')"], cwd=tmp_path, env=env)

    from pgserver import free_port

    port = free_port()
    log = (tmp_path / "dashboard.log").open("w")
    proc = subprocess.Popen([str(cli), "dashboard", str(out), "--port", str(port)], cwd=tmp_path, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline, answer = time.time() + 120, None
        while time.time() < deadline and proc.poll() is None and answer is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=5) as r:
                    answer = r.read().decode()
            except OSError:
                time.sleep(1)
        assert answer == "ok", (tmp_path / "dashboard.log").read_text()[-2000:]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    pages = _run([py, "-c", DASHBOARD_CHECK, str(out)], cwd=tmp_path, env=env, timeout=600)
    assert "pages ok" in pages.stdout
