"""GPU requirements of a training cell: counted from `resources` and the vLLM tensor
parallelism, and a cell that cannot get them fails before loading anything."""

from __future__ import annotations

import pytest

from pilotcommit.config import ConfigError, load_experiment_config
from pilotcommit.runner.torchrun import InsufficientGPUsError, check_gpus, gpus_needed
from tests.conftest import REPO_ROOT, SMOKE_CONFIG

CONF = REPO_ROOT / "conf"


def test_gpus_needed_counts_processes_and_tensor_parallelism():
    paper = {size: load_experiment_config(CONF / "experiment" / f"paper-{size}.yaml")
             for size in ("1.5b", "4b", "8b", "14b")}
    assert {size: gpus_needed(cfg) for size, cfg in paper.items()} == {"1.5b": 8, "4b": 4, "8b": 8, "14b": 8}
    one_process = load_experiment_config(CONF / "experiment" / "paper-14b.yaml", ["resources.nproc_per_node=1"])
    assert gpus_needed(one_process) == 4  # vLLM's TP group still needs its GPUs
    assert gpus_needed(load_experiment_config(SMOKE_CONFIG)) == 0  # device auto: CPU is fine


def test_a_cell_with_too_few_gpus_fails_with_the_numbers():
    cfg = load_experiment_config(CONF / "experiment" / "paper-8b.yaml")
    with pytest.raises(InsufficientGPUsError, match=r"cell X: model qwen3-8b needs 8 CUDA GPUs .*shows 2"):
        check_gpus(cfg, "cell X", visible=2)
    check_gpus(cfg, "cell X", visible=8)


def test_process_count_must_hold_whole_tensor_parallel_groups():
    with pytest.raises(ConfigError, match="multiple of rollout.vllm.tensor_parallel_size"):
        load_experiment_config(CONF / "experiment" / "paper-14b.yaml", ["resources.nproc_per_node=6"])


def test_a_sweep_cell_without_its_gpus_stops_before_the_store_data_or_model(tmp_path):
    """The sweep-model flow's body on this GPU-less machine: the 14B cell fails at once, and the
    runs directory stays empty (no tracking store, no data, no policy)."""
    from flows.sweep import sweep_model_flow

    runs = tmp_path / "runs"
    with pytest.raises(InsufficientGPUsError, match=r"sweep paper-qwen3, cell models\[2\]: model qwen3-14b needs 8"):
        sweep_model_flow.fn(sweep_config=str(CONF / "sweep" / "paper-qwen3.yaml"), model_index=2,
                            parent_run_id="unused", parent_key="unused", runs_dir=str(runs))
    assert not runs.exists() or not any(runs.iterdir())
