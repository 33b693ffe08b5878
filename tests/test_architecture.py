"""The packages' layering, checked: data flows one way (stream -> snapshots -> aligner) and no module imports
itself back through others. Imports inside functions count (a lazy import is still a dependency); imports for
type checking only do not."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAYERS = ("stream", "snapshots", "aligner")  # each may import only the ones before it
# Inside aligner/, lowest first: a part may import its own modules and those of the parts before it. The shared
# vocabulary (config, logs, runtime, update) sits at the bottom; the package's __init__ re-exports the client.
ALIGNER_PARTS = (("config", "logs", "runtime", "update"), ("model", "matching"), ("engine", "publish"), ("tools",),
                 ("service",), ("bench",), ("cli",))


def module_imports() -> dict[str, set[str]]:
    """Every module of the three packages -> the modules of the three it imports."""
    modules = {}
    for package in LAYERS:
        for path in (REPO / package).rglob("*.py"):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
            modules[name] = path
    edges: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        type_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                     and ast.unparse(block.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
                     for n in ast.walk(block)}
        for node in ast.walk(tree):
            if id(node) in type_only:
                continue
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            edges[name] |= {t for t in targets if t in modules and t != name}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan).

    >>> cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}})
    [['a', 'b']]
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


@pytest.fixture(scope="module")
def edges() -> dict[str, set[str]]:
    return module_imports()


def test_no_module_imports_itself_back(edges):
    assert cycles(edges) == []


def test_data_flows_one_way_stream_snapshots_aligner(edges):
    layer = {name: LAYERS.index(name.split(".")[0]) for name in edges}
    upward = sorted(f"{a} -> {b}" for a, targets in edges.items() for b in targets if layer[b] > layer[a])
    assert upward == []


def aligner_part(module: str) -> int | None:
    """The rank of an aligner module's part in ALIGNER_PARTS; None for modules outside aligner/ and its __init__."""
    parts = module.split(".")
    if parts[0] != "aligner" or len(parts) == 1:
        return None
    return next(rank for rank, names in enumerate(ALIGNER_PARTS) if parts[1] in names)


def test_every_aligner_module_belongs_to_a_part():
    modules = [p for p in (REPO / "aligner").iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()]
    named = {name for names in ALIGNER_PARTS for name in names}
    assert sorted(p.stem for p in modules if p.stem != "__init__" and p.stem not in named) == []


def test_aligner_parts_import_downward_only(edges):
    upward = sorted(f"{a} -> {b}" for a, targets in edges.items() for b in targets
                    if aligner_part(a) is not None and aligner_part(b) is not None
                    and aligner_part(b) > aligner_part(a))
    assert upward == []


MODULE_LINES = 400  # past this a module holds more than one concern; split it along them
CLASS_LINES = 250  # past this a class is a god class: give its parts their own objects


def oversized() -> list[str]:
    """Modules and classes of the three packages over the limits, with their sizes."""
    found = []
    for package in LAYERS:
        for path in sorted((REPO / package).rglob("*.py")):
            source = path.read_text()
            name = path.relative_to(REPO).as_posix()
            if len(source.splitlines()) > MODULE_LINES:
                found.append(f"{name}: {len(source.splitlines())} lines")
            for node in ast.walk(ast.parse(source)):
                if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > CLASS_LINES:
                    found.append(f"{name}:{node.name}: {node.end_lineno - node.lineno + 1} lines")
    return found


def test_no_module_or_class_outgrows_one_concern():
    assert oversized() == []
