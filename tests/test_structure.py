"""The package's dependencies point one way: no import loops among ``src/*.py``, and exporting or serving a model
never imports the training engine.

Read from the source with ``ast`` (nothing is imported): every import counts, at module level and inside
functions alike, since a function-level import is a dependency all the same, only a later one. Imports under
``if TYPE_CHECKING:`` are left out (they never run).
"""
from __future__ import annotations

import ast
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = "src"
# What a trained model is served with: none of it may need the training engine (src/train.py) or what only
# training uses; a module not written yet is skipped.
SERVING_MODULES = ("predictor", "recognizer", "serve")


def _modules() -> dict[str, Path]:
    return {path.stem: path for path in sorted(SRC.glob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imported(tree: ast.AST, modules: set[str]) -> dict[str, int]:
    """``{module of this package: line of its first import}`` for every import in ``tree``."""
    found: dict[str, int] = {}

    def add(name: str, line: int) -> None:
        if name in modules:
            found.setdefault(name, line)

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == PACKAGE and len(parts) > 1:
                    add(parts[1], node.lineno)
        elif isinstance(node, ast.ImportFrom):
            parts = (node.module or "").split(".")
            relative_to_package = node.level == 1 or (node.level == 0 and parts[0] == PACKAGE)
            inner = parts if node.level == 1 else parts[1:]
            if relative_to_package and inner and inner[0]:
                add(inner[0], node.lineno)  # from .data import x / from src.data import x
            elif relative_to_package:
                for alias in node.names:  # from . import data / from src import data
                    add(alias.name, node.lineno)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, dict[str, int]]:
    """``{module: {module it imports: line}}`` over ``src/*.py``."""
    modules = _modules()
    names = set(modules)
    return {name: {dep: line for dep, line in _imported(ast.parse(path.read_text(encoding="utf-8")), names).items()
                   if dep != name}
            for name, path in modules.items()}


def import_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each as one loop through them."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for dep in sorted(graph.get(node, {})):
            if dep not in index:
                connect(dep)
                low[node] = min(low[node], low[dep])
            elif dep in on_stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return [_loop_through(graph, set(c)) for c in components]


def _loop_through(graph: dict[str, dict[str, int]], component: set[str]) -> list[str]:
    """One import loop inside ``component``: a shortest path from its first module back to itself."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for dep in sorted(graph[node]):
                if dep == start:
                    return paths[node] + [start]
                if dep in component and dep not in paths:
                    paths[dep] = paths[node] + [dep]
                    nxt.append(dep)
        frontier = nxt
    return sorted(component)


def reachable(graph: dict[str, dict[str, int]], start: str) -> dict[str, list[str]]:
    """Every module ``start`` imports directly or through others, with one chain of imports leading to it."""
    chains = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for dep in sorted(graph.get(node, {})):
                if dep not in chains:
                    chains[dep] = chains[node] + [dep]
                    nxt.append(dep)
        frontier = nxt
    return chains


def _describe(graph: dict[str, dict[str, int]], chain: list[str]) -> str:
    return " -> ".join(f"{a}.py:{graph[a][b]}" for a, b in zip(chain, chain[1:])) + f" -> {chain[-1]}.py"


def test_the_scan_sees_every_kind_of_import():
    """The reader itself: relative, absolute, function-level and ``from . import`` forms all count; strings,
    other packages and TYPE_CHECKING blocks do not."""
    source = '''
from __future__ import annotations
import os
from typing import TYPE_CHECKING
from .data import x
from . import model
import src.helpers
from src.images import open_image
from src import landmarks
if TYPE_CHECKING:
    from .train import optimize
else:
    from .tagging import y

def f():
    from .checkpoint import load_checkpoint
    return "from .serve import app"
'''
    modules = {"data", "model", "helpers", "images", "landmarks", "train", "tagging", "checkpoint", "serve"}
    found = set(_imported(ast.parse(source), modules))
    assert found == {"data", "model", "helpers", "images", "landmarks", "tagging", "checkpoint"}
    graph = {"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1, "d": 1}, "d": {}}
    assert import_cycles(graph) == [["a", "b", "c", "a"]]
    assert reachable(graph, "b")["d"] == ["b", "c", "d"]


def test_no_import_loops_among_the_modules():
    graph = import_graph()
    assert {"train", "predictor", "data"} <= set(graph), "the scan found none of the project's modules"
    loops = [_describe(graph, loop) for loop in import_cycles(graph)]
    assert not loops, "import loops (each line: module.py:line of the import -> ...):\n" + "\n".join(loops)


@pytest.mark.parametrize("module", SERVING_MODULES)
def test_serving_a_model_never_imports_the_training_engine(module):
    if not (SRC / f"{module}.py").exists():
        pytest.skip(f"src/{module}.py does not exist")
    graph = import_graph()
    chains = reachable(graph, module)
    assert "train" not in chains, f"src/{module}.py imports the training engine: {_describe(graph, chains['train'])}"


def test_the_clusters_decoding_tasks_never_import_torch():
    """A decoding process never loads a model: torch would cost each of them seconds at start and ~0.5 GB."""
    code = ("import sys, numpy as np; from PIL import Image; import src.cluster_io as c; "
            "Image.new('RGB', (90, 60), (10, 200, 30)).save(sys.argv[1]); "
            "out = c.decode_batch({'uri': np.array([sys.argv[1]], dtype=object), "
            "'name': np.array(['p.png'], dtype=object)}, 64, 56); "
            "assert out['image'].shape == (1, 3, 64, 64) and out['error'][0] == '', out['error']; "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run([sys.executable, "-c", code, f"{tmp}/p.png"], cwd=SRC.parent, capture_output=True,
                              text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", f"the decoding imported torch modules: {done.stdout.strip()[:300]}"
