"""The package's import structure: data flows one way, and the core never reaches into
the command line or the built-in plugins (they are ordinary plugins)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "automl_vision"

# issue #19: the built-in timm and CNN families were privileged by four lazy imports from the core;
# families now claim model names, defaults and parameter values through ModelFamily's fields
KNOWN_BUILTIN_REACH: set[tuple[str, str]] = set()


def _modules() -> dict[str, Path]:
    out = {}
    for path in (ROOT / PACKAGE).rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path], top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in modules else module for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # a name inside a module: the module
                target = target.rpartition(".")[0]
            if target and target != name and target.startswith(PACKAGE):
                found.add(target)
    return found


def _graph(top_level_only: bool) -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules, top_level_only) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[str]:
    """Every import cycle a depth-first walk of ``graph`` meets, as ``a -> b -> a``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[str] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif not state.get(nxt):
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if not state.get(module):
            visit(module, [module])
    return cycles


def test_no_import_cycle_at_import_time():
    cycles = _cycles(_graph(top_level_only=True))
    assert not cycles, "import cycles: " + "; ".join(cycles)


def test_the_core_never_imports_the_command_line_or_a_builtin_plugin():
    graph = _graph(top_level_only=False)  # lazy imports inside functions count too
    wrong = []
    for module, targets in graph.items():
        for target in targets:
            if target.startswith(f"{PACKAGE}.commands") and not module.startswith((f"{PACKAGE}.commands", f"{PACKAGE}.cli")):
                wrong.append((module, target))
            if (target.startswith(f"{PACKAGE}.builtin") and not module.startswith((f"{PACKAGE}.builtin", f"{PACKAGE}.plugins"))
                    and (module, target) not in KNOWN_BUILTIN_REACH):
                wrong.append((module, target))
    assert not wrong, f"imports against the layering: {sorted(wrong)}"


def test_the_dashboard_is_a_reader_inside_the_package():
    """Issue #19/#20: the dashboard installed as a top-level package named ``dashboard`` (it
    collided with anything else of that name, and app.py edited sys.path/sys.modules to cope).
    It now lives in ``automl_vision.dashboard``, and only the command that starts it imports it:
    data flows from the search to the run directory to the dashboard, never back."""
    assert not (ROOT / "dashboard").exists()
    assert (ROOT / PACKAGE / "dashboard" / "app.py").is_file()
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"dashboard*"' not in pyproject
    assert "sys.path" not in (ROOT / PACKAGE / "dashboard" / "app.py").read_text()
    graph = _graph(top_level_only=False)
    reach = sorted((m, t) for m, targets in graph.items() for t in targets
                   if t.startswith(f"{PACKAGE}.dashboard") and not m.startswith(f"{PACKAGE}.dashboard")
                   and m != f"{PACKAGE}.commands.dashboard")
    assert not reach, f"the core reaches into the dashboard: {reach}"


def test_no_import_cycle_even_through_lazy_imports():
    """Issue #19: ``search/run.py`` and ``search/workers.py`` imported each other, one of them
    mid-file (``noqa: E402``) and one inside ``join_study``. Lazy imports count here too, except
    a package's ``__init__`` reaching its own modules (the Python API's lazy entry points)."""
    graph = _graph(top_level_only=False)
    for name in list(graph):
        if (ROOT / PACKAGE / Path(*name.split(".")[1:]) / "__init__.py").exists():
            graph[name] = {t for t in graph[name] if not t.startswith(name + ".")}
    cycles = _cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(cycles)


def test_run_directory_file_names_are_spelled_only_in_rundir():
    """The run directory is the one contract between the search, the final steps, predict,
    export and the dashboard: its file names live in automl_vision/rundir.py, so a rename or a
    new reader cannot drift from what the writer wrote."""
    from automl_vision import rundir

    names = {value for key, value in vars(rundir).items()
             if key.isupper() and isinstance(value, str) and "." in value and key != "__name__"}
    assert {"run.json", "model.json", "status.json", "report.json", "test_labels.npy"} <= names
    spelled = []
    for name, path in _modules().items():
        if name == f"{PACKAGE}.rundir":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in names:
                spelled.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert not spelled, "run-directory file names outside rundir.py:\n" + "\n".join(spelled)
