"""The house's layout: no import cycle and no upward import.

Every module is imported alone in a fresh interpreter (an import cycle that only some import
orders hide fails there), and every import in the source, at module level or inside a function
(imports only for type checkers excepted), must follow the allowed direction below: the inference
core at the bottom, delivery (``cli``) on top. Each package's ``__init__`` docstring says the same
in words.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import fracsight

SOURCE = Path(fracsight.__file__).parent
CORE = {"decide", "preprocess", "model_card", "explain", "finding", "inference"}
# Part of fracsight -> the parts it may import. "fracsight" is the package's front door (analyse);
# every part may import the package itself for __version__ only.
ALLOWED: dict[str, set[str]] = {
    "io": set(),
    "reporting": set(),
    "preprocess": {"io"},  # its refusal (NotAnalysable) is a kind of io.RefusedInput
    "decide": set(),
    "model_card": {"decide"},
    "explain": {"io", "preprocess", "decide", "model_card"},
    "finding": {"io", "preprocess", "decide", "model_card", "explain"},
    "inference": {"io", "preprocess", "decide", "model_card", "finding"},
    "fracsight": {"io", "preprocess", "finding", "inference"},
    "data": {"io", "reporting"},
    "evaluation": {"io", "reporting", "data", *CORE},
    "reader_study": {"reporting", "data", "evaluation", "decide", "model_card"},
    "training": {"io", "data", "evaluation", "preprocess", "decide", "model_card"},
    # Delivery: the services and the Ray engine wrap the core; the command line wraps everything.
    "service": {"io", "data", *CORE},
    "batch": {"io", *CORE},
    "cli": {
        "io",
        "batch",
        "reporting",
        "data",
        "evaluation",
        "reader_study",
        "training",
        "service",
        *CORE,
        "fracsight",
    },
    "__main__": {"cli"},
}


def _module(path: Path) -> str:
    parts = ["fracsight", *path.relative_to(SOURCE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module(p): p for p in sorted(SOURCE.rglob("*.py"))}


def _part(module: str) -> str:
    """fracsight.evaluation.metrics -> evaluation; fracsight -> fracsight."""
    return module.split(".")[1] if "." in module else module


def _imports(path: Path, module_level_only: bool) -> list[tuple[int, str, list[str]]]:
    """(line, imported module, names) of each fracsight import, skipping ``if TYPE_CHECKING:`` blocks."""
    found: list[tuple[int, str, list[str]]] = []
    pending: list[ast.AST] = [ast.parse(path.read_text())]
    while pending:
        for child in ast.iter_child_nodes(pending.pop()):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if module_level_only and isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            if isinstance(child, ast.ImportFrom) and (child.module or "").split(".")[0] == "fracsight":
                found.append((child.lineno, str(child.module), [a.name for a in child.names]))
            elif isinstance(child, ast.Import):
                found += [(child.lineno, a.name, []) for a in child.names if a.name.startswith("fracsight")]
            pending.append(child)
    return found


def test_imports_follow_the_layout() -> None:
    wrong = []
    for module, path in MODULES.items():
        part = _part(module)
        for line, target, names in _imports(path, module_level_only=False):
            submodules = [f"{target}.{name}" for name in names if f"{target}.{name}" in MODULES]
            for imported in submodules or [target]:
                to = _part(imported)
                if to == part or (imported == "fracsight" and names == ["__version__"]):
                    continue
                if to not in ALLOWED[part]:
                    wrong.append(f"{path.relative_to(SOURCE.parent)}:{line}: {part} imports {imported}")
    assert not wrong, "imports against the layout:\n" + "\n".join(wrong)


def test_no_module_level_import_cycle() -> None:
    edges: dict[str, set[str]] = defaultdict(set)
    for module, path in MODULES.items():
        for _, target, names in _imports(path, module_level_only=True):
            submodules = {f"{target}.{name}" for name in names} & MODULES.keys()
            edges[module] |= submodules or ({target} & MODULES.keys())
    # Depth-first search for a back edge; the path to it is the cycle.
    state: dict[str, int] = {}

    def visit(module: str, trail: list[str]) -> list[str] | None:
        state[module] = 1
        for target in sorted(edges[module]):
            if state.get(target) == 1:
                return [*trail[trail.index(target) :], target] if target in trail else [module, target]
            if target not in state and (cycle := visit(target, [*trail, target])):
                return cycle
        state[module] = 2
        return None

    for module in MODULES:
        if module not in state and (cycle := visit(module, [module])):
            pytest.fail("import cycle: " + " -> ".join(cycle))


def _import_alone(module: str) -> tuple[str, str | None]:
    done = subprocess.run(
        [sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=300
    )
    return module, None if done.returncode == 0 else done.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_every_module_imports_alone_in_a_fresh_interpreter() -> None:
    modules = [m for m in MODULES if not m.endswith("__main__")]  # those run the command line
    with ThreadPoolExecutor(max_workers=4) as pool:
        failed = [f"{m}: {err}" for m, err in pool.map(_import_alone, modules) if err]
    assert not failed, "modules that do not import alone:\n" + "\n".join(failed)


def test_every_package_says_what_it_owns_and_must_not_import() -> None:
    for init in sorted(SOURCE.glob("*/__init__.py")):
        text = ast.get_docstring(ast.parse(init.read_text())) or ""
        if init.parent.name in ("models", "samples", "io"):  # data folders; io documents itself
            continue
        assert "import" in text.lower(), (
            f"{init.relative_to(SOURCE.parent)}: the docstring says nothing of imports"
        )
