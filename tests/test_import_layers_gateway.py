"""The import graph outside the server shows the architecture: no circles, and nothing imports upwards.

Layers, lowest first: ``sep2`` and ``xsd`` (the shared 2030.5 model, file helpers) and ``fieldbus``
(device register maps the gateway drives and the simulators serve), ``certs`` (PKI), then the parts,
``gateway``, ``simulators`` and ``aggregator``, which import none of each other nor ``server`` (except that
the aggregator may read a derlink server's database through ``server.store``: the Boffer portfolio from the
server's own data), and at the top ``derlink`` (the command and the demo, which drives all parts). Every
import counts: at module level, inside functions and under TYPE_CHECKING, because each is a dependency of
the design even where Python would tolerate the circle. The server package has its own test
(tests/test_import_layers.py).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("sep2", "xsd", "fieldbus", "certs", "gateway", "simulators", "aggregator", "server", "derlink")
# What each package may import from the project, besides itself.
ALLOWED: dict[str, set[str]] = {
    "sep2": set(),
    "xsd": {"sep2"},
    "fieldbus": set(),
    "certs": {"sep2"},
    "gateway": {"sep2", "xsd", "fieldbus", "certs"},
    "simulators": {"sep2", "xsd", "fieldbus"},
    "aggregator": {"sep2", "xsd", "certs", "server"},  # aggregator/boffer/from_store.py reads server.store
    "server": {"sep2", "xsd", "certs"},
    "derlink": set(PACKAGES),
}


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (``from pkg import submodule`` counts as the submodule)."""
    mods = modules()

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package[: len(package) - node.level + 1]
                    base = ".".join(parent + ([node.module] if node.module else []))
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.append(sub if sub in mods else base)
            edges |= {t for t in map(resolve, targets) if t is not None and t != name}
        graph[name] = edges
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
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
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_circle_finder_finds_a_circle() -> None:
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles_outside_the_server() -> None:
    graph = import_graph()
    outside = {m: e for m, e in graph.items() if not m.startswith("server")}
    assert circles(outside) == []


@pytest.mark.parametrize("package", [p for p in PACKAGES if p != "derlink"])
def test_nothing_imports_upwards(package: str) -> None:
    upward = {
        f"{module} -> {target}"
        for module, targets in import_graph().items()
        if module.split(".")[0] == package
        for target in targets
        if target.split(".")[0] not in ALLOWED[package] | {package}
    }
    assert sorted(upward) == []
