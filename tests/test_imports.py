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
    assert {"hardgen.report", "hardgen.gallery", "hardgen.generate", "hardgen.mining"} <= set(graph)
    assert "hardgen.io" in graph["hardgen.report"]  # the graph sees imports (a test that can fail)
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


#: The package's layers, bottom up (docs/architecture.md): a module imports only from its own layer or below. Scoring
#: and the segmentation benchmark (layer 4) sit below the generator (layer 5), so they never depend on how samples
#: were made; the report reads everything from the top. A new module must be placed here.
LAYERS: dict[int, set[str]] = {
    1: {"registry", "layout", "io", "weights", "devices", "logging_utils"},
    2: {"config", "archs", "archs.common", "archs.pranet", "archs.polyp_pvt", "archs.hf_segformer", "base_model",
        "control_lora", "control_lora.model", "control_lora.adapters", "control_lora.files", "control_lora.pipeline",
        "sampling"},
    3: {"data", "conditioning", "train_data", "train_settings", "metrics", "contrasts", "reproduction"},
    4: {"features", "fidelity", "score", "segment", "pixel_filter", "predict", "allocation", "filter",
        "benchmark_runs", "mask_following"},
    5: {"objectives", "mining", "shards", "generate", "train", "stages", "pretrain", "pretrain_adapter",
        "pretrain_decoder"},
    6: {"tables", "transfer", "gallery", "timings", "run_text", "report", "scarcity", "rehearsal", "cli"},
}


def layer_of() -> dict[str, int]:
    return {f"hardgen.{name}": level for level, names in LAYERS.items() for name in names} | {"hardgen": 0}


def upward_imports(graph: dict[str, set[str]], layers: dict[str, int]) -> list[tuple[str, str]]:
    return sorted((m, t) for m, targets in graph.items() for t in targets if layers[t] > layers[m])


def test_every_module_has_a_layer_and_imports_only_downward():
    graph, layers = import_graph(), layer_of()
    assert sorted(set(graph) - set(layers)) == []  # a new module is placed in LAYERS
    assert sorted(set(layers) - set(graph)) == []  # and LAYERS names no module that is gone
    assert upward_imports(graph, layers) == []
    # the guide's rule, spelled out: scoring and the benchmark never import the generator
    generator = {f"hardgen.{name}" for name in LAYERS[5]}
    for name in ("hardgen.score", "hardgen.filter", "hardgen.segment", "hardgen.benchmark_runs", "hardgen.metrics"):
        assert not graph[name] & generator, name


def test_an_upward_import_is_found():
    assert upward_imports({"a": {"b"}, "b": set()}, {"a": 1, "b": 2}) == [("a", "b")]
    assert upward_imports({"a": {"b"}, "b": set()}, {"a": 2, "b": 1}) == []
