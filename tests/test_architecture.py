"""The package's shape: subpackages with one sorted face each, no import loop, no import back up
into a face from below it, and rooms of a readable size (docs/architecture.md)."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import blackbox_sdk

PACKAGE = Path(blackbox_sdk.__file__).parent
MAX_MODULE_LINES, MAX_CLASS_LINES, MAX_FUNCTION_LINES = 400, 250, 50
FACES = ["blackbox_sdk.adapter", "blackbox_sdk.budget", "blackbox_sdk.cache", "blackbox_sdk.call_log", "blackbox_sdk.limits", "blackbox_sdk.local", "blackbox_sdk.resources", "blackbox_sdk.serve", "blackbox_sdk.tuning", "blackbox_sdk._pipeline"]
EXTRAS_ONLY = [  # packages only the [hf], [adapter], [bbt] and [server] extras bring: a core install has none of them
    "accelerate", "cma", "gguf", "jinja2", "llama_cpp", "matplotlib", "numpy", "onnx", "onnxruntime", "peft", "safetensors", "torch", "tqdm",
    "transformers",
]


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that `name` imports, at any depth of its code."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join([*base, *([node.module] if node.module else [])])
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.add(sub if sub in modules else target)
        elif isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
    return {t for t in out if t in modules and t != name}


def _graph() -> dict[str, set[str]]:
    """The package's import graph."""
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_no_import_loop() -> None:
    graph = _graph()
    done: set[str] = set()

    def visit(node: str, trail: list[str]) -> None:
        if node in trail:
            pytest.fail("import loop: " + " -> ".join([*trail[trail.index(node):], node]))
        if node in done:
            return
        for target in sorted(graph[node]):
            visit(target, [*trail, node])
        done.add(node)

    for name in sorted(graph):
        visit(name, [])


def test_no_module_imports_a_face_above_it() -> None:
    back_up = [(name, target) for name, targets in _graph().items() for target in targets if name.startswith(target + ".")]
    assert back_up == []


def test_rooms_are_of_a_readable_size() -> None:
    too_big = []
    for name, path in _modules().items():
        source = path.read_text()
        if len(source.splitlines()) > MAX_MODULE_LINES:
            too_big.append(f"module {name}: {len(source.splitlines())} lines")
        for node in ast.walk(ast.parse(source)):
            size = getattr(node, "end_lineno", 0) - getattr(node, "lineno", 0) + 1
            if isinstance(node, ast.ClassDef) and size > MAX_CLASS_LINES:
                too_big.append(f"class {name}.{node.name}: {size} lines")
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and size > MAX_FUNCTION_LINES:
                too_big.append(f"function {name}.{node.name}: {size} lines")
    assert too_big == []


@pytest.mark.parametrize("face", FACES)
def test_each_face_has_one_sorted_all_whose_names_resolve(face: str) -> None:
    module = importlib.import_module(face)
    assert module.__all__ == sorted(module.__all__)
    assert len(set(module.__all__)) == len(module.__all__)
    for name in module.__all__:
        assert getattr(module, name) is not None, f"{face}.{name}"


def test_private_modules_leave_the_public_list_to_their_face() -> None:
    listing = [info.name for info in pkgutil.walk_packages([str(PACKAGE)], "blackbox_sdk.") if info.name.rsplit(".", 1)[-1].startswith("_") and not info.name.endswith("__main__") and not info.ispkg]
    with_all = [name for name in listing if "__all__" in _modules()[name].read_text()]
    assert with_all == []


def test_faces_import_without_torch() -> None:
    code = "import sys; import " + ", ".join(FACES) + "; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_faces_import_on_a_core_install() -> None:
    blocked = f"import sys; sys.modules.update(dict.fromkeys({EXTRAS_ONLY!r})); "  # as if not installed: importing one raises
    code = blocked + "import blackbox_sdk.cli, " + ", ".join(FACES)
    subprocess.run([sys.executable, "-c", code], check=True)


def test_old_import_paths_still_work_with_a_warning() -> None:
    code = (
        "import warnings; warnings.simplefilter('error', DeprecationWarning)\n"
        "try:\n    from blackbox_sdk.calllog import CallLog\nexcept DeprecationWarning as w:\n    assert 'blackbox_sdk.call_log' in str(w)\n"
        "else:\n    raise SystemExit('no warning')\n"
        "warnings.simplefilter('ignore', DeprecationWarning)\n"
        "from blackbox_sdk.calllog import CallLog\nfrom blackbox_sdk.call_log import CallLog as New\nassert CallLog is New\n"
        "from blackbox_sdk.errors import BudgetExceededError\nimport blackbox_sdk\nassert BudgetExceededError is blackbox_sdk.BudgetExceededError\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_tree_in_docs_names_every_module() -> None:
    doc = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    tree = doc.split("## The tree, one line per module", 1)[1].split("\n## ", 1)[0]
    named = {line.split()[0] for line in tree.splitlines() if line.strip().endswith(".py") or ".py " in line}
    missing = sorted(str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py") if "__pycache__" not in path.parts and path.name not in named)
    assert missing == []
