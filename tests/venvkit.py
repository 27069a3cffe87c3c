"""A fresh virtual environment with automl-vision and plugin distributions pip-installed, as a
user installs them: shared by the tests of the distributions in ``plugins/``.

automl-vision comes from a copy of the working tree (so builds never write into it), the
distributions with ``pip install --no-index --no-deps``; the environment sees the project's
other packages (torch, ...) through a ``.pth`` file of symlinks, with automl-vision and its
plugins hidden, so what a test finds can only come from the pip installs and their entry
points. Nothing is installed into the project's own environment.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# what the fresh environment must NOT see from the project's own environment
HIDDEN_PREFIXES = ("automl_vision", "automl-vision", "__editable__", "distutils-precedence.pth")
# run by the fresh environment's Python with a run directory: every dashboard page renders without an exception
DASHBOARD_CHECK = """
import os, sys
from streamlit.testing.v1 import AppTest
from automl_vision.dashboard import APP
from automl_vision.dashboard.data import ENV_RUNS
os.environ[ENV_RUNS] = sys.argv[1]
at = AppTest.from_file(str(APP), default_timeout=240).run()
for page in ("leaderboard", "insight", "ensemble", "errors"):
    at.switch_page(f"sections/{page}.py").run()
    assert not at.exception, (page, [e.value for e in at.exception])
print("pages ok")
"""


def run(cmd: list, cwd: Path, env: dict[str, str], timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def copy_tree(src: Path, dst: Path) -> Path:
    # a copy keeps the build's egg-info and build/ folders out of the shared working tree
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build", ".pytest_cache"))
    return dst


def copy_project(dst: Path) -> Path:
    dst.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dst / name)
    copy_tree(ROOT / "automl_vision", dst / "automl_vision")
    return dst


def install_fresh(base: Path, distributions: list[Path], drop_env: tuple[str, ...] = (),
                  share: tuple[str, ...] | None = None, constraints: list[str] | None = None) -> dict:
    """A venv in ``base`` with automl-vision and ``distributions`` (source folders) pip-installed.

    Returns ``{"dir", "python", "bin", "cli", "env", "base", "sources"}``; ``drop_env``: more
    environment variable prefixes kept out of ``env`` (e.g. a tracking store's).

    With ``share`` (name prefixes, lower case) only those packages of the project's
    environment are seen, and automl-vision's dependencies are installed from the package
    index under ``constraints`` (pip requirement lines such as ``optuna==4.0.0``).
    """
    env_dir = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True, timeout=120)
    py = env_dir / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    # the project's dependencies, shared read-only through symlinks, minus automl-vision and its plugins
    shared = base / "shared-deps"
    shared.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if entry.name.startswith(HIDDEN_PREFIXES) or entry.name.endswith(".pth"):
            continue
        if share is not None and not entry.name.lower().startswith(share):
            continue
        (shared / entry.name).symlink_to(entry)
    (site / "_automl_vision_test_shared_deps.pth").write_text(str(shared) + "\n")

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUTOML_VISION_", "PYTHON", "VIRTUAL_ENV", *drop_env))}
    env["PATH"] = f"{env_dir / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    check = subprocess.run([str(py), "-c", "import automl_vision"], env=env, cwd=base, capture_output=True, text=True)
    assert check.returncode != 0, "the fresh venv must not see automl-vision before it is installed"

    sources = [copy_project(base / "src" / "automl-vision")]
    sources += [copy_tree(d, base / "src" / d.name) for d in distributions]
    if share is None:
        run([py, "-m", "pip", "install", "--no-index", "--no-build-isolation", "--no-deps", "--quiet",
             "--disable-pip-version-check", *sources], cwd=base, env=env, timeout=600)
    else:
        (base / "constraints.txt").write_text("".join(f"{line}\n" for line in constraints or []))
        run([py, "-m", "pip", "install", "--no-build-isolation", "--quiet", "--disable-pip-version-check",
             "--constraint", base / "constraints.txt", *sources], cwd=base, env=env, timeout=1800)
    return {"dir": env_dir, "python": py, "bin": env_dir / "bin", "cli": env_dir / "bin" / "automl-vision",
            "env": env, "base": base, "sources": base / "src"}
