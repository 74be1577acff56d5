"""Evaluation noise: the held-out metric of one fixed checkpoint over sampling seeds.

    python bench/eval_precision.py [--config conf/experiment/demo.yaml] [--seeds 5] [--checkpoint DIR]

Prepares the config's data and initial policy (or takes --checkpoint), evaluates it with
``eval.seed`` = 0..N-1 and prints mean@k per seed, the mean and the standard deviation. The
comparison needs the standard deviation well below the differences it reports (<= 0.01).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/_requires.py, also when loaded by path
from _requires import require  # noqa: E402

require(__file__, "torch", "transformers", "pilotcommit")

from _common import print_environment, print_table  # noqa: E402

from pilotcommit.config import demo_config_path, load_experiment_config  # noqa: E402
from pilotcommit.pipeline import build_initial_policy, evaluate_checkpoint, prepare_data  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=demo_config_path())
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--checkpoint", type=str, default=None, help="policy dir (default: warm start)")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    cfg = load_experiment_config(args.config)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="eval-precision-"))
    prepared = prepare_data(cfg, work / "data")
    checkpoint = args.checkpoint or build_initial_policy(cfg, prepared, work / "policy")
    rows, values = [], []
    for seed in range(args.seeds):
        started = time.perf_counter()
        metrics = evaluate_checkpoint(cfg, checkpoint, prepared, seed=seed)
        values.append(metrics["eval/average_accuracy"])
        rows.append((seed, f"{values[-1]:.4f}", f"{metrics.get('eval/average_greedy_accuracy', float('nan')):.4f}",
                     f"{time.perf_counter() - started:.1f}"))
    rows.append(("mean", f"{statistics.mean(values):.4f}", "", ""))
    rows.append(("std", f"{statistics.stdev(values):.4f}" if len(values) > 1 else "-", "", ""))
    print_table(("eval seed", "mean@k", "greedy", "wall s"), rows,
                title=f"{cfg.name}: eval/average_accuracy of {checkpoint} over sampling seeds")
    print_environment()


if __name__ == "__main__":
    main()
