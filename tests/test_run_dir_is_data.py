"""A run directory is data (issue 23): opening one never runs code, never leaves it, and a
damaged file is one line naming it, exit 2, never a traceback.

Each test edits a copy of the session's finished tiny run (``run_copy``), as someone
handing over a run directory could, and opens it the way a user does.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import stat
from pathlib import Path

import pytest
from PIL import Image

import automl_vision
from automl_vision import cli
from automl_vision.rundir import RunDir, atomic_write_bytes, write_json
from automl_vision.types import UsageError
from conftest import TINY, run_cli
from test_security import _a_complete_trial, run_copy  # noqa: F401  (the fixture: a private copy of the tiny run)


def _edit(path: Path, change) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def _image(tmp_path: Path) -> Path:
    img = tmp_path / "x.png"
    Image.new("L", (8, 8), 128).save(img)
    return img


def _one_line_error(code: int, err: str, command: str, *needles: str) -> str:
    """The CLI's usage-error contract: exit 2, one line, the command named, no traceback."""
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("warning:")]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith(f"automl-vision {command}: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def _predict(rd: RunDir, tmp_path: Path, capsys, *extra: str) -> tuple[int, str]:
    code = cli.main(["predict", str(rd.path), str(_image(tmp_path)), "--out", str(tmp_path / "p.csv"), *extra])
    return code, capsys.readouterr().err


# ------------------------------------------------------------------ 1. no code is loaded from a run
MARKER_PLUGIN = """
from pathlib import Path
Path({marker!r}).touch()
"""

DELEGATING_FAMILY = MARKER_PLUGIN + """
from automl_vision import hookimpl
from automl_vision.builtin.custom_cnn import FAMILY
from automl_vision.types import ModelFamily

@hookimpl
def register_model_families(register):
    register(ModelFamily(name="tinyfam", suggest=FAMILY.suggest, build=FAMILY.build))
"""


def test_plugins_named_in_a_run_are_never_imported_from_it(run_copy, tmp_path, capsys, monkeypatch):
    """A run.json naming a .py file and a module in the current folder: predict, export, ensemble
    and load() all work with what is installed, and neither file is imported."""
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil_plugin.py"
    evil.write_text(MARKER_PLUGIN.format(marker=str(marker)))
    (tmp_path / "evil_module.py").write_text(MARKER_PLUGIN.format(marker=str(marker)))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AUTOML_VISION_PLUGINS", raising=False)
    _edit(run_copy.run_json, lambda d: d["settings"].update(plugins=[str(evil), "evil_module"]))

    code, err = _predict(run_copy, tmp_path, capsys)
    assert code == 0, err
    assert automl_vision.load(str(run_copy.path)).predict([str(_image(tmp_path))])
    code = cli.main(["export", str(run_copy.path), "--format", "state-dict", "--model", "best",
                     "--out", str(tmp_path / "m.safetensors")])
    assert code == 0, capsys.readouterr().err
    code = cli.main(["ensemble", str(run_copy.path), "--device", "cpu", "--plain"])
    assert code == 0, capsys.readouterr()
    assert not marker.exists()


def test_a_family_whose_plugin_is_not_given_is_named_with_how_to_provide_it(run_copy, tmp_path, capsys, monkeypatch):
    marker = tmp_path / "imported"
    plugin = tmp_path / "tinyfam.py"
    plugin.write_text(DELEGATING_FAMILY.format(marker=str(marker)))
    monkeypatch.delenv("AUTOML_VISION_PLUGINS", raising=False)
    _edit(run_copy.run_json, lambda d: (d["settings"].update(plugins=[str(plugin)]), d["plugins"].update(tinyfam="")))
    _edit(run_copy.best_dir / "model.json", lambda d: d.update(family="tinyfam"))

    code, err = _predict(run_copy, tmp_path, capsys, "--model", "best")
    _one_line_error(code, err, "predict", "best/model.json", "model family 'tinyfam'",
                    f"the search had --plugin {plugin}", "--plugin PATH_OR_MODULE", "pip install")
    assert not marker.exists()  # named in run.json only: not imported

    code, err = _predict(run_copy, tmp_path, capsys, "--model", "best", "--plugin", str(plugin))
    assert code == 0, err  # given by the user: loaded, and the model is rebuilt with it
    assert marker.exists()


@pytest.mark.parametrize("command", ["predict", "export", "ensemble", "worker"])
def test_commands_that_open_a_run_or_join_a_study_take_plugin(command):
    positional = {"predict": ["RUN", "img.png"], "export": ["RUN", "--format", "onnx"], "ensemble": ["RUN"],
                  "worker": []}[command]
    args = cli.build_parser().parse_args([command, *positional, "--plugin", "a.py", "--plugin", "pkg.mod"])
    assert args.plugin == ["a.py", "pkg.mod"]


# ------------------------------------------------------------------ 2. paths stay inside
@pytest.mark.parametrize("where", ["dotdot", "absolute", "symlink"])
def test_an_ensemble_member_outside_the_run_is_refused(run_copy, tmp_path, capsys, where):
    outside = tmp_path / "elsewhere" / "model"
    shutil.copytree(_a_complete_trial(run_copy), outside)  # a loadable model: refused for where it is
    member_dir = {"dotdot": "../elsewhere/model", "absolute": str(outside), "symlink": "trials/escape"}[where]
    if where == "symlink":
        (run_copy.path / "trials" / "escape").symlink_to(outside)
    shutil.move(run_copy.path, tmp_path / "run")  # so that ../elsewhere is the copy beside it
    rd = RunDir(tmp_path / "run")
    _edit(rd.path / "ensemble.json", lambda d: (d["members"][0].update(dir=member_dir), d.update(selected=True)))

    code, err = _predict(rd, tmp_path, capsys, "--model", "ensemble")
    _one_line_error(code, err, "predict", "ensemble.json", repr(member_dir), "outside the run directory")


def test_the_dashboard_refuses_an_image_key_that_leaves_the_data_folder(run_copy, tmp_path):
    from automl_vision.dashboard.data import NotAvailable, RunData

    data = tmp_path / "data"
    (data / "a").mkdir(parents=True)
    Image.new("L", (8, 8), 255).save(tmp_path / "secret.png")
    Image.new("L", (8, 8), 0).save(data / "a" / "ok.png")
    _edit(run_copy.data_report, lambda d: d.update(root=str(data)))
    run = RunData(run_copy.path)
    assert run.image("a/ok.png", 8, 1).shape == (8, 8, 1)  # a key inside the data folder is decoded
    for key in ("../secret.png", str(tmp_path / "secret.png"), "a/../../secret.png"):
        with pytest.raises(NotAvailable, match="outside the data folder"):
            run.image(key, 8, 1)


def test_export_refuses_a_split_key_that_leaves_the_data_folder(run_copy, tmp_path, capsys):
    shutil.rmtree(run_copy.path / "cache")  # verification images are then decoded from the data folder

    def escape(d):
        d["keys"].append("../../../etc/hostname")
        d["splits"]["test"].insert(0, "../../../etc/hostname")

    _edit(run_copy.splits, escape)
    code = cli.main(["export", str(run_copy.path), "--format", "state-dict", "--model", "best",
                     "--out", str(tmp_path / "m.safetensors")])
    _one_line_error(code, capsys.readouterr().err, "export", "splits.json", "outside the data folder")


# ------------------------------------------------------------------ 3. damaged run files
def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


DAMAGES = {
    "run.json": (lambda rd: rd.run_json, lambda d: d.update(settings="cnn"), []),
    "model.json": (lambda rd: rd.best_dir / "model.json", lambda d: d.update(mean="0.5"), ["--model", "best"]),
    "ensemble.json": (lambda rd: rd.path / "ensemble.json", lambda d: d["members"][0].update(weight="x"),
                      ["--model", "ensemble"]),
    "status.json": (lambda rd: _a_complete_trial(rd) / "status.json", lambda d: d.pop("state"), ["--model", "trial:N"]),
}


@pytest.mark.parametrize("damage", ["truncated", "wrong types"])
@pytest.mark.parametrize("name", sorted(DAMAGES))
def test_a_damaged_run_file_is_one_line_naming_it(run_copy, tmp_path, capsys, name, damage):
    locate, change, extra = DAMAGES[name]
    path = locate(run_copy)
    if "trial:N" in extra:
        extra = ["--model", f"trial:{int(path.parent.name)}"]
    if name == "ensemble.json":
        _edit(path, lambda d: d.update(selected=True))
    if damage == "truncated":
        _truncate(path)
    else:
        _edit(path, change)
    code, err = _predict(run_copy, tmp_path, capsys, *extra)
    line = _one_line_error(code, err, "predict", str(path), "cut short or edited")
    assert ("not valid JSON" if damage == "truncated" else "expected" if name != "status.json" else "missing") in line


def test_damaged_splits_are_one_line_in_export_ensemble_and_resume(run_copy, tmp_path, capsys, digits_dir):
    _truncate(run_copy.splits)
    code = cli.main(["export", str(run_copy.path), "--format", "state-dict", "--model", "best",
                     "--out", str(tmp_path / "m.safetensors")])
    _one_line_error(code, capsys.readouterr().err, "export", "splits.json", "not valid JSON")
    code = cli.main(["ensemble", str(run_copy.path), "--device", "cpu", "--plain"])
    _one_line_error(code, capsys.readouterr().err, "ensemble", "splits.json", "not valid JSON")
    stray = {"seed": 0, "keys": ["a.png"], "splits": {"train": ["b.png"], "val": [], "test": []}}
    run_copy.splits.write_text(json.dumps(stray))
    proc = run_cli("search", digits_dir, "--out", run_copy.path, *TINY)  # resuming the run
    _one_line_error(proc.returncode, proc.stderr, "search", "splits.json", "'b.png'")


def test_a_model_json_that_does_not_match_its_weights_is_one_line(run_copy, tmp_path, capsys):
    spec = run_copy.best_dir / "model.json"
    _edit(spec, lambda d: d.update(num_classes=9))
    code, err = _predict(run_copy, tmp_path, capsys, "--model", "best")
    _one_line_error(code, err, "predict", str(spec), "lists 10 classes but num_classes is 9")
    _edit(spec, lambda d: d.update(classes=d["classes"][:9]))  # consistent, but the weights have 10 outputs
    code, err = _predict(run_copy, tmp_path, capsys, "--model", "best")
    _one_line_error(code, err, "predict", str(spec), "does not match weights.safetensors", "size mismatch")


def test_a_journal_record_damaged_mid_file_is_one_line_on_resume(run_copy, digits_dir):
    lines = run_copy.journal.read_bytes().split(b"\n")
    lines[5] = lines[5][: len(lines[5]) // 2]  # cut mid-record, with records after it
    run_copy.journal.write_bytes(b"\n".join(lines))
    proc = run_cli("search", digits_dir, "--out", run_copy.path, *TINY)
    _one_line_error(proc.returncode, proc.stderr, "search", str(run_copy.journal), "record 6")


def test_damaged_files_are_usage_errors_in_the_python_api(run_copy):
    _truncate(run_copy.run_json)
    with pytest.raises(UsageError, match="run.json: is not valid JSON"):
        automl_vision.load(str(run_copy.path))


# ------------------------------------------------------------------ 4. predict's inputs and output
def test_predict_skips_a_named_pipe_and_writes_non_utf8_names(run_copy, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    os.mkfifo(folder / "pipe.png")  # opening it would wait forever for a writer
    Image.new("L", (8, 8), 90).save(folder / "plain.png")
    odd = os.fsencode(folder) + b"/caf\xe9.png"  # Latin-1 bytes: not UTF-8
    Image.new("L", (8, 8), 200).save(odd.decode("utf-8", "surrogateescape"))
    out = tmp_path / "p.csv"
    proc = run_cli("predict", run_copy.path, folder, "--out", out, timeout=120)
    assert proc.returncode == 0, proc.stderr
    with open(out, encoding="utf-8", newline="") as fh:  # valid UTF-8
        rows = {Path(r["path"]).name: r for r in csv.DictReader(fh)}
    assert rows["pipe.png"]["error"].startswith("not a regular file (a named pipe)")
    assert rows["plain.png"]["prediction"] and rows["caf\\xe9.png"]["prediction"]
    assert "not valid UTF-8" in proc.stderr and "Traceback" not in proc.stderr


def test_predict_out_naming_a_folder_is_one_line(run_copy, tmp_path, capsys):
    (tmp_path / "results").mkdir()
    code = cli.main(["predict", str(run_copy.path), str(_image(tmp_path)), "--out", str(tmp_path / "results")])
    _one_line_error(code, capsys.readouterr().err, "predict", "is a folder")
    assert list((tmp_path / "results").iterdir()) == []


# ------------------------------------------------------------------ 5. files honour the umask
@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_honour_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"x")
        write_json(tmp_path / "b.json", {"a": 1})
        write_json(tmp_path / "b.json", {"a": 2})  # replacing a file too
    finally:
        os.umask(old)
    for name in ("a.bin", "b.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.json"]  # no temporary file left


def test_run_files_the_search_and_final_steps_read_are_schema_checked(run_copy, tmp_path, capsys, digits_dir):
    """Issue #23: run.json on resume, a trial's config.json and model.json for a refit, and the
    previous final/report.json were only checked to be JSON; an edited one gave a traceback."""
    _edit(run_copy.run_json, lambda d: d.update(settings="cnn"))
    proc = run_cli("search", digits_dir, "--out", run_copy.path, *TINY)  # resuming the run
    _one_line_error(proc.returncode, proc.stderr, "search", str(run_copy.run_json), "settings is a string")
    _edit(run_copy.run_json, lambda d: d.update(settings={}))
    best = int(json.loads((run_copy.final_dir / "report.json").read_text())["best_trial"])
    config = run_copy.trial_dir(best) / "config.json"
    _edit(config, lambda d: d.update(lr="fast"))
    code = cli.main(["ensemble", str(run_copy.path), "--device", "cpu", "--plain", "--refit"])
    _one_line_error(code, capsys.readouterr().err, "ensemble", str(config), "lr is a string")
    _edit(config, lambda d: d.update(lr=0.01))
    report = run_copy.final_dir / "report.json"
    _edit(report, lambda d: d.update(test_evaluations="many"))
    code = cli.main(["ensemble", str(run_copy.path), "--device", "cpu", "--plain"])
    _one_line_error(code, capsys.readouterr().err, "ensemble", str(report), "test_evaluations is a string")
