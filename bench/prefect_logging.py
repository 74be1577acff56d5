"""What the Prefect run logs of training cost (pilotcommit/runner/progress.py ``TrainingLog``).

1. **Per event** (default): progress events through ``TrainingLog`` inside a real Prefect task
   (temporary API server, the run logger's API handler on): the cost of an evaluation that is
   logged, and of one that the thinning skips.
2. **Before/after** (``--code DIR [DIR ...]``): the smoke comparison (three runs, in the flow's
   process, ``budget.max_steps=12`` with an evaluation after every step, so every one is
   logged), data and warm start built first and not timed, once per code directory, in
   alternating rounds. Give a checkout without the logging (e.g. ``git archive <commit> | tar
   -x -C /tmp/before``) and this one.

    python bench/prefect_logging.py [--events 2000]
    python bench/prefect_logging.py --code /tmp/before . --rounds 2
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/_requires.py, also when loaded by path
from _common import load_average, print_environment, print_table, quiet_services  # noqa: E402
from _requires import require  # noqa: E402

quiet_services(prefect_logs=False)  # the run log's INFO lines are what is measured
require(__file__, "prefect", "torch", "pilotcommit", "flows")

TIMED_COMPARE = """
import os, sys, tempfile, time
from pathlib import Path
code = sys.argv[1]
sys.path.insert(0, code)
from prefect.settings import PREFECT_HOME, PREFECT_LOCAL_STORAGE_PATH, temporary_settings
from prefect.testing.utilities import prefect_test_harness
import flows.compare
assert flows.compare.__file__.startswith(code), flows.compare.__file__
home = Path(tempfile.mkdtemp())
with temporary_settings(updates={PREFECT_HOME: home, PREFECT_LOCAL_STORAGE_PATH: home / "s"}), \\
        prefect_test_harness(server_startup_timeout=240):
    runs, config = tempfile.mkdtemp(), f"{code}/conf/experiment/smoke.yaml"
    flows.compare.compare_flow(config_path=config, runs_dir=runs, parallel_runs=1, overrides=["budget.max_steps=1"])
    started = time.perf_counter()
    flows.compare.compare_flow(config_path=config, runs_dir=runs, parallel_runs=1, overrides=["budget.max_steps=12"])
    print(f"WALL {time.perf_counter() - started:.2f}")
"""


def per_event(events: int) -> tuple[float, float]:
    """Seconds per progress event: every one logged, and thinned to the default rate."""
    from prefect import flow, get_run_logger, task
    from prefect.settings import PREFECT_HOME, PREFECT_LOCAL_STORAGE_PATH, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    from pilotcommit.runner.progress import (
        PROGRESS_LOG_LINES,
        AllocationTally,
        EvaluationProgress,
        RunIdentity,
        TrainingLog,
    )

    @task
    def feed(lines: int) -> float:
        run = RunIdentity("grpo", 0, "m", "m")
        log = TrainingLog(run.describe(), events, None, "eval/average_accuracy", get_run_logger(),
                          sink=lambda e: None, lines=lines)
        alloc = AllocationTally(1, {"alloc/rounds": 2.0, "alloc/informative": 3.0}, {})
        started = time.perf_counter()
        for step in range(1, events + 1):
            log(EvaluationProgress(run, step, step * 64, {"eval/average_accuracy": 0.5}, alloc))
        return (time.perf_counter() - started) / events

    @flow
    def measure() -> tuple[float, float]:
        return feed(events * 10), feed(PROGRESS_LOG_LINES)

    home = Path(tempfile.mkdtemp())
    with temporary_settings(updates={PREFECT_HOME: home, PREFECT_LOCAL_STORAGE_PATH: home / "s"}), \
            prefect_test_harness(server_startup_timeout=240):
        return measure()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000, help="progress events per measurement")
    parser.add_argument("--code", nargs="+", type=Path, help="code directories to time the smoke compare of")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    load_before = load_average()
    if not args.code:
        logged, thinned = per_event(args.events)
        print_table(("event", "cost"), [("evaluation logged (run logger, API handler)", f"{logged * 1e6:,.0f} us"),
                                        ("evaluation thinned out", f"{thinned * 1e6:,.1f} us")])
    else:
        walls: dict[Path, list[float]] = {c.resolve(): [] for c in args.code}
        for _ in range(args.rounds):
            for code in walls:
                done = subprocess.run([sys.executable, "-c", TIMED_COMPARE, str(code)], capture_output=True,
                                      text=True, env={**os.environ, "PYTHONPATH": str(code)}, check=True)
                walls[code].append(float(done.stdout.split("WALL")[-1]))
        print_table(("code", "smoke compare, 3 runs x 12 steps, s (each round)"),
                    [(code, ", ".join(f"{v:.1f}" for v in values)) for code, values in walls.items()])
    print_environment(load_before, libraries=("prefect",))


if __name__ == "__main__":
    main()
