"""``automl-vision search``: what it refuses before any work, what it never overwrites, and
Ctrl-C at any moment of start-up.

Usage errors exit 2 with one line on stderr (what, where, what to do) and leave nothing
behind. Option errors that argparse finds run the real command as a subprocess; the others
call the same ``cli.main`` in this process, which saves importing PyTorch once per case.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from automl_vision import cli
from automl_vision.rundir import RunDir, read_json
from automl_vision.search.run import check_out, remove_dead_leftovers
from automl_vision.types import UsageError
from conftest import cli_env, run_cli
from test_bad_input import SEARCH, _usage_error, good, main  # noqa: F401  (fixtures: two tiny classes, in-process CLI)



def _one_line_usage_error(proc, *needles: str) -> str:
    err = _usage_error(proc, *needles)
    assert len(err.splitlines()) == 1, err
    return err


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ------------------------------------------------------------------ --out
def test_out_folder_of_other_files_is_refused_and_left_untouched(main, good, tmp_path):
    mine = tmp_path / "mine"
    (mine / "best").mkdir(parents=True)
    (mine / "run.json").write_text('{"my": "own notes"}\n')
    (mine / "leaderboard.csv").write_text("player,score\nann,3\n")
    (mine / "best" / "photo.jpg").write_bytes(b"\xff\xd8 my photo")
    before = _snapshot(mine)
    _one_line_usage_error(main("search", good, "--out", mine, *SEARCH), str(mine), "not an automl-vision run",
                          "--overwrite")
    assert _snapshot(mine) == before


def test_overwrite_uses_the_folder_and_a_resume_clears_dead_leftovers(main, good, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "run.json").write_text("not json, someone else's file")
    (mine / "notes.txt").write_text("keep me")
    proc = main("search", good, "--out", mine, *SEARCH, "--overwrite")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert read_json(mine / "run.json")["study_name"] == "data"
    assert (mine / "notes.txt").read_text() == "keep me"  # only files of a run's names are written
    assert (mine / "best" / "model.json").exists()

    # a process killed while it replaced best/ left its temporary folder: the next start removes it
    leftover = mine / f".best.{_dead_pid()}.tmp"
    leftover.mkdir()
    proc = main("search", good, "--out", mine, *SEARCH)  # a run of this study resumes, no --overwrite
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not leftover.exists()
    assert len(read_json(mine / "run.json")["sessions"]) == 2


@pytest.mark.parametrize(
    "contents, refused",
    [
        ({}, None),
        ({"cache/16px_3ch/images.npy": "x", "data_report.json": "{}"}, None),  # a start interrupted before run.json
        ({"run.json": '{"layout_version": 1, "study_name": "data"}', "leaderboard.csv": ""}, None),
        ({"run.json": '{"layout_version": 1, "study_name": "other"}'}, "--study-name other"),
        ({"run.json": '{"layout_version": 1}', "notes.txt": "x"}, None),
        ({"leaderboard.csv": "mine"}, "--overwrite"),
        ({".git/HEAD": "ref"}, "--overwrite"),
        ({"run.json": "[1, 2]"}, "--overwrite"),
    ],
    ids=["empty", "interrupted-start", "run", "other-study", "run-with-extra-file", "user-file", "hidden", "foreign"],
)
def test_which_out_folders_a_search_may_use(tmp_path, contents, refused):
    out = tmp_path / "out"
    out.mkdir()
    for name, text in contents.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)
    if refused is None:
        check_out(RunDir(out), "data", overwrite=False)
    else:
        with pytest.raises(UsageError, match=refused):
            check_out(RunDir(out), "data", overwrite=False)
        check_out(RunDir(out), "data", overwrite=True)


def test_out_naming_a_file(main, good, tmp_path):
    target = tmp_path / "results.txt"
    target.write_text("mine")
    _one_line_usage_error(main("search", good, "--out", target, *SEARCH), str(target), "is a file")
    _one_line_usage_error(main("search", good, "--out", target / "run", *SEARCH), "is a file")
    assert target.read_text() == "mine"


# ------------------------------------------------------------------ other option values
@pytest.mark.parametrize("seed", ["-1", str(2**70), str(2**32)])
def test_seed_outside_what_numpy_and_torch_accept(good, tmp_path, seed):
    proc = run_cli("search", good, "--out", tmp_path / "run", *SEARCH, f"--seed={seed}", timeout=60)
    _usage_error(proc, "--seed", "0 to 4294967295")
    assert not (tmp_path / "run").exists()


def test_largest_seed_is_accepted():
    assert cli.build_parser().parse_args(["search", "d", "--seed", str(2**32 - 1)]).seed == 2**32 - 1


@pytest.mark.parametrize("storage", ["{missing}/study.journal", "journal:{missing}/s", "sqlite:///{missing}/s.db"],
                         ids=["journal", "journal-prefix", "sqlite"])
def test_storage_in_a_missing_folder(main, good, tmp_path, storage):
    missing = tmp_path / "no" / "such"
    line = _one_line_usage_error(main("search", good, "--out", tmp_path / "run", *SEARCH,
                                       "--storage", storage.format(missing=missing)),
                                 "--storage", str(missing), "does not exist")
    assert "create it" in line
    assert not (tmp_path / "run").exists() and not missing.exists()


@pytest.mark.parametrize("plugin, needle", [("missing.py", "no such file"), ("no_such_plugin_module", "no module")])
def test_a_named_plugin_that_cannot_be_found(main, good, tmp_path, monkeypatch, plugin, needle):
    monkeypatch.chdir(tmp_path)
    _one_line_usage_error(main("search", good, "--out", tmp_path / "run", *SEARCH, "--plugin", plugin),
                          "--plugin", plugin, needle)
    assert not (tmp_path / "run").exists()  # refused before any work


# ------------------------------------------------------------------ leftovers of an interrupted final step
def test_dead_processes_best_leftovers_are_removed_and_a_lost_best_is_restored(tmp_path):
    run = RunDir(tmp_path / "run")
    dead, alive = _dead_pid(), os.getppid()
    for name in (f".best.{dead}.tmp", f".best.{alive}.tmp", f".best.{dead}.old"):
        (run.path / name).mkdir(parents=True)
    (run.path / f".best.{dead}.old" / "model.json").write_text("{}")
    remove_dead_leftovers(run)  # best/ was moved aside, then the process died: the old best/ comes back
    assert sorted(p.name for p in run.path.iterdir()) == sorted([".best." + str(alive) + ".tmp", "best"])
    assert (run.best_dir / "model.json").exists()


# ------------------------------------------------------------------ Ctrl-C at start-up
def test_a_ctrl_c_swallowed_during_start_up_still_stops_the_search(main, good, tmp_path, monkeypatch):
    """The interrupt lands where Python cannot pass it on (a ``__del__``, as inside a library's
    import of timm): the search must not run on to the end and exit 0."""
    import automl_vision.search.run as run_module

    class SwallowsCtrlC:
        def __del__(self):
            # raise_signal delivers to this thread and runs the handler before returning (os.kill may
            # land on another of the process's threads and reach this one only after __del__ returned):
            # the KeyboardInterrupt is raised here, and Python only reports it as "ignored"
            signal.raise_signal(signal.SIGINT)

    versions = run_module.versions
    monkeypatch.setattr(run_module, "versions", lambda: (SwallowsCtrlC(), versions())[1])
    swallowed = []
    monkeypatch.setattr(sys, "unraisablehook", lambda info: swallowed.append(info.exc_type))
    proc = main("search", good, "--out", tmp_path / "run", *SEARCH)
    assert swallowed == [KeyboardInterrupt]  # it was indeed swallowed where it landed
    assert proc.returncode == 130, proc.stdout + proc.stderr
    assert "interrupted" in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "run" / "trials").exists()  # stopped before the first trial


# moments after the start: Python and the command line, heavy imports (optuna, torch, timm),
# measuring the execution path, caching the images, the first trials
MOMENTS = [0.3, 0.6, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0]


def test_ctrl_c_at_any_moment_of_start_up_stops_the_search(good, tmp_path):
    """The search runs 30 s unless interrupted, so every moment lands while it runs: an
    interrupt must end it, never be swallowed (e.g. inside a library's import)."""
    for moment in MOMENTS:
        out, log = tmp_path / f"run{moment}", tmp_path / f"log{moment}"
        with open(log, "w") as fh:
            # its own session with SIGINT's default action, as a program started from a terminal
            proc = subprocess.Popen(
                [sys.executable, "-m", "automl_vision.cli", "search", str(good), "--out", str(out), "--time-budget",
                 "30s", "--max-epochs", "1", "--image-size", "16", "--models", "cnn", "--plain"],
                stdout=fh, stderr=subprocess.STDOUT, env=cli_env(), start_new_session=True,
                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
            time.sleep(moment)
            assert proc.poll() is None, f"the search ended before {moment}s: {log.read_text()}"
            os.killpg(proc.pid, signal.SIGINT)
            code = proc.wait(timeout=120)
        text = log.read_text()
        # -2: the process ended itself by SIGINT, as Python does at exit when the interrupt passed
        # through C code that evaluated Python (PyTorch's import); a shell reports 130 either way
        assert code in (130, -signal.SIGINT), f"Ctrl-C at {moment}s: exit {code}\n{text}"
        assert "Traceback" not in text, f"Ctrl-C at {moment}s:\n{text}"
        assert "interrupted" in text.strip().splitlines()[-1], f"Ctrl-C at {moment}s:\n{text}"


def test_python_dash_m_runs_the_command():
    import subprocess
    import sys

    from automl_vision import __version__

    proc = subprocess.run([sys.executable, "-m", "automl_vision", "--version"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and __version__ in proc.stdout, proc.stderr


def test_every_third_party_import_is_a_declared_dependency():
    """A fresh `pip install automl-vision` must bring every library the code imports (SciPy was missing)."""
    import ast
    import re
    import sys
    import tomllib
    from importlib.metadata import packages_distributions
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    declared = {re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0].lower().replace("_", "-")
                for d in project["dependencies"] + sum(project["optional-dependencies"].values(), [])}
    dists = packages_distributions()
    missing = {}
    for path in root.glob("automl_vision/**/*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else [])
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top == "automl_vision":
                    continue
                owners = {d.lower().replace("_", "-") for d in dists.get(top, [top])}
                if not owners & declared:
                    missing.setdefault(top, str(path.relative_to(root)))
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_leaderboard_command_for_people_and_scripts(tiny_run, tmp_path):
    statuses = [json.loads(p.read_text()) for p in tiny_run.glob("trials/*/status.json")]
    proc = run_cli("leaderboard", tiny_run, "--json", timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert (out["metric"], out["direction"]) == ("accuracy", "maximize") and out["running"] == []
    assert sorted(t["number"] for t in out["trials"]) == sorted(s["number"] for s in statuses)
    values = [t["value"] for t in out["trials"] if t["state"] == "COMPLETE"]
    assert values == sorted(values, reverse=True) and "val_accuracy" in out["trials"][0]
    text = run_cli("leaderboard", tiny_run, timeout=120)
    assert text.returncode == 0 and "Leaderboard (validation accuracy" in text.stdout
    bad = run_cli("leaderboard", tmp_path, timeout=120)
    assert bad.returncode == 2 and "not an automl-vision run directory" in bad.stderr


def test_search_takes_its_storage_from_the_environment(digits_dir, tmp_path):
    """$AUTOML_VISION_STORAGE keeps a password off the command line, for search as for worker."""
    journal = tmp_path / "shared.journal"
    out = tmp_path / "run"
    proc = run_cli("search", digits_dir, "--out", out, "--n-trials", "1", "--max-epochs", "1", "--image-size", "16",
                   "--models", "cnn", "--plain", env=cli_env(AUTOML_VISION_STORAGE=str(journal)), timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert journal.stat().st_size > 0 and not (out / "study.journal").exists()
    assert read_json(out / "run.json")["settings"]["storage"] == str(journal)


# ------------------------------------------------------------------ option errors (issue #20)
@pytest.mark.parametrize("argv, needles", [
    (["search", "data", "--time-budjet", "3m"], ["automl-vision search: error:", "--time-budjet",
                                                  "did you mean --time-budget?", "automl-vision search --help"]),
    (["predikt", "run", "x"], ["invalid choice: 'predikt'", "did you mean 'predict'?"]),
    (["search", "data", "--regime", "tiny"], ["--regime", "choose from auto, small, standard"]),
    (["predict"], ["the following arguments are required: RUN_DIR, IMAGES", "automl-vision predict --help"]),
])
def test_option_errors_are_one_line_with_a_close_match(argv, needles):
    """argparse printed its whole usage block first, and a misspelt option of a sub-command got
    the top-level usage with no suggestion."""
    proc = subprocess.run([sys.executable, "-m", "automl_vision.cli", *argv], capture_output=True, text=True,
                          env=cli_env(), timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


@pytest.mark.parametrize("argv", [["predict", "{missing}", "x"], ["export", "{missing}", "--format", "onnx",
                                                                    "--out", "m.onnx"],
                                  ["ensemble", "{missing}"], ["leaderboard", "{missing}"]])
def test_a_mistyped_run_dir_is_refused_before_torch_is_imported(argv, tmp_path):
    """Every command spent 4-5 s importing PyTorch (20 s on a busy machine) before saying the
    path was wrong."""
    code = ("import sys; from automl_vision.cli import main; rc = main(sys.argv[1:]); "
            "print('torch' in sys.modules); sys.exit(rc)")
    args = [a.replace("{missing}", str(tmp_path / "no-such-run")) for a in argv]
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=cli_env(),
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "no such run directory" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert proc.stdout.strip() == "False"
