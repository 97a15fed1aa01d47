"""The code's shape, checked: imports flow one way, no cycles, no module too long to read.

- `hpsearch` uses `trainables` and `search_spaces`; `trainables` never imports `hpsearch` or
  `reports`; `reports` reads result files and imports neither `hpsearch` nor any of
  `trainables` but its two stdlib-only utilities (the atomic writer and the error types).
- No import cycle among the project's modules. Imports under `if TYPE_CHECKING:` are for the
  type checker only and never run, so they do not count; imports inside functions do.
- No module in `hpsearch/`, `trainables/` or `reports/` over 500 lines.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("hpsearch", "trainables", "reports", "search_spaces")
MAX_LINES = 500
REPORTS_MAY_IMPORT = {"trainables", "trainables.atomic", "trainables.errors"}


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node except what sits under `if TYPE_CHECKING:`."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                yield child
                yield from _runtime_nodes(child)
            continue
        yield node
        yield from _runtime_nodes(node)


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules `name` imports at run time (a package counts as its __init__)."""
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            targets = [prefix] + [f"{prefix}.{a.name}" for a in node.names]
        explicit = set()  # names taken from a package's facade itself (not its submodules)
        if isinstance(node, ast.ImportFrom) and targets:
            if any(t not in modules for t in targets[1:]):
                explicit.add(targets[0])
            targets = targets[1:] + [targets[0]]
        for target in targets:
            # importing a.b.c runs a, a.b and a.b.c; the packages this module lives in are
            # already being imported, so they count only when named for their own contents
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                candidate = ".".join(parts[:i])
                if candidate not in modules or candidate == name:
                    continue
                if name.startswith(candidate + ".") and candidate not in explicit:
                    continue
                out.add(candidate)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
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
            visit(v)
    return found


def _strip_package_inits(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The graph without edges from a package to its own submodules.

    `from trainables.minbert.x import y` runs `trainables/__init__` and
    `trainables/minbert/__init__` first; a package facade that re-exports its submodules
    (`from pkg.mod import thing`) is the usual shape, not a cycle of design. Edges from a
    submodule to its own package's facade do count.
    """
    return {
        name: {d for d in deps if not d.startswith(name + ".")} for name, deps in graph.items()
    }


def test_the_scan_sees_every_package():
    graph = _graph()
    assert {"hpsearch", "trainables", "reports"} <= set(graph)
    assert len(graph) > 30
    assert any(
        dep.startswith("trainables")
        for dep in graph["hpsearch.cli"]
        | set().union(*(graph[m] for m in graph if m.startswith("hpsearch")))
    )


def test_no_import_cycles():
    cycles = _cycles(_strip_package_inits(_graph()))
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_imports_flow_one_way():
    bad = []
    for name, deps in _graph().items():
        for dep in deps:
            top = dep.split(".")[0]
            if name.startswith("trainables") and top in ("hpsearch", "reports"):
                bad.append(f"{name} imports {dep}")
            if name.startswith("reports"):
                if top == "hpsearch" or (top == "trainables" and dep not in REPORTS_MAY_IMPORT):
                    bad.append(f"{name} imports {dep}")
            if name.startswith("search_spaces") and top != "search_spaces":
                bad.append(f"{name} imports {dep}")
    assert not bad, bad


def test_no_module_over_the_line_limit():
    long = {
        str(path.relative_to(REPO)): n
        for path in _modules().values()
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"
