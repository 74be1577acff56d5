"""``pilotcommit probe`` end to end: the smoke config's initial policy, the session's real Prefect
server, a real SQLite MLflow store, the real transformers engine; and the probe library's
sampling."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from tests.conftest import SMOKE_CONFIG
from tests.integration.conftest import run_cli

pytestmark = pytest.mark.integration


def test_probe_samples_the_training_prompts_reproducibly(smoke_config, smoke_prepared, smoke_policy):
    from pilotcommit.probe import run_probe

    first = run_probe(smoke_config, smoke_prepared.train_path, smoke_policy, prompts=30, samples=6, seed=0)
    again = run_probe(smoke_config, smoke_prepared.train_path, smoke_policy, prompts=30, samples=6, seed=0)
    other = run_probe(smoke_config, smoke_prepared.train_path, smoke_policy, prompts=30, samples=6, seed=1)
    assert len(first.prompt_ids) == len(set(first.prompt_ids)) == 30
    assert all(0 <= s <= 6 for s in first.successes)
    assert (first.prompt_ids, first.successes) == (again.prompt_ids, again.successes)
    assert (first.prompt_ids, first.successes) != (other.prompt_ids, other.successes)
    # the spread is the histogram of the counts, and every configured method is predicted
    p = np.array(first.successes) / 6
    assert first.spread["at_0"] == pytest.approx(np.mean(p == 0))
    assert first.spread["at_1"] == pytest.approx(np.mean(p == 1))
    assert [pred.method for pred in first.predictions] == list(smoke_config.methods)
    # more prompts than the training set holds: all of them, once
    from pilotcommit.data.prepared import read_prompt_table

    everything = run_probe(smoke_config, smoke_prepared.train_path, smoke_policy, prompts=10_000, samples=1, seed=0)
    assert len(everything.prompt_ids) == len(set(everything.prompt_ids))
    assert len(everything.prompt_ids) == len(read_prompt_table(smoke_prepared.train_path))
    # the weak smoke policy solves some prompts and fails others (a miscounted reward would not)
    assert 0 < everything.spread["at_0"] < 1 and 0 < everything.spread["at_1"] < 1


def test_a_long_probe_reports_each_chunk_keeps_it_and_stops_between_chunks(smoke_config, smoke_prepared,
                                                                         smoke_policy, tmp_path, caplog):
    """Issue 25: a probe larger than rollout.max_rollouts_per_batch runs in chunks of prompts,
    logs progress after each, keeps each finished chunk, and honours a stop request between
    chunks; the rerun samples only what is missing and gives the uninterrupted result."""
    import logging

    from pilotcommit.probe import probe_pass_rates
    from pilotcommit.runner.progress import StopRequested, clear_stop, request_stop

    cfg = smoke_config.model_copy(update={"rollout": smoke_config.rollout.model_copy(
        update={"max_rollouts_per_batch": 30})})  # 5 prompts x 6 samples per chunk
    args = dict(prompts=20, samples=6, seed=0)
    whole = probe_pass_rates(cfg, smoke_prepared.train_path, smoke_policy, **args)

    class StopAfterFirstChunk(logging.Handler):
        def emit(self, record):
            if "chunk 0 sampled" in record.getMessage():
                request_stop()

    keep = tmp_path / "chunks"
    stopper = StopAfterFirstChunk()
    logging.getLogger("pilotcommit.probe").addHandler(stopper)
    try:
        with caplog.at_level(logging.INFO, logger="pilotcommit.probe"), pytest.raises(StopRequested, match="probe"):
            probe_pass_rates(cfg, smoke_prepared.train_path, smoke_policy, keep_dir=keep, **args)
    finally:
        logging.getLogger("pilotcommit.probe").removeHandler(stopper)
        clear_stop()
    assert "probe: 5/20 prompts x 6 samples" in caplog.text and "10/20" not in caplog.text
    assert len(list(keep.glob("chunk-*.json"))) == 1
    caplog.clear()
    from pilotcommit.runner.progress import GenerationProgress, progress_sink

    events = []
    with caplog.at_level(logging.INFO, logger="pilotcommit.probe"), progress_sink(events.append):
        resumed = probe_pass_rates(cfg, smoke_prepared.train_path, smoke_policy, keep_dir=keep, **args)
    # what the CLI's progress bar shows, chunk by chunk
    assert events == [GenerationProgress("probe", done, 20) for done in (5, 10, 15, 20)]
    assert resumed == whole
    assert "chunk 0 kept" in caplog.text and "chunk 3 sampled" in caplog.text
    assert "probe: 20/20 prompts x 6 samples" in caplog.text
    assert len(list(keep.glob("chunk-*.json"))) == 4


def test_probe_cli_prints_the_prediction_and_logs_an_mlflow_run(prefect_server, fresh_runs, tmp_path):
    from pilotcommit import tracking

    env = prefect_server.env(COLUMNS="80")
    runs = fresh_runs  # the smoke config's data and initial policy already there
    done = run_cli(["probe", "-c", str(SMOKE_CONFIG), "--runs-dir", str(runs), "--prompts", "40",
                    "--samples", "8"], env)
    assert done.returncode == 0, done.stderr + done.stdout
    out = done.stdout
    assert "pass rates of 40 prompts (8 samples each):" in out
    assert max(len(line) for line in out.splitlines()) <= 80
    for label in ("grpo", "dapo", "pilot_commit"):
        assert label in out
    flat = " ".join(out.split())  # rich wraps the recommendation at 80 columns

    client = tracking.mlflow_client(f"sqlite:///{runs / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("smoke")
    probes = client.search_runs([experiment.experiment_id], f"tags.`{tracking.TAG_KIND}` = 'probe'")
    assert len(probes) == 1
    run = probes[0]
    assert run.info.status == "FINISHED"
    recommendation = run.data.tags["pilotcommit.recommendation"]
    assert recommendation.startswith(("use ", "no clear winner", "no method")) and recommendation in flat
    metrics = run.data.metrics
    assert metrics["probe/prompts"] == 40 and metrics["probe/samples_per_prompt"] == 8
    assert math.isclose(metrics["probe/at_0"] + metrics["probe/between"] + metrics["probe/at_1"], 1.0)
    for label in ("grpo", "dapo", "pilot_commit"):
        assert f"predict/{label}/informative_groups_per_1k" in metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "probe")}
    assert {"probe/pass_rate_histogram.png", "probe/prompts.csv", "probe/predictions.csv",
            "probe/probe.json"} <= artifacts
    with open(client.download_artifacts(run.info.run_id, "probe/prompts.csv", str(tmp_path))) as f:
        table = list(csv.DictReader(f))
    assert len(table) == 40
    at_zero = np.mean([int(row["successes"]) == 0 for row in table])
    assert metrics["probe/at_0"] == pytest.approx(at_zero)

    # a bad estimator is a usage error before any compute
    bad = run_cli(["probe", "-c", str(SMOKE_CONFIG), "--runs-dir", str(tmp_path / "other"),
                   "--estimator", "guess"], env)
    assert bad.returncode == 2 and "--estimator" in bad.stderr
    assert not (tmp_path / "other").exists()


def test_measured_informative_group_rates_from_a_real_mlflow_store(tmp_path):
    from pilotcommit import tracking
    from pilotcommit.analysis.reads import informative_group_rates

    client = tracking.mlflow_client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = tracking.ensure_experiment(client, "rates", str(tmp_path / "artifacts"))
    runs = []
    # 12 steps of 512 rollouts; 20 informative groups per step, then 10 after step 10
    for seed, shift in ((0, 0), (1, 4)):
        run_id = client.create_run(experiment).info.run_id
        for step in range(1, 13):
            client.log_metric(run_id, "reward/informative_groups", (20 if step <= 10 else 10) + shift, step=step)
            client.log_metric(run_id, "rollouts/cumulative", 512 * step, step=step)
        runs.append(("grpo", run_id))
    rates = informative_group_rates(client, runs)["grpo"]
    early = [1000 * 10 * (20 + s) / (512 * 10) for s in (0, 4)]
    whole = [1000 * (10 * (20 + s) + 2 * (10 + s)) / (512 * 12) for s in (0, 4)]
    assert rates["early_per_1k"] == pytest.approx(np.mean(early))
    assert rates["per_1k"] == pytest.approx(np.mean(whole))
    assert rates["runs"] == 2


def _qwen3_math_config(tmp_path):
    """The paper's Qwen3-4B experiment (conf/experiment/paper-4b.yaml: its methods at n = 64, its
    boxed_cot template, its math reward) with the model swapped for a tiny random Qwen3 saved
    locally and the data for local files in the hub datasets' formats (no hub access here): the
    DeepMath-103K fixture as training prompts, the shipped MATH-500 rows as the benchmark."""
    import yaml
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from pilotcommit.models.tokenizer import build_char_tokenizer
    from tests.conftest import REPO_ROOT

    tokenizer = build_char_tokenizer()
    model = Qwen3ForCausalLM(Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=1024,
        tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id))
    policy = tmp_path / "qwen3-tiny"
    model.save_pretrained(policy)
    tokenizer.save_pretrained(policy)
    fixtures = REPO_ROOT / "tests" / "fixtures" / "data"
    raw = yaml.safe_load((REPO_ROOT / "conf" / "experiment" / "paper-4b.yaml").read_text())
    model_cfg = yaml.safe_load((REPO_ROOT / "conf" / "model" / "qwen3-4b-base.yaml").read_text())
    model_cfg.update(name_or_path=str(policy), label="qwen3-tiny", max_prompt_length=512)
    raw.update(
        name="probe-qwen3-math",
        model=model_cfg,
        data={"kind": "math",
              "train": {"name": "deepmath", "path": str(fixtures / "hub_deepmath.jsonl"),
                        "columns": {"problem": "question", "answer": "final_answer", "level": "difficulty"}},
              "benchmarks": [{"name": "math500", "path": str(fixtures / "shipped_math500.jsonl"),
                              "columns": {"problem": "problem", "answer": "answer"}}]},
        resources={"device": "auto", "nproc_per_node": 1},
    )
    raw["rollout"].update(engine="transformers", max_new_tokens=8)
    raw["learner"].update(dtype="float32", gradient_checkpointing=False)
    path = tmp_path / "paper-4b-tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_probe_runs_on_math_data_with_a_qwen3_config(prefect_server, tmp_path):
    """`pilotcommit probe` on the math path: a Qwen3 architecture loaded as a pretrained model,
    the DeepMath loader, the boxed_cot template and the math verifier; the paper's n = 64
    methods predicted. A random model solves nothing: every prompt at pass rate 0, no method buys
    an informative group, and the recommendation says so."""
    from pilotcommit import tracking
    from pilotcommit.config import load_experiment_config

    config = _qwen3_math_config(tmp_path)
    cfg = load_experiment_config(config)
    assert cfg.methods["grpo"].n == 64 and cfg.methods["pilot_commit"].n_pilot == 16
    env = prefect_server.env(COLUMNS="80")
    runs = tmp_path / "runs"
    done = run_cli(["probe", "-c", str(config), "--runs-dir", str(runs), "--prompts", "12", "--samples", "4",
                    "--estimator", "plug_in"], env)  # at face value: 0 of 4 is a pass rate of 0
    assert done.returncode == 0, done.stderr + done.stdout
    assert "pass rates of 12 prompts (4 samples each):" in done.stdout
    client = tracking.mlflow_client(f"sqlite:///{runs / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(cfg.tracking.experiment_name or cfg.name)
    (run,) = client.search_runs([experiment.experiment_id], f"tags.`{tracking.TAG_KIND}` = 'probe'")
    metrics = run.data.metrics
    assert metrics["probe/prompts"] == 12 and metrics["probe/at_0"] == 1.0
    for label in ("grpo", "dapo", "pilot_commit"):
        assert metrics[f"predict/{label}/informative_groups_per_1k"] == 0.0
    assert run.data.tags["pilotcommit.recommendation"].startswith("no method")
    with open(client.download_artifacts(run.info.run_id, "probe/prompts.csv", str(tmp_path))) as f:
        table = list(csv.DictReader(f))
    assert len(table) == 12 and all(row["level"] for row in table)  # DeepMath's difficulty column


def test_a_chunked_evaluation_reports_progress_and_stops_between_chunks(smoke_config, smoke_prepared,
                                                                       smoke_policy, caplog):
    """Issue 25: eval.chunk_prompts samples each held-out set in chunks, logging each, and a stop
    request ends it between chunks; without it an evaluation is one call per set, as before."""
    import logging

    from pilotcommit.pipeline import evaluate_checkpoint
    from pilotcommit.runner.progress import StopRequested, clear_stop, request_stop

    cfg = smoke_config.model_copy(update={"eval": smoke_config.eval.model_copy(update={"chunk_prompts": 4})})
    with caplog.at_level(logging.INFO, logger="pilotcommit.evaluation"):
        metrics = evaluate_checkpoint(cfg, smoke_policy, smoke_prepared, seed=0)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("evaluation (")]
    assert len(lines) >= 2 and "prompts" in lines[0]
    assert 0 <= metrics["eval/average_accuracy"] <= 1

    class StopAtFirstChunk(logging.Handler):
        def emit(self, record):
            request_stop()

    stopper = StopAtFirstChunk()
    logging.getLogger("pilotcommit.evaluation").addHandler(stopper)
    try:
        with caplog.at_level(logging.INFO, logger="pilotcommit.evaluation"), \
                pytest.raises(StopRequested, match="evaluation"):
            evaluate_checkpoint(cfg, smoke_policy, smoke_prepared, seed=0)
    finally:
        logging.getLogger("pilotcommit.evaluation").removeHandler(stopper)
        clear_stop()
    # unset, the config and its hash are what they were
    assert "chunk_prompts" not in smoke_config.eval.model_dump()
