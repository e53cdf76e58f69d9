"""The shape of tasks/: layers without import cycles, every module importable on its own, modules short.

These need no lab. The import graph is read statically with `ast` and
counts every import of a tasks module anywhere in a file: at module level,
inside functions and under TYPE_CHECKING. A lazy or typing-only import is
exactly how a cycle hides until the one entry point that trips over it.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TASKS = ROOT / "tasks"
MAX_LINES = 400
# Our own top-level packages: never preloaded by the import check below.
PROJECT = {p.name for p in ROOT.iterdir() if p.is_dir() and any(p.glob("*.py"))}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def tasks_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(TASKS.rglob("*.py")) if "__pycache__" not in p.parts}


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module a `from ... import` reads from (relative imports included)."""
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imported_modules(path: Path, module: str, known: set[str]) -> set[str]:
    """Every tasks module that `path` imports, wherever the import statement is."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def nearest_known(name: str) -> str | None:
        # `import tasks.audit.query` imports tasks.audit.query; an attribute
        # path that is not a module counts as its nearest module.
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if (target := nearest_known(alias.name)) is not None:
                    found.add(target)
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(module, is_package, node)
            for alias in node.names:
                # `from tasks import audit` imports the module tasks.audit;
                # `from tasks.audit import AuditRecord` imports tasks.audit.
                target = nearest_known(f"{source}.{alias.name}") or nearest_known(source)
                if target is not None:
                    found.add(target)
    found.discard(module)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = tasks_modules()
    known = set(modules)
    return {m: imported_modules(p, m, known) for m, p in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a path a -> b -> ... -> a) per strongly connected component that has one."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []
    counter = 0

    def strongconnect(v: str) -> None:  # Tarjan; tasks/ is small enough for recursion
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)

    cycles = []
    for component in components:
        # A shortest way back to the start, inside the component, reads best.
        start = min(component)
        paths = {start: [start]}
        frontier = [start]
        cycle = None
        while frontier and cycle is None:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v] & component):
                    if w == start:
                        cycle = paths[v] + [start]
                        break
                    if w not in paths:
                        paths[w] = paths[v] + [w]
                        nxt.append(w)
                if cycle:
                    break
            frontier = nxt
        cycles.append(cycle or sorted(component))
    return cycles


def test_the_cycle_finder_finds_a_cycle():
    # Guards the guard: a finder that never reports would make the next test pass vacuously.
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_the_import_graph_sees_lazy_and_typing_only_imports(tmp_path):
    src = tmp_path / "m.py"
    src.write_text(
        "from typing import TYPE_CHECKING\n"
        "from tasks import audit\n"
        "from . import ssh\n"
        "if TYPE_CHECKING:\n    from tasks.steps import Assessment\n"
        "def f():\n    import tasks.audit.query\n    from tasks.audit import AuditRecord\n"
    )
    known = {"tasks.audit", "tasks.audit.query", "tasks.ssh", "tasks.steps", "tasks.m"}
    assert imported_modules(src, "tasks.m", known) == {"tasks.audit", "tasks.audit.query", "tasks.ssh", "tasks.steps"}


def test_tasks_has_no_import_cycles():
    graph = import_graph()
    assert len(graph) > 10, "the graph should hold every module of tasks/"
    cycles = find_cycles(graph)
    assert not cycles, "import cycles in tasks/ (lazy and TYPE_CHECKING imports count):\n" + "\n".join(
        "  " + " -> ".join(c) for c in cycles
    )


# Preloads the third-party libraries (Prefect takes seconds to import) once,
# then forks one child per module: each child starts with no tasks module
# loaded and imports just its one, so a module that only imports as part of
# a lucky order fails here. Two at a time: the machine has two cores.
_IMPORT_EACH = r"""
import importlib, json, os, sys, traceback
preload, modules = json.loads(sys.argv[1]), json.loads(sys.argv[2])
for name in preload:
    try:
        importlib.import_module(name)
    except Exception:
        pass
assert not [m for m in sys.modules if m.split(".")[0] in json.loads(sys.argv[3])], "a preload imported our code"
sys.stdout.flush()
running = {}
def reap():
    pid, status = os.wait()
    running.pop(pid)
for m in modules:
    while len(running) >= 2:
        reap()
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module(m)
            line = {"module": m, "ok": True}
        except BaseException:
            line = {"module": m, "ok": False, "error": traceback.format_exc()[-3000:]}
        os.write(1, (json.dumps(line) + "\n").encode())
        os._exit(0)
    running[pid] = m
while running:
    reap()
"""


def third_party_imports(paths: list[Path]) -> list[str]:
    """Modules outside the project that tasks/ imports at import time (worth preloading once)."""
    names: set[str] = set()
    for path in paths:
        tree = ast.parse(path.read_text(), str(path))
        todo = list(tree.body)
        while todo:
            node = todo.pop()
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue  # runs later, not at import
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names.add(node.module)
            todo.extend(ast.iter_child_nodes(node))
    return sorted(n for n in names if n.split(".")[0] not in PROJECT and n != "__future__")


def test_every_module_of_tasks_imports_on_its_own():
    modules = tasks_modules()
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", _IMPORT_EACH, json.dumps(third_party_imports(list(modules.values()))),
         json.dumps(sorted(modules)), json.dumps(sorted(PROJECT))],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = {r["module"]: r for r in map(json.loads, proc.stdout.splitlines())}
    assert set(results) == set(modules), f"no answer from {sorted(set(modules) - set(results))}"
    failed = {m: r["error"] for m, r in results.items() if not r["ok"]}
    assert not failed, "modules that do not import on their own:\n" + "\n".join(f"--- {m}\n{e}" for m, e in failed.items())
    assert time.monotonic() - started < 60


def test_no_module_of_tasks_is_over_400_lines():
    long = {m: n for m, p in tasks_modules().items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them by what they do): {long}"
