"""No import circle in musicgen_local: its modules' imports of each other form no cycle, whether they run at import
time or inside a function (a circle dodged by a late import is still one)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "musicgen_local"


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Every import but those under `if TYPE_CHECKING:` (which never run). Imports inside functions count: one
    put there only to dodge a circle leaves the circle in the design."""
    typing_only = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for n in ast.walk(node)
    }
    return [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) and id(n) not in typing_only]


def import_graph() -> dict[str, set[str]]:
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names
                ]
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def test_no_import_circle_in_the_package():
    assert cycles(import_graph()) == []


def test_the_check_sees_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]
    graph = import_graph()
    assert "musicgen_local.server.auth" in graph["musicgen_local.server.stream_routes"]  # relative imports resolved


# The layers point one way (DESIGN.md): server -> engine -> (models, fast decoder, training library) -> the
# package's own modules (registry, settings, schema, inputs, tuned, ...). No folder imports one above it.
ABOVE = {
    "musicgen_local.training": ("musicgen_local.engine", "musicgen_local.server"),
    "musicgen_local.engine": ("musicgen_local.server",),
}


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for module, targets in sorted(graph.items()):
        for folder, above in ABOVE.items():
            if module == folder or module.startswith(folder + "."):
                found += [f"{module} -> {t}" for t in sorted(targets) if t.startswith(above)]
    return found


def test_the_layers_point_one_way():
    assert upward_imports(import_graph()) == []


def test_the_layer_check_sees_an_upward_import():
    graph = {"musicgen_local.training.trainer": {"musicgen_local.engine.inputs", "musicgen_local.tuned"}}
    assert upward_imports(graph) == ["musicgen_local.training.trainer -> musicgen_local.engine.inputs"]
