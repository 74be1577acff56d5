"""The run loop sits below the stage functions: ``pilotcommit.loop`` never imports
``pilotcommit.pipeline`` (which calls it), at module level or inside a function."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "pilotcommit"


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_the_loop_source_never_imports_the_pipeline():
    assert not {m for m in _imported_modules(PACKAGE / "loop.py") if m.startswith("pilotcommit.pipeline")}


def test_importing_the_loop_does_not_load_the_pipeline():
    code = "import sys, pilotcommit.loop; print('pilotcommit.pipeline' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
