"""The package's import graph (module-level and function-level imports alike) has no cycle: every module imports
only modules below it."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """{module: the hardgen modules it imports anywhere in its code} (a package import counts as its __init__)."""
    modules = {module_name(p): p for p in (SRC / "hardgen").rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and not name.startswith(target + "."):
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert {"hardgen.report.write_report", "hardgen.report.gallery", "hardgen.generator.generate"} <= set(graph)
    assert "hardgen.core.io" in graph["hardgen.report.write_report"]  # the graph sees imports (a test that can fail)
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


#: The package's layers, bottom up: its folders (docs/architecture.md). A module imports only from its own folder or
#: a folder below it. Scoring and the segmentation benchmark sit below the generator, so they never depend on how
#: samples were made; the report reads everything from the top, and the CLI sits above it. A new folder must be
#: placed here.
LAYERS: tuple[str, ...] = (
    "core", "models", "config", "data", "evaluation", "segmentation", "scoring", "benchmark", "generator",
    "pretrain", "report", "app",
)


def folder_of(module: str) -> str:
    """The layer folder of a hardgen module ("hardgen.scoring.score" -> "scoring"; the package itself -> "")."""
    return module.split(".")[1] if module.count(".") else ""


def layer_of(graph: dict[str, set[str]]) -> dict[str, int]:
    rank = {name: level for level, name in enumerate(LAYERS, start=1)}
    return {module: rank.get(folder_of(module), 0) if folder_of(module) else 0 for module in graph}


def upward_imports(graph: dict[str, set[str]], layers: dict[str, int]) -> list[tuple[str, str]]:
    return sorted((m, t) for m, targets in graph.items() for t in targets if layers[t] > layers[m])


def test_every_module_sits_in_a_layer_folder_and_imports_only_downward():
    graph = import_graph()
    folders = {path.name for path in (SRC / "hardgen").iterdir() if path.is_dir() and path.name != "__pycache__"}
    assert sorted(folders) == sorted(LAYERS)  # every folder is a declared layer, every layer a folder
    loose = sorted(m for m in graph if m != "hardgen" and not folder_of(m))
    assert loose == []  # no module outside a layer folder (hardgen/__init__ holds only the version)
    layers = layer_of(graph)
    assert upward_imports(graph, layers) == []
    # the guide's rule, spelled out: scoring and the benchmark never import the generator
    for module, targets in graph.items():
        if folder_of(module) in ("scoring", "benchmark", "segmentation", "evaluation"):
            assert not {t for t in targets if folder_of(t) in ("generator", "pretrain")}, module


def test_an_upward_import_is_found():
    assert upward_imports({"a": {"b"}, "b": set()}, {"a": 1, "b": 2}) == [("a", "b")]
    assert upward_imports({"a": {"b"}, "b": set()}, {"a": 2, "b": 1}) == []
    assert folder_of("hardgen.scoring.score") == "scoring" and folder_of("hardgen") == ""
