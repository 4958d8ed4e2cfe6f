"""The house's layout: no import cycle and no upward import.

Every import in the source counts: at module level, inside a function, and those only for type
checkers (a cycle a type checker sees is a cycle a reader has to untangle). Each must follow the
allowed direction below, the inference core at the bottom and delivery (``cli``) on top; and the
graph of imports between modules, inside a package as across packages, has no cycle. Every module
is also imported alone in a fresh interpreter (an import cycle that only some import orders hide
fails there). Each package's ``__init__`` docstring says the same in words.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import fracsight

SOURCE = Path(fracsight.__file__).parent
CORE = {"decide", "safety", "preprocess", "model_card", "explain", "finding", "inference"}
# Part of fracsight -> the parts it may import. "fracsight" is the package's front door (analyse);
# every part may import "_version", the leaf that holds the version (never the root for it).
ALLOWED: dict[str, set[str]] = {
    "_version": set(),
    "io": set(),
    "reporting": set(),
    "preprocess": {"io"},  # its refusal (NotAnalysable) is a kind of io.RefusedInput
    "decide": set(),
    "safety": set(),
    "model_card": {"decide", "safety"},
    "explain": {"io", "preprocess", "decide", "safety", "model_card"},
    "finding": {"io", "preprocess", "decide", "safety", "model_card", "explain"},
    "inference": {"io", "preprocess", "decide", "safety", "model_card", "finding"},
    "fracsight": {"io", "preprocess", "finding", "inference"},
    "data": {"io", "reporting"},
    "evaluation": {"io", "reporting", "data", *CORE},
    "reader_study": {"reporting", "data", "evaluation", "decide", "model_card"},
    "training": {"io", "data", "evaluation", "preprocess", "decide", "model_card"},
    # Delivery: the services and the Ray engine wrap the core; the command line wraps everything.
    # The service reports its site's measured performance with evaluation's statistics (CIs) and
    # runs reader studies with reader_study's case lists and power plan.
    "service": {"io", "data", "evaluation", "reader_study", *CORE},
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


def _modules(source: Path) -> dict[str, Path]:
    """Dotted name -> file of every module under ``source`` (a package folder)."""

    def name(path: Path) -> str:
        parts = [source.name, *path.relative_to(source).with_suffix("").parts]
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    return {name(p): p for p in sorted(source.rglob("*.py"))}


MODULES = _modules(SOURCE)


def _part(module: str) -> str:
    """fracsight.evaluation.metrics -> evaluation; fracsight -> fracsight."""
    return module.split(".")[1] if "." in module else module


def _imports(module: str, path: Path, modules: dict[str, Path]) -> list[tuple[int, str]]:
    """(line, imported module) of each import of the house in ``path``: at module level, in functions
    and under ``if TYPE_CHECKING:``; ``from package import submodule`` names the submodule, and a
    relative import is resolved against ``module``."""
    root = next(iter(modules)).split(".")[0]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            if base.split(".")[0] != root:
                continue
            submodules = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
            found += [(node.lineno, target) for target in submodules or [base]]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == root]
    return found


def _graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the modules of the house it imports (itself excluded)."""
    return {
        module: {target for _, target in _imports(module, path, modules) if target in modules} - {module}
        for module, path in modules.items()
    }


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every set of modules that import each other in a circle (strongly connected components of
    more than one module, Tarjan's algorithm without recursion), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, targets = work[-1]
            target = next(targets, None)
            if target is not None:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(edges.get(target, ())))))
                elif target in on_stack:
                    low[node] = min(low[node], index[target])
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


def test_imports_follow_the_layout() -> None:
    wrong = []
    for module, path in MODULES.items():
        part = _part(module)
        for line, imported in _imports(module, path, MODULES):
            to = _part(imported)
            if to not in (part, "_version") and to not in ALLOWED[part]:
                wrong.append(f"{path.relative_to(SOURCE.parent)}:{line}: {part} imports {imported}")
    assert not wrong, "imports against the layout:\n" + "\n".join(wrong)


def test_no_import_cycle_between_modules() -> None:
    cycles = _cycles(_graph(MODULES))
    assert not cycles, "modules that import each other in a circle:\n" + "\n".join(
        " <-> ".join(cycle) for cycle in cycles
    )


def test_the_cycle_check_sees_cycles_inside_a_package(tmp_path: Path) -> None:
    """The check itself: a circle through a function-level import, one through an import for type
    checkers only and one through a relative import are each found; a one-way chain is not."""
    house = tmp_path / "house"
    files = {
        "__init__.py": "",
        "low.py": "import house.leaf\n",
        "leaf.py": "",
        "a/__init__.py": "",
        "a/one.py": "def f():\n    from house.a import two\n",
        "a/two.py": "from house.a.one import f\n",
        "b/__init__.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from house.c import x\n",
        "c/__init__.py": "",
        "c/x.py": "from ..b import Y\n",
        "b/y.py": "",
        "d.py": "from house import e\n",
        "e.py": "from . import d\n",
    }
    for name, text in files.items():
        (house / name).parent.mkdir(parents=True, exist_ok=True)
        (house / name).write_text(text)
    assert sorted(_cycles(_graph(_modules(house)))) == [
        ["house.a.one", "house.a.two"],
        ["house.b", "house.c.x"],
        ["house.d", "house.e"],
    ]


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
