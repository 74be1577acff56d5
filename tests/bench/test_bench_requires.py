"""Every bench script checks its dependencies before any work and, when one is missing, exits
with one line naming it and the install command (bench/_requires.py).

A missing package is simulated by ``sys.modules[name] = None`` in the child interpreter (an
import of it then fails as if it were not installed), so the test means the same on a machine
that has every extra.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
SCRIPTS = sorted(p for p in BENCH.glob("*.py") if not p.name.startswith("_"))

RUNNER = """
import runpy, sys
blocked, path, *args = sys.argv[1:]
for name in blocked.split(","):
    sys.modules[name] = None
sys.argv = [path, *args]
runpy.run_path(path, run_name="__main__")
"""


def run_without(blocked: list[str], script: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", RUNNER, ",".join(blocked), str(script), *args],
                          capture_output=True, text=True, timeout=300, cwd=BENCH.parent)


def test_every_bench_script_is_covered():
    assert {p.name for p in SCRIPTS} >= {"throughput.py", "overhead.py", "sample_efficiency.py",
                                         "engine_throughput.py", "eval_precision.py", "reward_coverage.py"}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_without_the_project_installed_one_line_names_it(script):
    done = run_without(["pilotcommit"], script)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines == [f'{script.name}: pilotcommit not installed; install with: pip install -e "."'], done.stderr
    assert done.stdout == ""


def test_throughput_without_trl_names_the_bench_extra_before_any_work():
    done = run_without(["trl"], BENCH / "throughput.py", "--sides", "ours", "trl", "--steps", "1")
    assert done.returncode == 2, done.stdout + done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("throughput.py: trl") and "needed for the sides trl" in line, line
    assert line.endswith('install with: pip install -e ".[bench]"'), line
    assert "Traceback" not in done.stderr and done.stdout == ""  # nothing ran before the check


def test_learner_lengths_without_trl_names_the_bench_extra_before_any_work():
    done = run_without(["trl"], BENCH / "learner_lengths.py", "--models", "demo")
    assert done.returncode == 2, done.stdout + done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("learner_lengths.py: trl") and "needed for the side trl" in line, line
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_install_hint_maps_modules_to_extras():
    sys.path.insert(0, str(BENCH))
    try:
        from _requires import install_hint
    finally:
        sys.path.remove(str(BENCH))
    assert install_hint(["trl", "accelerate"]) == 'pip install -e ".[bench]"'
    assert install_hint(["vllm", "torch"]) == 'pip install -e "." and pip install -e ".[vllm]"'
