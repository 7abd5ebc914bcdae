"""The package's import structure: lower layers never import upper ones, and no module imports
itself back through others (function-level and TYPE_CHECKING imports count too)."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

LOWER = ("ldm.data", "ldm.modules")  # may not import ...
UPPER = "ldm.models"


def module_name(path: Path) -> str:
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    return name.removesuffix(".__init__")


def import_graph() -> dict[str, set[str]]:
    """Module -> the ldm modules it imports (an imported name that is a module counts as one)."""
    modules = {module_name(p): p for p in (ROOT / "ldm").rglob("*.py")}

    def owner(name: str) -> str:
        while name not in modules and "." in name:
            name = name.rsplit(".", 1)[0]
        return name

    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps |= {owner(a.name) for a in node.names if a.name.startswith("ldm")}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ldm"):
                deps |= {owner(f"{node.module}.{a.name}") for a in node.names}
        graph[name] = deps - {name, "ldm"}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle found by a depth-first search (each as the modules along it)."""
    found, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                found.append([*stack[stack.index(dep) :], dep])
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_data_and_modules_never_import_models():
    upward = [
        f"{name} -> {dep}"
        for name, deps in import_graph().items()
        if name.startswith(LOWER)
        for dep in deps
        if dep.startswith(UPPER)
    ]
    assert upward == []


def test_no_module_imports_itself_back():
    assert cycles(import_graph()) == []


def test_the_checks_see_a_cycle_and_an_upward_import():
    graph = import_graph()
    assert "ldm.geometry" in graph["ldm.modules.encoders.mouth"]  # a from-import of names
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
