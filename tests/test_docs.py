"""The plugin author's docs agree with the code.

Like datasette's test_docs: a hook missing from the reference, a signature that
changed, or a guide example that no longer works fails here.
"""

from __future__ import annotations

import csv
import inspect
import json
import re
import sys
import types
from pathlib import Path

import pytest

from automl_vision import hookspecs
from automl_vision.plugins import PluginManager
from automl_vision.testing import check_plugin

from conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
sys.path.insert(0, str(DOCS))

import gen_hooks  # noqa: E402  (docs/gen_hooks.py)

HOOKS = gen_hooks.hook_names()
REFERENCE = (DOCS / "hooks.md").read_text()
GUIDE = (DOCS / "plugins.md").read_text()


def test_every_hook_is_found():
    # the hookspecs module is the source; the pluggy manager must agree with what the docs list
    pm = PluginManager()
    assert set(HOOKS) == {name for name in dir(pm.pm.hook) if not name.startswith("_")}
    assert {"register_datasets", "register_model_families", "register_metrics", "on_search_start",
            "on_trial_end", "on_search_end"} <= set(HOOKS)


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_in_the_reference_with_its_signature(hook):
    fn = getattr(hookspecs, hook)
    assert f"### `{hook}`" in REFERENCE, f"{hook} is missing from docs/hooks.md: run python docs/gen_hooks.py"
    assert gen_hooks.signature(fn) in REFERENCE, f"the signature of {hook} changed: run python docs/gen_hooks.py"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_docstring_documents_every_argument(hook):
    fn = getattr(hookspecs, hook)
    _, sections = gen_hooks._sections(fn.__doc__ or "")
    documented = [name for name, _ in sections.get("Args", [])]
    assert documented == list(inspect.signature(fn).parameters), f"{hook}: Args section does not match the arguments"


@pytest.mark.parametrize("hook", HOOKS)
def test_guide_mentions_every_hook(hook):
    assert f"`{hook}`" in GUIDE or f"{hook}(" in GUIDE


def test_reference_is_up_to_date():
    assert REFERENCE == gen_hooks.render(), "docs/hooks.md is out of date: run python docs/gen_hooks.py"


def test_guide_shows_the_minimal_plugin_file_verbatim():
    example = (ROOT / "examples" / "minimal_plugin.py").read_text()
    assert f"```python\n{example}```" in GUIDE


def _plugin_blocks() -> list[str]:
    return [b for b in re.findall(r"```python\n(.*?)```", GUIDE, flags=re.S) if "@hookimpl" in b]


@pytest.mark.parametrize("index", range(4))
def test_guide_plugin_examples_pass_the_test_kit(index, tmp_path):
    blocks = _plugin_blocks()
    assert len(blocks) == 4
    module = types.ModuleType(f"guide_example_{index}")
    exec(compile(blocks[index], f"docs/plugins.md example {index}", "exec"), module.__dict__)
    pm = check_plugin(module, name=f"guide{index}")
    info = pm.plugins[f"guide{index}"]
    assert info.hooks and not info.broken
    if "pngs" in pm.datasets:  # the dataset source example needs a folder to read
        from PIL import Image

        for cls in ("a", "b"):
            (tmp_path / cls).mkdir()
            Image.new("L", (8, 8)).save(tmp_path / cls / "x.png")
        from automl_vision.testing import check_dataset_source

        ds = check_dataset_source(pm.datasets.get("pngs"), str(tmp_path))
        assert ds.classes == ["a", "b"]


def test_minimal_plugin_example_works_in_a_real_search(digits_dir, tmp_path):
    out = tmp_path / "run"
    proc = run_cli("search", digits_dir, "--out", out, "--n-trials", "1", "--max-epochs", "1", "--image-size", "16",
                   "--models", "cnn", "--plain", "--precision", "fp32", "--channels-last", "off", "--plugin", "examples/minimal_plugin.py",
                   "--metric", "error_rate", cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[minimal_plugin] trial 0 COMPLETE: error_rate=" in proc.stderr
    with open(out / "leaderboard.csv", newline="") as fh:
        (row,) = [r for r in csv.DictReader(fh) if r["state"] == "COMPLETE"]
    assert float(row["val_error_rate"]) == pytest.approx(1 - float(row["val_accuracy"]))
    assert float(row["value"]) == pytest.approx(float(row["val_error_rate"]))
    # a plugin file given by a relative path is stored absolute, for predict/export/workers elsewhere
    run = json.loads((out / "run.json").read_text())
    assert run["settings"]["plugins"] == [str(ROOT / "examples" / "minimal_plugin.py")]


def _report_table() -> dict[str, tuple[str, str]]:
    """key -> (type, when) from the final/report.json table of docs/run-directory.md."""
    text = (ROOT / "docs" / "run-directory.md").read_text()
    section = text.split("## final/report.json", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([a-z_]+)` \| ([^|]+) \| ([^|]+) \|", section, flags=re.M)
    return {key: (kind.strip(), when.strip()) for key, kind, when in rows}


def test_the_report_schema_in_the_docs_matches_a_real_report(tiny_run):
    """on_search_end hooks get final/report.json: every key a real report has is documented, with its type."""
    table = _report_table()
    report = json.loads((tiny_run / "final" / "report.json").read_text())
    types = {"str": str, "bool": bool, "int": int, "float": float, "dict": dict, "list": list}
    for key, value in report.items():
        assert key in table, f"final/report.json key {key!r} is not documented in docs/run-directory.md"
        kind = table[key][0]
        allowed = tuple(types[t] for t in re.findall(r"[a-z]+", kind) if t in types)
        assert value is None and "null" in kind or isinstance(value, allowed), (key, kind, value)
    # a search with a test split delivers: the keys documented for that case are all there
    for key, (_kind, when) in table.items():
        if when in ("always", "delivered", "with a test split", "after a search"):
            assert key in report, f"documented key {key!r} ({when}) missing from a real report"
