r"""How well the math reward recognises the shipped benchmarks' own answers, and how fast.

For every problem of the shipped MATH-500, AIME 2024, AMC 2023 and GSM8K test sets
(conf/data/benchmarks-shipped.yaml, read with the project's loader):

- gold: the reference answer wrapped in ``\boxed{}`` inside a sentence must score 1;
- other: the answer of the next problem whose answer is written differently must score 0
  (two problems with the same answer text are skipped over: the same answer is not wrong).

Prints one row per set with both rates and the per-call time (median and max, ms; the
math-verify worker is started before timing), then the time of a few pathological
completions (each must score 0 within about the 2 s limit). A benchmark, not a test:
tests/unit/test_math_reward.py asserts the thresholds. Results are recorded in
docs/data_and_rewards.md.

    python bench/reward_coverage.py [--sets math500 aime24 amc23 gsm8k]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/_requires.py, also when loaded by path
from _requires import require  # noqa: E402

require(__file__, "math_verify", "pandas", "pilotcommit")

from _common import REPO_ROOT, load_average, print_environment, print_table  # noqa: E402

from pilotcommit.data.loaders import load_prompt_table  # noqa: E402
from pilotcommit.data.specs import read_dataset_specs  # noqa: E402
from pilotcommit.rewards.math import math_reward  # noqa: E402
from pilotcommit.rewards.math_answer import (  # noqa: E402
    normalise_ground_truth,
    normalise_latex_string,
)
from pilotcommit.rewards.math_verifier import start_math_verifier  # noqa: E402

SPECS = REPO_ROOT / "conf" / "data" / "benchmarks-shipped.yaml"


def coverage(answers: list[str]) -> dict[str, float]:
    """Gold / other-answer rates and per-call timings (seconds) over one set's answers."""
    keys = [normalise_latex_string(normalise_ground_truth(a)) for a in answers]
    n = len(answers)
    gold_ok = other_ok = 0
    seconds: list[float] = []
    mismatches: list[str] = []
    for i, answer in enumerate(answers):
        started = time.perf_counter()
        gold = math_reward(f"The answer is $\\boxed{{{answer}}}$.", answer)
        seconds.append(time.perf_counter() - started)
        gold_ok += gold == 1.0
        j = next((k % n for k in range(i + 1, i + n) if keys[k % n] != keys[i]), None)
        if j is None:
            continue
        started = time.perf_counter()
        other = math_reward(f"\\boxed{{{answers[j]}}}", answer)
        seconds.append(time.perf_counter() - started)
        other_ok += other == 0.0
        if gold != 1.0:
            mismatches.append(f"gold not recognised: {answer!r}")
        if other != 0.0:
            mismatches.append(f"other answer accepted: {answers[j]!r} for {answer!r}")
    return {
        "n": n,
        "gold_rate": gold_ok / n,
        "other_rate": other_ok / n,
        "median_ms": 1000 * statistics.median(seconds),
        "max_ms": 1000 * max(seconds),
        "total_s": sum(seconds),
        "mismatches": mismatches,
    }


PATHOLOGICAL = {
    "9^9^9^9 (guard)": "\\boxed{9^9^9^9}",
    "5000 nested braces": "\\boxed{" + "{" * 5000 + "1" + "}" * 5000 + "}",
    "1 MB without a box": "lorem ipsum " * 90_000,
    "(10^{100})! (worker deadline)": "\\boxed{(10^{100})!}",
    "9^{999999999} (worker deadline)": "\\boxed{9^{999999999}}",
    "__import__ in a box": "\\boxed{__import__('os').system('true')}",
}


def pathological_timings() -> list[tuple[str, float, float]]:
    """(case, reward, seconds) for inputs built to hang or abuse a parser."""
    rows = []
    for name, completion in PATHOLOGICAL.items():
        started = time.perf_counter()
        reward = math_reward(completion, "42")
        rows.append((name, reward, time.perf_counter() - started))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="*", default=["math500", "aime24", "amc23", "gsm8k"])
    args = parser.parse_args()
    specs = {s.name: s for s in read_dataset_specs(SPECS)}
    load_before = load_average()
    start_math_verifier()
    rows, mismatches = [], []
    for name in args.sets:
        answers = list(load_prompt_table(specs[name], base_dir=REPO_ROOT).frame["answer"])
        r = coverage(answers)
        rows.append((name, r["n"], f"{r['gold_rate']:.1%}", f"{r['other_rate']:.1%}", f"{r['median_ms']:.2f}",
                     f"{r['max_ms']:.1f}", f"{r['total_s']:.2f}"))
        mismatches += [f"{name}: {line}" for line in r["mismatches"]]
    print_table(("set", "n", "gold=1", "other=0", "median ms", "max ms", "total s"), rows)
    for line in mismatches:
        print(f"    {line}")
    print_table(("pathological completion", "reward", "seconds"),
                [(name, f"{reward:.1f}", f"{seconds:.3f}") for name, reward, seconds in pathological_timings()])
    print_environment(load_before)

if __name__ == "__main__":
    main()
