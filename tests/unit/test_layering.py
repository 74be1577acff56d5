"""The layout stays what docs/orchestration.md and the README describe (issue 24): no import cycle
in the library, thin flows, no oversized module, a CLI that only parses and prints; and the run
loop sits below the stage functions."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "pilotcommit"
FLOWS = ROOT / "flows"


def _modules(folder: Path) -> dict[str, Path]:
    return {".".join(p.relative_to(folder.parent).with_suffix("").parts).removesuffix(".__init__"): p
            for p in folder.rglob("*.py")}


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at module level or inside a function, TYPE_CHECKING included."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def import_cycles(modules: dict[str, Path]) -> list[list[str]]:
    """Strongly connected components of more than one module in the import graph."""
    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {m: {o for n in _imports(p) if (o := owner(n)) and o != m} for m, p in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for module in graph:
        if module not in index:
            visit(module)
    return cycles


def code_lines(path: Path) -> int:
    """Non-blank lines that are not comments (docstrings count)."""
    return sum(1 for line in path.read_text().splitlines() if line.strip() and not line.strip().startswith("#"))


def test_no_import_cycle_in_the_library():
    assert import_cycles(_modules(PACKAGE)) == []


def test_the_cycle_check_sees_a_planted_cycle(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import x\n")
    (pkg / "b.py").write_text("def f():\n    from pkg import a\n")
    assert import_cycles(_modules(pkg)) == [["pkg.a", "pkg.b"]]


def test_flows_are_thin_and_no_module_is_oversized():
    flows = sum(code_lines(p) for p in FLOWS.glob("*.py"))
    assert flows <= 600, f"flows/ has {flows} code lines (budget 600): move library work into pilotcommit/"
    large = {str(p.relative_to(ROOT)): n for p in [*PACKAGE.rglob("*.py"), *FLOWS.glob("*.py")]
             if (n := len(p.read_text().splitlines())) > 500}
    assert not large, f"modules over 500 lines: {large}"
    cli = len((PACKAGE / "cli.py").read_text().splitlines())
    assert cli <= 450, f"cli.py has {cli} lines (budget 450): parsing and printing only"


def test_flows_hold_no_module_state():
    """Flows pass paths and records: no module-level variables but constants (UPPER_CASE)."""
    offenders = []
    for path in FLOWS.glob("*.py"):
        for node in ast.parse(path.read_text()).body:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
            for target in targets:
                if isinstance(target, ast.Name) and not target.id.isupper() and target.id != "__all__":
                    offenders.append(f"{path.name}: {target.id}")
            if isinstance(node, ast.Global):
                offenders.append(f"{path.name}: global")
    assert not offenders, offenders


def test_the_loop_never_imports_the_pipeline():
    assert not {m for m in _imports(PACKAGE / "loop.py") if m.startswith("pilotcommit.pipeline")}
    code = "import sys, pilotcommit.loop; print('pilotcommit.pipeline' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
