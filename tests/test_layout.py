"""Rules of the code base that no type checker or import contract sees, checked on the source.

The import direction itself is `make lint`'s (import-linter, contracts in pyproject.toml)."""

from __future__ import annotations

import ast
from pathlib import Path

APP = Path(__file__).resolve().parent.parent / "app"


def _calls(tree: ast.AST, names: set[str]) -> list[int]:
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in names
    ]


def _sources() -> list[tuple[str, ast.AST]]:
    return [
        (str(path.relative_to(APP.parent)), ast.parse(path.read_text(), str(path)))
        for path in sorted(APP.rglob("*.py"))
    ]


def test_only_units_of_work_commit():
    """The transaction rule (app/db/database.py): a unit of work is one `sessions.begin()`
    (or `engine.begin()`) block, which commits or rolls back as it ends. A `commit()` or
    `rollback()` call anywhere in app/ is a second way of doing it."""
    found = [
        f"{name}:{line}"
        for name, tree in _sources()
        for line in _calls(tree, {"commit", "rollback"})
    ]
    assert found == []


def test_the_app_state_holds_only_settings_and_services():
    """The HTTP layer reaches the process's services through one typed object
    (`Services`, app/services/container.py), not through attributes of `app.state` read by
    name: `app.state.services` and `app.state.settings` are the only two, and they are read
    in the app factory (main.py), the one dependency (api/deps.py) and the fast paths."""
    readers = {"app/main.py", "app/api/deps.py", "app/api/fast_paths.py"}
    found = []
    for name, tree in _sources():
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Attribute)
                and node.value.attr == "state"
            ):
                if node.attr not in ("services", "settings") or name not in readers:
                    found.append(f"{name}:{node.lineno} state.{node.attr}")
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "getattr"
                and isinstance(node.args[0], ast.Attribute)
                and node.args[0].attr == "state"
                and name not in readers
            ):
                found.append(f"{name}:{node.lineno} getattr(state, ...)")
    assert found == []
