"""The import rules of ARCHITECTURE.md §3, read from the source with `ast` (nothing is
imported): dependencies point one way, topology → agents → connectors → schemas;
schemas import none of the others; a stage never imports the topology; an adapter never
imports a stage or the topology; agents reach connectors only through the ports module;
no module imports another that (directly or not) imports it back.

Every `import` counts, also one inside a function or under `if TYPE_CHECKING:`: an import
moved into a function still ties the two modules together. Each failure names the
module, the line and the import."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# What ships in the wheel, and what only the checkout has.
SHIPPED = ("schemas", "connectors", "agents", "topology")
OURS = (*SHIPPED, "benchmarks", "tests")
PORTS = "connectors.ports"


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, dotted
    path: str  # its file, relative to the checkout
    line: int
    target: str  # the module imported, dotted (a package's __init__ is the package name)

    def __str__(self) -> str:
        return f"{self.path}:{self.line} ({self.module}) imports {self.target}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    found = {}
    for top in OURS:
        for path in sorted((ROOT / top).rglob("*.py")):
            found[module_name(path)] = path
    return found


MODULES = modules()


def resolve(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    """The absolute module a `from ... import` names (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    if not is_package:
        base.pop()
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imports_of(module: str, path: Path) -> Iterator[Import]:
    rel = str(path.relative_to(ROOT))
    tree = ast.parse(path.read_text(), filename=rel)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, rel, node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom):
            source = resolve(node, module, path.name == "__init__.py")
            for alias in node.names:
                # `from pkg import mod` imports the module pkg.mod; `from pkg import name`
                # imports pkg itself.
                sub = f"{source}.{alias.name}"
                yield Import(module, rel, node.lineno, sub if sub in MODULES else source)


ALL = sorted(
    {imp for name, path in MODULES.items() for imp in imports_of(name, path)},
    key=lambda imp: (imp.path, imp.line, imp.target),
)


def ours(target: str) -> str | None:
    """The first-level package of ours that `target` belongs to, if any."""
    top = target.split(".")[0]
    return top if top in OURS else None


def layer(name: str) -> str:
    return name.split(".")[0]


def broken(rule) -> list[str]:  # type: ignore[no-untyped-def]
    return [f"{imp}: {why}" for imp in ALL if (why := rule(imp))]


def fail_with(violations: list[str]) -> None:
    if violations:
        pytest.fail("import rules of ARCHITECTURE.md §3 broken:\n" + "\n".join(violations), pytrace=False)


def test_the_rules_see_every_layer():
    # A rule that reads no files passes for the wrong reason.
    for top in OURS:
        assert any(imp.module.split(".")[0] == top for imp in ALL), top
    assert any(imp.target == PORTS and layer(imp.module) == "agents" for imp in ALL)


def test_schemas_import_nothing_of_ours():
    def rule(imp: Import) -> str | None:
        if layer(imp.module) == "schemas" and ours(imp.target) not in (None, "schemas"):
            return "schemas import none of agents, connectors, topology"
        return None

    fail_with(broken(rule))


def test_agents_never_import_the_topology():
    def rule(imp: Import) -> str | None:
        if layer(imp.module) == "agents" and ours(imp.target) == "topology":
            return "a stage never imports the graph or the wiring (topology/)"
        return None

    fail_with(broken(rule))


def test_connectors_never_import_agents_or_the_topology():
    def rule(imp: Import) -> str | None:
        if layer(imp.module) == "connectors" and ours(imp.target) in ("agents", "topology"):
            return "an adapter never imports a stage or the topology"
        return None

    fail_with(broken(rule))


def test_agents_import_connectors_only_through_the_ports():
    def rule(imp: Import) -> str | None:
        if layer(imp.module) == "agents" and ours(imp.target) == "connectors" and imp.target != PORTS:
            return f"agents import connectors only through {PORTS}"
        return None

    fail_with(broken(rule))


def test_the_ports_import_nothing_of_ours_but_schemas():
    # Else `agents → ports → a concrete connector` would go round the rule above.
    def rule(imp: Import) -> str | None:
        if imp.module == PORTS and ours(imp.target) not in (None, "schemas"):
            return "the ports module depends on schemas only"
        return None

    fail_with(broken(rule))


def test_the_package_imports_nothing_from_the_checkout():
    # benchmarks/ and tests/ are not in the wheel; benchmarks use no test helpers.
    def rule(imp: Import) -> str | None:
        where, target = layer(imp.module), ours(imp.target)
        if where in SHIPPED and target in ("tests", "benchmarks"):
            return f"{where}/ ships in the wheel, {target}/ does not"
        if where == "benchmarks" and target == "tests":
            return "benchmarks import nothing from tests/"
        return None

    fail_with(broken(rule))


def cycles(edges: dict[str, dict[str, Import]]) -> list[list[str]]:
    """Strongly connected components with more than one module, or a module importing
    itself (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, {})))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in edges.get(node, {}):
                    found.append(sorted(component))
    return found


def test_no_import_cycle():
    edges: dict[str, dict[str, Import]] = {name: {} for name in MODULES}
    for imp in ALL:
        if imp.target in MODULES:
            edges[imp.module].setdefault(imp.target, imp)
    violations = []
    for component in cycles(edges):
        members = set(component)
        inside = [str(imp) for name in component for t, imp in edges[name].items() if t in members]
        violations.append(f"cycle among {', '.join(component)}:\n    " + "\n    ".join(inside))
    fail_with(violations)


def test_the_cycle_finder_finds_a_cycle():
    def imp(a: str, b: str) -> Import:
        return Import(a, a, 1, b)

    edges = {"a": {"b": imp("a", "b")}, "b": {"c": imp("b", "c")}, "c": {"a": imp("c", "a")}, "d": {}}
    assert cycles(edges) == [["a", "b", "c"]]
    assert cycles({"a": {"a": imp("a", "a")}}) == [["a"]]
    assert cycles({"a": {"b": imp("a", "b")}, "b": {}}) == []
