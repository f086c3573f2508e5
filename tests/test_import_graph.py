"""The layer rule and the shape of the package, checked over the source's import graph.

Layers point one way: `agentkit.runtime` (the embedded V4 runtime) and `agentkit.tools` (tools and
sandboxes) never import the agent layer above them, so each can be used alone; nothing in the package
imports in a circle; the user-facing CLI never reaches the training code. Imports are read from the
source with `ast`, including the ones inside functions (a lazy import is still a dependency) and, for
the layer rule, those under `if TYPE_CHECKING:`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: import name -> source folder (setup.py maps runtime/ and tools/ into the agentkit namespace)
ROOTS = {
    "agentkit.runtime": REPO / "runtime",
    "agentkit.tools": REPO / "tools",
    "agentkit": REPO / "agentkit",
}
MAX_LINES = 500


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for name, root in ROOTS.items():
        for path in root.rglob("*.py"):
            rel = path.relative_to(root).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            found[".".join([name, *parts])] = path
    return found


MODULES = _modules()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(module: str) -> list[tuple[str, bool]]:
    """(imported agentkit module, only under TYPE_CHECKING) for every import in `module`'s source."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: list[tuple[str, bool]] = []

    def visit(node: ast.AST, typing_only: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, True)
            for child in node.orelse:
                visit(child, typing_only)
            return
        if isinstance(node, ast.Import):
            out.extend((alias.name, typing_only) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.append((sub if sub in MODULES else base, typing_only))
        for child in ast.iter_child_nodes(node):
            visit(child, typing_only)

    visit(ast.parse(path.read_text()), False)
    return [(m, t) for m, t in out if m == "agentkit" or m.startswith("agentkit.")]


GRAPH = {m: _imports(m) for m in MODULES}


@pytest.mark.parametrize(
    ("layer", "allowed"),
    [("agentkit.runtime", ("agentkit.runtime",)), ("agentkit.tools", ("agentkit.tools",))],
)
def test_lower_layers_never_import_the_agent_layer(layer: str, allowed: tuple[str, ...]) -> None:
    wrong = sorted(
        f"{m} imports {target}"
        for m, targets in GRAPH.items()
        if m == layer or m.startswith(layer + ".")
        for target, _ in targets
        if not any(target == a or target.startswith(a + ".") for a in allowed)
    )
    assert wrong == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            strong(v)
    return found


def test_no_import_cycles() -> None:
    runtime_edges = {
        m: {t for t, typing_only in ts if not typing_only and t in MODULES} for m, ts in GRAPH.items()
    }
    assert _cycles(runtime_edges) == []


def test_cycle_finder_finds_a_cycle() -> None:
    # the check above must be able to fail
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_cli_never_reaches_training_code() -> None:
    seen, todo = set(), ["agentkit.cli"]
    while todo:
        m = todo.pop()
        if m in seen or m not in MODULES:
            continue
        seen.add(m)
        todo.extend(t for t, typing_only in GRAPH[m] if not typing_only)
    assert sorted(m for m in seen if m.startswith("agentkit.train")) == []


def test_no_file_holds_two_ideas_silently() -> None:
    """Files over 500 lines must say in their docstring why they are one idea ("One idea: ...")."""
    long = []
    for path in MODULES.values():
        lines = path.read_text().count("\n")
        if lines > MAX_LINES:
            doc = ast.get_docstring(ast.parse(path.read_text())) or ""
            if "one idea" not in doc.lower():
                long.append(f"{path.relative_to(REPO)} ({lines} lines)")
    assert long == []
