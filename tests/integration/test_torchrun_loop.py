"""A whole training run under ``torchrun`` with two processes (gloo, CPU, FSDP2) equals the
single-process run: same evaluations, same rollout count, same final weights (to float
rounding). Rank 0 alone writes the result and the final policy."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap

import pytest
from safetensors.torch import load_file

from pilotcommit.loop import FINAL_POLICY_DIR, RESULT_FILE, train_run
from tests.conftest import REPO_ROOT, SMOKE_CONFIG

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OVERRIDES = ["budget.max_steps=3", "checkpoint.every_steps=2"]


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun is not on PATH")
def test_two_process_run_equals_single_process(smoke_prepared, smoke_policy, tmp_path):
    from pilotcommit.config import load_experiment_config

    cfg = load_experiment_config(SMOKE_CONFIG, OVERRIDES)
    single = train_run(cfg, "pilot_commit", 0, prepared=smoke_prepared, initial_policy=smoke_policy,
                       run_dir=tmp_path / "single", resume=False)
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        from pathlib import Path
        from pilotcommit.config import load_experiment_config
        from pilotcommit.pipeline import PreparedData, train_run
        cfg = load_experiment_config({str(SMOKE_CONFIG)!r}, {OVERRIDES!r})
        train_run(cfg, "pilot_commit", 0, prepared=PreparedData.from_dict({smoke_prepared.to_dict()!r}),
                  initial_policy={smoke_policy!r}, run_dir=Path({str(tmp_path / 'sharded')!r}), resume=False)
        # the entry point owns the process group (as pilotcommit.launch does)
        from pilotcommit.learner.distributed import exit_distributed
        exit_distributed()
    """))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [shutil.which("torchrun"), "--standalone", "--nproc-per-node", "2", str(script)],
        env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    sharded = json.loads((tmp_path / "sharded" / RESULT_FILE).read_text())
    assert sharded["cumulative_rollouts"] == single.cumulative_rollouts
    assert [e["metrics"] for e in sharded["eval_history"]] == [e.metrics for e in single.eval_history]
    a = load_file(tmp_path / "single" / FINAL_POLICY_DIR / "model.safetensors")
    b = load_file(tmp_path / "sharded" / FINAL_POLICY_DIR / "model.safetensors")
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
