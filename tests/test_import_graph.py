"""No import cycle between the project's modules (models/, datasets/, util/, engine.py, main.py).

The graph is read from the source (every ``import`` statement, also those inside functions and under
``if TYPE_CHECKING:``: a type-only import back is still a dependency of the design), one node per file. Importing ``a.b.c`` also runs the ``__init__`` of ``a`` and ``a.b``;
those implicit parent edges are left out, as a package re-exporting its submodules is not a cycle.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCOPE = ("models", "datasets", "util", "engine.py", "main.py")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _project_files() -> dict[str, Path]:
    files: dict[str, Path] = {}
    for entry in SCOPE:
        target = ROOT / entry
        for path in ([target] if target.is_file() else sorted(target.rglob("*.py"))):
            files[_module_name(path)] = path
    return files


def _imports(tree: ast.AST, module: str, is_package: bool) -> list[str]:
    """Absolute names each import statement refers to (module, or module.attribute for ``from`` imports)."""
    found: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[:len(package) - (node.level - 1)]
                base = ".".join(package + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.extend(f"{base}.{alias.name}" for alias in node.names)  # resolves to base when not a module
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    files = _project_files()
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        targets = set()
        for name in _imports(ast.parse(path.read_text(), str(path)), module, path.name == "__init__.py"):
            # the longest project module the name starts with (``from . import x`` may name a module or an object)
            parts = name.split(".")
            for end in range(len(parts), 0, -1):
                candidate = ".".join(parts[:end])
                if candidate in files:
                    if candidate != module:
                        targets.add(candidate)
                    break
        graph[module] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_sees_the_project_imports():
    graph = import_graph()
    assert "util.keypoint_codec" in graph["models.clickpose.feedback"]
    assert "models.clickpose.feedback" in graph["models.clickpose.clickpose"]
    assert "engine" in graph["main"]


def test_no_import_cycle_between_project_modules():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("edges, expected", [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
    ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
])
def test_find_cycle_detects_a_cycle(edges, expected):
    assert find_cycle(edges) == expected


# What each layer may import of the project: util nothing outside util; datasets and models util only (besides
# themselves); engine, main and tools anything.
LAYERS = {"util": {"util"}, "datasets": {"datasets", "util"}, "models": {"models", "util"}}
# Known exceptions, each with its reason.
ALLOWED = {
    # the Predictor resolves a run's keypoint layout from a config the way main.py does (datasets.get_metadata)
    ("models.predictor", "datasets"),
}


def _layer(module: str) -> str:
    return module.split(".")[0]


def test_layers_import_only_what_they_may():
    bad = sorted(f"{module} -> {target}" for module, targets in import_graph().items() if _layer(module) in LAYERS
                 for target in targets if _layer(target) not in LAYERS[_layer(module)]
                 and (module, _layer(target)) not in ALLOWED)
    assert not bad, "layer violations (util: util only; datasets, models: util only): " + ", ".join(bad)
