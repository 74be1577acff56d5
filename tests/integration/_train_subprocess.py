"""A training run in its own process, so that tests can kill it with SIGKILL and run it again.

    python tests/integration/_train_subprocess.py --config FILE --method M --seed S \
        --run-dir DIR --prepared PREPARED.json --initial-policy DIR \
        [--set KEY=VALUE ...] [--metrics-log FILE] [--no-resume]

It does what the ``train`` stage does (load and validate the config, read the
prepared data, :func:`pilotcommit.loop.train_run`), with two test-only
choices: the prepared data and the initial policy are given as paths (built
once by the test session and shared by every run, so a crash/resume test
costs seconds), and metrics go to a JSON-lines file, one line per call,
flushed at once, so that a killed run still leaves what it logged before it
died.

Errors the user is meant to read (bad config, bad data, missing or corrupt
checkpoint, divergence) are printed as ``error: <message>`` on stderr with
exit status 2; anything else is a bug and keeps its traceback.

Not the project's CLI: use ``pilotcommit train`` for real runs once it exists.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

USER_ERROR_EXIT = 2


class JsonLinesTracker:
    """Appends every logging call as one JSON line (the file survives a SIGKILL up to the last line)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def _write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self._write({"kind": "metrics", "step": step, "metrics": {k: float(v) for k, v in metrics.items()}})

    def log_evaluation(self, metrics: Mapping[str, float], step: int, cumulative_rollouts: int) -> None:
        self._write(
            {"kind": "evaluation", "step": step, "cumulative_rollouts": int(cumulative_rollouts),
             "metrics": {k: float(v) for k, v in metrics.items()}}
        )

    def log_prompt_stats(self, table, step: int, name: str) -> None:
        self._write({"kind": "prompt_stats", "step": step, "name": name, "rows": len(table)})

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._write({"kind": "params", "params": {k: str(v) for k, v in params.items()}})

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self._write({"kind": "artifact", "path": str(path), "artifact_path": artifact_path})

    def checkpoint_barrier(self) -> bool:
        return True  # every record is fsynced as it is written


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, type=Path, help="Experiment YAML file.")
    parser.add_argument("--method", required=True, help="Method label in the config's methods.")
    parser.add_argument("--seed", type=int, default=0, help="Run seed.")
    parser.add_argument("--run-dir", required=True, type=Path, help="Checkpoints and result.json go here.")
    parser.add_argument("--prepared", required=True, type=Path, help="JSON of a PreparedData (to_dict).")
    parser.add_argument("--initial-policy", required=True, help="Initial policy directory.")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="KEY=VALUE override.")
    parser.add_argument("--metrics-log", type=Path, default=None, help="JSON-lines metrics file.")
    parser.add_argument("--no-resume", action="store_true", help="Ignore existing checkpoints.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # imported here so that `--help` and argument errors cost no torch import
    from pilotcommit.checkpoint import CheckpointError
    from pilotcommit.config import ConfigError, load_experiment_config
    from pilotcommit.data.schema import DatasetValidationError
    from pilotcommit.loop import TrainingDivergedError, train_run
    from pilotcommit.pipeline import PreparedData
    from pilotcommit.tracking import MemoryTracker

    user_errors = (
        ConfigError, DatasetValidationError, CheckpointError, TrainingDivergedError, FileNotFoundError,
        ValueError,
    )
    try:
        cfg = load_experiment_config(args.config, overrides=args.overrides)
        prepared = PreparedData.from_dict(json.loads(args.prepared.read_text()))
        tracker = JsonLinesTracker(args.metrics_log) if args.metrics_log else MemoryTracker()
        result = train_run(
            cfg, args.method, args.seed, prepared=prepared, initial_policy=args.initial_policy,
            run_dir=args.run_dir, tracker=tracker, resume=False if args.no_resume else None,
        )
    except user_errors as err:
        print(f"error: {err}", file=sys.stderr)
        return USER_ERROR_EXIT
    print(json.dumps({"steps": result.steps, "cumulative_rollouts": result.cumulative_rollouts}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
