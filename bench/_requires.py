"""The benchmarks' dependency check: before any work, a missing package ends the script with
one line that names it and the install command (the extra of pyproject.toml that has it),
instead of an ImportError, or a ``CalledProcessError`` from a child process, minutes later.

Every bench script calls :func:`require` at its top with the modules it imports (and again
for the optional ones a chosen option needs, e.g. ``trl`` for ``bench/throughput.py``'s TRL
sides). Deliberately only ``importlib``: this file must load when nothing else does.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

# module -> the pip argument that installs it (pyproject.toml's extras); anything else is one of
# the project's own dependencies, installed with the project
INSTALL = {
    "trl": '-e ".[bench]"',
    "accelerate": '-e ".[bench]"',
    "vllm": '-e ".[vllm]"',
}
PROJECT_INSTALL = '-e "."'


def missing_modules(modules: tuple[str, ...]) -> list[str]:
    """The modules that do not import (not installed, or broken)."""
    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def install_hint(missing: list[str]) -> str:
    commands = sorted({INSTALL.get(name.split(".")[0], PROJECT_INSTALL) for name in missing})
    return " and ".join(f"pip install {c}" for c in commands)


def require(script: str, *modules: str, needed_for: str = "") -> None:
    """Exit (status 2) with one line on stderr if any of ``modules`` does not import."""
    missing = missing_modules(modules)
    if not missing:
        return
    why = f" (needed for {needed_for})" if needed_for else ""
    names = ", ".join(missing)
    sys.stderr.write(f"{Path(script).name}: {names} not installed{why}; install with: "
                     f"{install_hint(missing)}\n")
    raise SystemExit(2)
