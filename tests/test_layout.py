"""The package rules of DESIGN.md, checked on the code's own imports (read with ``ast``, nothing run)."""

from __future__ import annotations

import ast
from pathlib import Path

APP = Path(__file__).resolve().parent.parent / "app"
# Packages that must stay below the login flow and the accounts: they may not import these.
BELOW_ACCOUNTS = {"ratelimit": {"accounts", "login"}, "audit": {"accounts", "login"}}


def package_of(path: Path) -> str:
    """``app/accounts/service.py`` -> ``accounts``; a top-level module is its own package."""
    parts = path.relative_to(APP).parts
    return parts[0].removesuffix(".py")


def imported_packages(path: Path) -> set[str]:
    """The app packages a file imports, lazily (inside functions) included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "app" and len(parts) > 1:
                found.add(parts[1])
    return found


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in APP.rglob("*.py"):
        source = package_of(path)
        graph.setdefault(source, set()).update(imported_packages(path) - {source})
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every package that can reach itself, with one path that shows it."""

    def path_back(start: str) -> list[str] | None:
        stack = [(start, [start])]
        seen: set[str] = set()
        while stack:
            node, trail = stack.pop()
            for nxt in sorted(graph.get(node, ())):
                if nxt == start:
                    return [*trail, start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*trail, nxt]))
        return None

    return [trail for trail in map(path_back, sorted(graph)) if trail]


def test_the_checker_sees_a_cycle_when_there_is_one():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [
        ["a", "b", "c", "a"],
        ["b", "c", "a", "b"],
        ["c", "a", "b", "c"],
    ]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_two_packages_import_each_other_directly_or_through_others():
    assert cycles(import_graph()) == []


def test_core_imports_nothing_of_the_app():
    assert import_graph().get("core", set()) == set()


def test_ratelimit_and_audit_never_import_accounts_or_login():
    graph = import_graph()
    for package, forbidden in BELOW_ACCOUNTS.items():
        assert not graph.get(package, set()) & forbidden, f"{package} imports {graph[package] & forbidden}"


def test_the_graph_reads_real_imports():
    """Guards the checks above against passing on an empty graph."""
    graph = import_graph()
    assert {"accounts", "ratelimit", "audit"} <= graph["login"]
    assert "core" in graph["accounts"]
