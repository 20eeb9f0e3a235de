"""The import rules docs/architecture.md states, checked on the source itself."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "fimaudit"


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """fimaudit modules imported anywhere in the file (also inside functions)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fimaudit"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("fimaudit"))
    return found


def _graph() -> dict[str, set[str]]:
    return {_module(p): _imports(p) for p in CORE.rglob("*.py")}


def _reaches(graph: dict[str, set[str]], source: str, target_prefix: str) -> bool:
    return any(i == target_prefix or i.startswith(target_prefix + ".") for i in graph[source])


def test_leaf_modules_import_almost_nothing() -> None:
    graph = _graph()
    assert graph["fimaudit.errors"] == set() and graph["fimaudit._version"] == set()
    assert graph["fimaudit.outputs"] <= {"fimaudit.errors"}
    assert graph["fimaudit.lipschitz_bound"] == set()
    assert graph["fimaudit.adapter"] <= {"fimaudit.errors", "fimaudit.outputs", "fimaudit.lipschitz_bound", "fimaudit.perturbations"}
    assert graph["fimaudit.perturbations"] == set()  # pure numpy: shared by estimators, engine and adapters


def test_estimators_are_pure() -> None:
    graph = _graph()
    allowed = {"fimaudit.diagnostics", "fimaudit.differences", "fimaudit.perturbations"}
    for name in ("fimaudit.estimators", "fimaudit.differences", "fimaudit.diagnostics"):
        assert graph[name] <= allowed, (name, graph[name])


def test_nothing_outside_the_cli_imports_it() -> None:
    graph = _graph()
    for name, imports in graph.items():
        if not name.startswith("fimaudit.cli"):
            assert not any(i.startswith("fimaudit.cli") for i in imports), name


def test_signing_stays_below_runner_render_and_cli() -> None:
    graph = _graph()
    for name in (n for n in graph if n.startswith("fimaudit.signing")):
        for forbidden in ("fimaudit.runner", "fimaudit.render", "fimaudit.cli", "fimaudit.engine"):
            assert not _reaches(graph, name, forbidden), (name, forbidden)


def test_adapters_use_the_sdk_not_the_runner_or_cli() -> None:
    for path in (ROOT / "adapters").glob("*/fimaudit_*/**/*.py"):
        for imported in _imports(path):
            assert not imported.startswith(("fimaudit.runner", "fimaudit.cli", "fimaudit.engine", "fimaudit.model")), (path, imported)


def test_the_core_imports_no_adapter() -> None:
    for path in CORE.rglob("*.py"):
        text = path.read_text()
        assert "fimaudit_onnx" not in text and "fimaudit_torch" not in text, path
