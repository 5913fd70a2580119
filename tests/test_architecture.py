"""The shape of the package, guarded: the top level is the recipe (one module per callback, thin),
the math lives in a Lightning-free core, and nothing reaches into Lightning's private state.

Limits: a callback module at most ``MODULE_LINES`` lines, any function at most ``FUNCTION_LINES``
code lines (blank lines, comments and docstrings not counted).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "recipe_callbacks"
MODULE_LINES = 360
FUNCTION_LINES = 60
#: Top-level modules that are not callbacks.
NOT_CALLBACKS = {"__init__.py", "__main__.py", "presets.py"}


def _modules(folder: Path = PACKAGE) -> list[Path]:
    return sorted(folder.rglob("*.py"))


def _docstring_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
        if isinstance(node, kinds) and node.body:
            first = node.body[0]
            is_doc = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
            if is_doc and isinstance(first.value.value, str):  # type: ignore[attr-defined]
                lines.update(range(first.lineno, (first.end_lineno or first.lineno) + 1))
    return lines


def function_lengths(source: str) -> dict[str, int]:
    """Code lines of every function in ``source`` (nested ones counted in their parents too).

    Example:
        >>> function_lengths('def f():\\n    \\"\\"\\"Doc.\\"\\"\\"\\n    # why\\n\\n    return 1\\n')
        {'f': 2}
    """
    tree = ast.parse(source)
    docs = _docstring_lines(tree)
    text = source.splitlines()
    code = {i for i, line in enumerate(text, 1) if line.strip() and not line.strip().startswith("#")} - docs
    return {
        node.name: len([n for n in code if node.lineno <= n <= (node.end_lineno or node.lineno)])
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    }


def test_the_core_never_imports_lightning() -> None:
    offenders = []
    for path in _modules(PACKAGE / "core"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if re.match(r"(lightning|pytorch_lightning)\b", n)]
    assert offenders == []


def test_the_core_never_imports_the_callbacks_or_the_plumbing() -> None:
    offenders = []
    for path in _modules(PACKAGE / "core"):
        for node in ast.walk(ast.parse(path.read_text())):
            module = node.module if isinstance(node, ast.ImportFrom) else None
            if module and module.startswith("recipe_callbacks") and not module.startswith("recipe_callbacks.core"):
                offenders.append(f"{path.name}: {module}")
    assert offenders == []


#: The one place that reads a private attribute of Lightning, with the reason next to it.
PRIVATE_READS_ALLOWED: dict[str, str] = {
    # loaders.user_sampler, the one read: the user's sampler inside the DDP wrapper, for FullEvalSet's coverage
    "plumbing/loaders.py": "DistributedSamplerWrapper keeps the user's sampler only as _sampler",
    # observe._attachments and detached_from_trainer: a LightningModule's _trainer/_fabric
    "plumbing/observe.py": "no public way to read a module's Trainer without raising, nor to detach its Fabric",
}


def test_nothing_reaches_into_private_lightning_state() -> None:
    offenders = []
    private = re.compile(
        r"\btrainer\._[a-z]|[\"']_(sampler|trainer|fabric)[\"']|\._(trainer|fabric)\b(?!_)|lightning\.[\w.]*\._[a-z]"
        r"|from lightning[\w.]* import _"
    )
    for path in _modules():
        rel = str(path.relative_to(PACKAGE))
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if private.search(line) and rel not in PRIVATE_READS_ALLOWED:
                offenders.append(f"{rel}:{number}: {line.strip()}")
    assert offenders == []


#: Modules and functions still over the limits (empty when the package has its final shape).
NOT_YET: set[str] = set()


def test_callback_modules_are_short() -> None:
    long = {
        path.name: len(path.read_text().splitlines())
        for path in PACKAGE.glob("*.py")
        if path.name not in NOT_CALLBACKS and len(path.read_text().splitlines()) > MODULE_LINES
    }
    assert {name: n for name, n in long.items() if name not in NOT_YET} == {}


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_functions_are_short(path: Path) -> None:
    long = {name: n for name, n in function_lengths(path.read_text()).items() if n > FUNCTION_LINES}
    rel = str(path.relative_to(PACKAGE))
    assert {name: n for name, n in long.items() if f"{rel}:{name}" not in NOT_YET} == {}
