"""The paper's configurations: every conf/model/qwen*.yaml and conf/experiment/paper-*.yaml loads
through the real loader and holds the numbers of ALGORITHMS.md.

The expected values below are typed in from ALGORITHMS.md ("Pilot-Commit (PC)", "Paper's other
settings", "Evaluation and the headline metric"), not read back from the files, so a wrong edit
of a YAML file fails here. Nothing is downloaded: the hub names are only strings at load time.
"""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest
import yaml

from pilotcommit.config import (
    DAPOConfig,
    GRPOConfig,
    ModelConfig,
    PilotCommitConfig,
    PretrainedModelConfig,
    SweepConfig,
    cell_configs,
    load_experiment_config,
    load_sweep_config,
)
from pilotcommit.rewards import overlong_penalty

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
PAPER_FILES = sorted((CONF_DIR / "experiment").glob("paper-*.yaml"))
QWEN_MODEL_FILES = sorted((CONF_DIR / "model").glob("qwen*.yaml"))

# size -> (experiment file, hub model, train set, n, n_pilot, n_commit, steps, max response,
#          overlong penalty (start, length) or None)
PAPER = {
    "1.5b": (
        "paper-1.5b",
        "Qwen/Qwen2.5-Math-1.5B",
        "deepmath",
        128,
        32,
        96,
        1000,
        8192,
        (4096, 4096),
    ),
    "4b": ("paper-4b", "Qwen/Qwen3-4B-Base", "polaris", 64, 16, 48, 500, 4096, None),
    "8b": ("paper-8b", "Qwen/Qwen3-8B-Base", "polaris", 64, 16, 48, 500, 4096, None),
    "14b": ("paper-14b", "Qwen/Qwen3-14B-Base", "polaris", 64, 16, 48, 500, 4096, None),
}
PAPER_BENCHMARK_SAMPLES = {
    "aime24": 32,
    "aime25": 32,
    "amc23": 32,
    "math500": 1,
    "minerva": 1,
    "olympiadbench": 1,
}
GPUS_PER_NODE = 8  # the paper ran on 2-4 nodes of 8 GPUs


def test_there_is_one_paper_experiment_per_model_size():
    assert {p.stem for p in PAPER_FILES} == {spec[0] for spec in PAPER.values()}
    assert {p.stem for p in QWEN_MODEL_FILES} == {
        "qwen2.5-math-1.5b",
        "qwen3-4b-base",
        "qwen3-8b-base",
        "qwen3-14b-base",
    }


@pytest.mark.parametrize("path", QWEN_MODEL_FILES, ids=lambda p: p.stem)
def test_every_qwen_model_file_is_a_bf16_pretrained_config(path: Path):
    raw = yaml.safe_load(path.read_text())
    config = pydantic.TypeAdapter(ModelConfig).validate_python(raw)
    assert isinstance(config, PretrainedModelConfig)
    # values only: every key is a field (a typo would otherwise be caught only by extra=forbid)
    assert set(raw) <= set(PretrainedModelConfig.model_fields)
    # float32 master weights (an lr-1e-6 step rounds away in bfloat16); compute is bfloat16
    assert config.dtype == "float32"
    assert config.attn_implementation in ("sdpa", "flash_attention_2")
    assert config.max_prompt_length == 2048
    assert config.prompt_template == "boxed_cot"
    assert config.name_or_path.startswith("Qwen/")
    assert config.label and config.label in path.stem


@pytest.mark.parametrize("size", sorted(PAPER), ids=str)
def test_paper_experiment_loads_with_the_papers_numbers(size: str):
    name, hub_model, train_set, n, n_pilot, n_commit, steps, max_response, penalty = PAPER[size]
    cfg = load_experiment_config(CONF_DIR / "experiment" / f"{name}.yaml")

    assert cfg.name == name
    assert isinstance(cfg.model, PretrainedModelConfig)
    assert cfg.model.name_or_path == hub_model
    assert cfg.model.max_prompt_length == 2048
    assert cfg.data.kind == "math" and cfg.data.reward == "math_verify"
    assert cfg.data.train.name == train_set
    assert {b.name: b.eval_samples for b in cfg.data.benchmarks} == PAPER_BENCHMARK_SAMPLES

    # the three methods, same batch shape (the config validator also insists on this)
    assert set(cfg.methods) == {"grpo", "dapo", "pilot_commit"}
    grpo, dapo, pc = cfg.methods["grpo"], cfg.methods["dapo"], cfg.methods["pilot_commit"]
    assert isinstance(grpo, GRPOConfig) and isinstance(dapo, DAPOConfig)
    assert isinstance(pc, PilotCommitConfig)
    for method in (grpo, dapo, pc):
        assert method.train_batch_size == 128
        assert method.group_size == n
    assert grpo.n == dapo.n == n
    for method in (dapo, pc):
        assert method.gen_batch_size == 3 * 128
        assert method.max_num_gen_batches == 10
    assert (pc.n_pilot, pc.n_commit, pc.n_pilot_effective) == (n_pilot, n_commit, None)
    assert pc.n_pilot * 4 == n  # pilots are 25% of the group
    assert (pc.p_low, pc.p_high, pc.p_evict, pc.max_off_steps) == (0.125, 0.25, 1.0, 4)
    assert pc.buffer_sampling == "max_variance"

    learner = cfg.learner
    assert (learner.lr, learner.weight_decay, learner.warmup_steps) == (1e-6, 0.1, 10)
    assert (learner.eps_low, learner.eps_high, learner.grad_clip) == (0.2, 0.28, 1.0)
    assert learner.clip_ratio_c == 10.0  # the reference scripts' dual-clip
    assert learner.loss_aggregation == "token_mean"
    assert learner.advantage_std_normalize is True
    assert learner.dtype == "bfloat16" and learner.gradient_checkpointing is True

    rollout = cfg.rollout
    assert rollout.engine == "vllm"
    assert (rollout.temperature, rollout.top_p) == (1.0, 1.0)
    assert rollout.max_new_tokens == max_response
    if penalty is None:
        assert rollout.overlong_penalty is None
    else:
        assert (rollout.overlong_penalty.start, rollout.overlong_penalty.length) == penalty
    assert GPUS_PER_NODE % rollout.vllm.tensor_parallel_size == 0
    assert rollout.vllm.enable_sleep_mode is True
    assert rollout.vllm.dtype == "bfloat16"

    assert (cfg.eval.every_steps, cfg.eval.temperature, cfg.eval.top_p) == (5, 1.0, 0.7)
    assert cfg.budget.max_steps == steps and cfg.budget.max_rollouts is None
    assert cfg.target.reference_method == "grpo" and cfg.target.accuracy is None
    assert cfg.target.metric == "eval/average_accuracy"


def test_the_overlong_penalty_of_the_1_5b_run_is_the_papers_formula():
    """min(-(L - 4096) / 4096, 0): 0 up to 4096 tokens, -0.5 at 6144, -1 at the 8192 cap."""
    cfg = load_experiment_config(CONF_DIR / "experiment" / "paper-1.5b.yaml")
    penalty = cfg.rollout.overlong_penalty

    def reward_offset(length: int) -> float:
        return overlong_penalty(length, start=penalty.start, length=penalty.length)

    assert reward_offset(4096) == 0.0
    assert reward_offset(6144) == -0.5
    assert reward_offset(cfg.rollout.max_new_tokens) == -1.0


def test_the_paper_model_scale_runs_differ_only_in_model_and_sharding():
    """4B, 8B and 14B share data, methods, learner and budget, so one sweep compares them."""
    dumps = {}
    for size in ("4b", "8b", "14b"):
        cfg = load_experiment_config(CONF_DIR / "experiment" / f"paper-{size}.yaml")
        dump = cfg.model_dump(mode="json")
        for key in ("name", "model", "tracking"):
            dump.pop(key)
        dump["rollout"]["vllm"].pop("tensor_parallel_size")
        dump.pop("resources")
        dumps[size] = dump
    assert dumps["4b"] == dumps["8b"] == dumps["14b"]


def test_a_sweep_over_the_qwen3_models_builds_every_cell():
    """The model-scale sweep: paper-4b's settings with each Qwen3 model in turn."""
    sweep = SweepConfig(
        name="paper-model-scale",
        experiment="paper-4b",
        models=["qwen3-4b-base", "qwen3-8b-base", "qwen3-14b-base"],
    )
    configs = cell_configs(sweep)
    assert [c.model.label for c in configs] == ["qwen3-4b", "qwen3-8b", "qwen3-14b"]
    assert {c.methods["pilot_commit"].group_size for c in configs} == {64}


def test_gradient_checkpointing_has_one_switch_the_learners():
    """model.gradient_checkpointing was never read; it is refused with the field to use."""
    raw = yaml.safe_load(QWEN_MODEL_FILES[0].read_text())
    with pytest.raises(pydantic.ValidationError, match="learner.gradient_checkpointing"):
        pydantic.TypeAdapter(ModelConfig).validate_python({**raw, "gradient_checkpointing": True})


def test_each_cell_of_the_qwen3_sweep_is_the_paper_file_of_its_size():
    """conf/sweep/paper-qwen3.yaml gives each model its own TP and process count: cell k equals
    conf/experiment/paper-<size>.yaml in everything but the experiment's name."""
    sweep = load_sweep_config(CONF_DIR / "sweep" / "paper-qwen3.yaml")
    cells = cell_configs(sweep)
    expected_tp = {"qwen3-4b": 1, "qwen3-8b": 2, "qwen3-14b": 4}
    for cell, size in zip(cells, ("4b", "8b", "14b"), strict=True):
        paper = load_experiment_config(CONF_DIR / "experiment" / f"paper-{size}.yaml")
        assert cell.rollout.vllm.tensor_parallel_size == expected_tp[cell.model.label]
        assert cell.resources == paper.resources and cell.resources.device == "cuda"
        assert cell.model_dump(exclude={"name", "tracking"}) == paper.model_dump(exclude={"name", "tracking"})
