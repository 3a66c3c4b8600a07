"""The package runs on every Python that pyproject.toml's `requires-python` names (3.10 up), where CI's venv has
one (3.11): no standard-library name newer than 3.10 outside a version or ImportError guard, nor a call that
3.12 and later warn about; the exception notes that 3.10 has no method for still reach the error; a SQLite
connection is never left for the collector to close (3.13 warns)."""

from __future__ import annotations

import ast
import gc
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

import blackbox_sdk
from blackbox_sdk._exceptions import BudgetExceededError, add_note
from blackbox_sdk._sqlite import ProcessConnection, connect

PACKAGE = Path(blackbox_sdk.__file__).parent
NEWER_NAMES = {  # module -> what it gained after Python 3.10
    "asyncio": {"Barrier", "BrokenBarrierError", "Runner", "TaskGroup", "timeout", "timeout_at"},
    "contextlib": {"chdir"},
    "datetime": {"UTC"},
    "enum": {"EnumCheck", "FlagBoundary", "ReprEnum", "StrEnum", "global_enum", "member", "nonmember", "verify"},
    "hashlib": {"file_digest"},
    "itertools": {"batched"},
    "logging": {"getLevelNamesMapping"},
    "operator": {"call"},
    "typing": {
        "LiteralString", "Never", "NotRequired", "ReadOnly", "Required", "Self", "TypeIs", "TypeVarTuple", "Unpack",
        "assert_never", "assert_type", "dataclass_transform", "get_overloads", "override", "reveal_type",
    },
}
NEWER_MODULES = {"tomllib"}
NEWER_BUILTINS = {"BaseExceptionGroup", "ExceptionGroup"}
NEWER_METHODS = {"add_note", "cancelling", "uncancel"}  # BaseException.add_note, Task.cancelling / uncancel (3.11)
WARNS_ON_NEWER = {"utcnow", "utcfromtimestamp", "get_event_loop"}  # DeprecationWarning from 3.12 (no running loop)


def _guarded(node: ast.AST) -> bool:
    """Whether a block is for some Pythons only: `if sys.version_info ...`, `if TYPE_CHECKING`, `try: import ... except ImportError`."""
    if isinstance(node, ast.If):
        return any(name in ast.unparse(node.test) for name in ("version_info", "TYPE_CHECKING"))
    if isinstance(node, ast.Try):
        return any(h.type is not None and "ImportError" in ast.unparse(h.type) for h in node.handlers)
    return False


def _nodes(node: ast.AST) -> Iterator[ast.AST]:
    """Every node under `node`, leaving out the blocks `_guarded` names."""
    for child in ast.iter_child_nodes(node):
        if not _guarded(child):
            yield child
            yield from _nodes(child)


def _newer(node: ast.AST) -> str | None:
    """What in `node` needs a Python newer than 3.10 (or warns on 3.12 and later), if anything."""
    if isinstance(node, ast.ImportFrom) and node.module in NEWER_NAMES:
        names = sorted(NEWER_NAMES[node.module] & {alias.name for alias in node.names})
        return f"from {node.module} import {', '.join(names)}" if names else None
    if isinstance(node, ast.Import) and NEWER_MODULES & {alias.name for alias in node.names}:
        return "import " + ", ".join(sorted(NEWER_MODULES & {alias.name for alias in node.names}))
    if isinstance(node, ast.Attribute):
        owner = node.value.id if isinstance(node.value, ast.Name) else ""
        if node.attr in NEWER_NAMES.get(owner, set()) or node.attr in NEWER_METHODS | WARNS_ON_NEWER:
            return f"{owner or '...'}.{node.attr}"
        if node.attr == "walk" and owner not in ("os", "ast"):
            return f"{owner or '...'}.walk (Path.walk is 3.12)"
    if (isinstance(node, ast.Name) and node.id in NEWER_BUILTINS) or type(node).__name__ == "TryStar":
        return ast.unparse(node).splitlines()[0]
    return None


def test_no_standard_library_name_newer_than_the_oldest_python() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in _nodes(ast.parse(path.read_text(encoding="utf-8"))):
            newer = _newer(node)
            if newer is not None:
                found.append(f"{path.relative_to(PACKAGE.parent)}:{getattr(node, 'lineno', '?')}: {newer}")
    assert found == []


def test_a_note_reaches_the_error_on_every_python() -> None:
    error = BudgetExceededError("over", spent=1.0, reserved=0.0, limit=1.0, scope="total")
    add_note(error, "first")
    add_note(error, "second")
    assert error.__notes__ == ["first", "second"]
    with pytest.raises(BudgetExceededError) as raised:
        raise error
    assert raised.value.__notes__ == ["first", "second"]


def test_a_store_dropped_unclosed_closes_its_sqlite_connection(tmp_path: Path) -> None:
    holder = ProcessConnection(lambda: connect(tmp_path / "store.db", 5.0))
    with holder.lock:
        connection = holder.get()
    del holder
    gc.collect()
    with pytest.raises(sqlite3.ProgrammingError):  # closed: on Python 3.13 a connection left open warns when collected
        connection.execute("SELECT 1")
