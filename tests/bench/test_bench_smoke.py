"""Every bench script runs on the current layout at its smallest size: as a subprocess
(``python bench/<script>.py <smallest args>``), it exits 0 and prints its result table (a header
line of it) and the environment block of bench/_common.py.

A smoke run, not a measurement: the sizes are the smallest each script's options allow (the
smoke experiment instead of the demo, one step, one call, one seed), so the numbers mean nothing;
what is checked is that the code of every benchmark still runs. Outputs go to a temporary folder,
never under the repository's runs/. The GPU check runs its CPU path (``--tiny``). A script that
needs a package this machine lacks (vllm) is skipped with the reason; the scripts that only time an optional side with
it (trl: bench/throughput.py, bench/learner_lengths.py) run without that side, and with it where
it is installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import copy_stages

REPO_ROOT = Path(__file__).resolve().parents[2]
BENCH = REPO_ROOT / "bench"
SCRIPTS = sorted(p.name for p in BENCH.glob("*.py") if not p.name.startswith("_"))
SMOKE_CONFIG = str(REPO_ROOT / "conf" / "experiment" / "smoke.yaml")
TIMEOUT_S = 600


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


# the smoke experiment's GRPO alone (the reference method of its target): one run to train
GRPO_ONLY = "methods=" + json.dumps({"grpo": {"name": "grpo", "n": 4, "train_batch_size": 4}})
# the candidate and one baseline: a speed-up table with one row
GRPO_AND_PC = "methods=" + json.dumps({
    "grpo": {"name": "grpo", "n": 4, "train_batch_size": 4},
    "pilot_commit": {"name": "pilot_commit", "n_pilot": 2, "n_commit": 2, "train_batch_size": 4,
                     "gen_batch_size": 12, "max_num_gen_batches": 20, "p_low": 0.125, "p_high": 0.25},
})
TRL_SIDE = ("trl",) if installed("trl") else ()


@dataclass(frozen=True)
class Smoke:
    """How to run one script small: its arguments (``{tmp}``: a fresh temporary folder), a header
    line of the table it prints, and the modules without which it cannot run at all."""

    args: tuple[str, ...]
    header: str
    needs: tuple[str, ...] = ()
    # ``{tmp}/runs`` starts with the smoke config's data and initial policy (tests/conftest.py,
    # ``smoke_stages``): the script finds them cached instead of warming up again
    cached_stages: bool = False


SMOKE = {
    "divergence.py": Smoke(("--steps", "1"), "| what | SHA-256 (first 16 hex) | loss |"),
    "engine_throughput.py": Smoke(("--calls", "1", "--max-new-tokens", "8"), "| engine | new tokens | eos bias |"),
    "eval_precision.py": Smoke(("--config", SMOKE_CONFIG, "--seeds", "2", "--workdir", "{tmp}"),
                               "| eval seed | mean@k | greedy | wall s |"),
    # the GPU check's CPU path (the same code on a tiny shape), with or without a CUDA device
    "gpu_check.py": Smoke(("--tiny",), "| measurement | value |"),
    "learner_lengths.py": Smoke(("--models", "demo", "--sides", "padded", "packed", *TRL_SIDE, "--prompts", "1",
                                 "--group", "2", "--prompt-min", "4", "--prompt-max", "8", "--max-completion", "16",
                                 "--micro-rows", "2", "--repeats", "1"),
                                "| model | side | time per update (s, median) |"),
    "learner_memory.py": Smoke(("--prompt", "4", "--completion", "8", "--hidden", "64", "--vocab", "1024",
                                "--repeats", "1", "--threads", "1"),
                               "| side | peak above inputs (GiB) | of which gradients |"),
    # --repeats 0: not the start-up pieces (imports and servers the other tests start anyway)
    "overhead.py": Smoke(("--config", SMOKE_CONFIG, "--set", "seeds=[0]", "--set", GRPO_ONLY, "--set", "probe.prompts=0",
                          "--runs-dir", "{tmp}/runs", "--repeats", "0"),
                         "| quantity | value |", cached_stages=True),
    "prefect_logging.py": Smoke(("--events", "5"), "| event | cost |"),
    "reward_coverage.py": Smoke(("--sets", "aime24"), "| set | n | gold=1 | other=0 |"),
    "sample_efficiency.py": Smoke(("--config", SMOKE_CONFIG, "--seeds", "0", "--set", GRPO_AND_PC,
                                   "--set", "probe.prompts=0", "--bootstrap", "10", "--fractions", "0.5",
                                   "--budgets", "16", "--runs-dir", "{tmp}/runs"),
                                  "| method | rollouts to target (mean ± std) | reached |", cached_stages=True),
    "throughput.py": Smoke(("--config", SMOKE_CONFIG, "--sides", "ours", "ours-all", *TRL_SIDE, "--steps", "1",
                            "--warmup", "0", "--rounds", "1", "--threads", "1", "--cache-dir", "{tmp}"),
                           "| metric | ours | ours-all"),
    # runs in .ci/run's vLLM environment (marked vllm below)
    "vllm_sampling.py": Smoke(("--calls", "1", "--max-new-tokens", "2"), "| new tokens | seeds | logprobs |",
                              needs=("vllm",)),
}


def test_every_bench_script_has_a_smoke_run():
    assert sorted(SMOKE) == SCRIPTS


def script_env(tmp: Path) -> dict[str, str]:
    """This environment without the Prefect and MLflow settings of the caller (a script's
    Prefect keeps its history under ``tmp``), offline, with a plotting backend for files."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.pop("PILOTCOMMIT_RUNS_DIR", None)
    env.update(PREFECT_HOME=str(tmp / "prefect-home"), HF_HUB_OFFLINE="1", MPLBACKEND="Agg",
               TOKENIZERS_PARALLELISM="false")
    return env


@pytest.mark.slow
@pytest.mark.parametrize("script", [pytest.param(s, marks=pytest.mark.vllm) if "vllm" in SMOKE[s].needs else s
                                    for s in SCRIPTS])
def test_bench_script_runs_at_its_smallest_size(script, tmp_path, request):
    smoke = SMOKE[script]
    missing = [m for m in smoke.needs if not installed(m)]
    if missing:
        pytest.skip(f"bench/{script} needs {', '.join(missing)}, which is not installed")
    if smoke.cached_stages:
        copy_stages(request.getfixturevalue("smoke_stages"), tmp_path / "runs")
    args = [a.replace("{tmp}", str(tmp_path)) for a in smoke.args]
    started = time.perf_counter()
    done = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True,
                          timeout=TIMEOUT_S, cwd=REPO_ROOT, env=script_env(tmp_path))
    wall = time.perf_counter() - started
    print(f"bench/{script} {' '.join(smoke.args)}: {wall:.1f} s")
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-4000:]}\n{done.stderr[-6000:]}"
    lines = done.stdout.splitlines()
    assert any(line.startswith(smoke.header) for line in lines), f"no table {smoke.header!r}:\n{done.stdout[-4000:]}"
    assert any(line.startswith("versions: torch ") for line in lines), f"no environment block:\n{done.stdout[-4000:]}"
