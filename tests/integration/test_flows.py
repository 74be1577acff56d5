"""The flows on the shared smoke comparison (tests/integration/conftest.py: ``pilotcommit
compare`` of GRPO, DAPO and Pilot-Commit, two runs at once in child processes, against the
session's real Prefect server, with a real MLflow SQLite store).

Checked: the parent run, one child per method with the tags and metric names of DESIGN.md
(by_rollouts against cumulative rollouts), artifacts and dataset inputs; the same comparison run
again served from the Prefect cache; the same runs trained in the flow's own process equal to
those trained in child processes; an evaluation of a trained checkpoint. Reruns that change what
is on disk are in test_flows_reruns.py, failures and retries in test_flows_failures.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file as safetensors_load

from tests.conftest import SMOKE_CONFIG
from tests.integration.conftest import (
    latest_flow_run_id,
    methods_override,
    mlflow_client_of,
    task_states,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CORE = ["dapo", "grpo", "pilot_commit"]  # the shared comparison's methods
DESIGN_METRICS = [
    "rollouts/sampled", "rollouts/trained", "rollouts/cumulative", "tokens/generated_cumulative",
    "alloc/rounds", "reward/mean", "reward/zero_variance_groups", "loss/policy", "loss/clip_fraction",
    "loss/approx_kl", "grad/norm", "time/generate_s", "time/learn_s", "throughput/generated_tokens_per_s",
    "eval/average_accuracy", "eval/arith/accuracy",
]


# --------------------------------------------------------------------------- the shared comparison


def test_parent_children_tags_metrics_artifacts(smoke_compare, smoke_outcome):
    out, _ = smoke_outcome
    client = mlflow_client_of(out)
    assert out["tracking_uri"] == f"sqlite:///{smoke_compare.runs / 'mlflow.db'}"
    parent = client.get_run(out["parent_run_id"])
    assert parent.data.tags["pilotcommit.kind"] == "comparison" and parent.info.status == "FINISHED"
    children = client.search_runs([out["experiment_id"]],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{out['parent_run_id']}'")
    assert sorted(r.data.tags["method"] for r in children) == CORE
    for child in children:
        tags = child.data.tags
        for key in ("method", "model", "seed", "config_hash", "git_sha", "prefect_flow_run_id"):
            assert tags.get(key), f"{tags['method']}: tag {key} missing"
        assert tags["model"] == "tiny-h64-l2" and tags["seed"] == "0"
        for name in DESIGN_METRICS:
            assert name in child.data.metrics, f"{tags['method']}: metric {name} missing"
        # Evaluations again against the budget: step = cumulative rollouts at that evaluation.
        cumulative = {m.step: m.value for m in client.get_metric_history(child.info.run_id, "rollouts/cumulative")}
        by_rollouts = sorted(m.step for m in client.get_metric_history(child.info.run_id, "by_rollouts/eval/average_accuracy"))
        assert by_rollouts == [0] + [int(cumulative[s]) for s in sorted(cumulative)]
        assert child.data.params["method"] == tags["method"] and "learner.lr" in child.data.params
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"config", "prompt_stats", "run"} <= artifacts
        figures = [a.path for a in client.list_artifacts(child.info.run_id, "prompt_stats/eval")]
        assert any(p.endswith(".png") for p in figures) and any(p.endswith(".csv") for p in figures)
        contexts = {d.dataset.name: {t.value for t in d.tags} for d in child.inputs.dataset_inputs}
        assert contexts == {"train": {"training"}, "arith": {"evaluation"}}
    comparison = {a.path for a in client.list_artifacts(out["parent_run_id"], "comparison")}
    assert comparison == {"comparison/accuracy_vs_rollouts.png", "comparison/summary.csv", "comparison/summary.json"}
    assert "comparison/target_accuracy" in parent.data.metrics
    assert set(out["report"]["summary"]["methods"]) == set(CORE)


def test_the_same_comparison_again_is_a_cache_hit(smoke_compare, smoke_outcome):
    """``smoke_outcome`` ran the CLI's comparison again in this process: the same parent and
    child runs, the same summary, every stage served from the cache, nothing rewritten."""
    from pilotcommit import tracking

    again, flow_run_id = smoke_outcome
    client = mlflow_client_of(again)
    cli_parent = tracking.latest_parent_run(client, again["experiment_id"], "smoke")
    assert again["parent_run_id"] == cli_parent.info.run_id
    states = task_states(flow_run_id)
    for stage in ("prepare-data", "initial-policy", "probe", "train", "report"):
        assert set(states[stage]) == {"Cached"}, (stage, states[stage])
    summary = json.loads(Path(again["report"]["files"]["json"]).read_text())
    assert again["report"]["summary"] == summary


def test_runs_in_child_processes_equal_runs_in_the_flow_process(smoke_outcome, fresh_runs):
    """The same comparison trained one run after another in the flow's own process gives every
    run the same final metrics and weights as two at a time in child processes."""
    from flows.compare import compare_flow

    parallel, _ = smoke_outcome
    sequential = compare_flow(config_path=str(SMOKE_CONFIG), overrides=[methods_override(*CORE)],
                              runs_dir=str(fresh_runs), parallel_runs=1)
    by_cell = {(r["method"], r["seed"]): r for r in sequential["runs"]}
    assert len(by_cell) == len(parallel["runs"]) == len(CORE)
    for run in parallel["runs"]:
        other = by_cell[(run["method"], run["seed"])]
        assert run["final_metrics"] == other["final_metrics"], run["method"]
        weights = [safetensors_load(Path(r["run_dir"]) / "final_policy" / "model.safetensors") for r in (run, other)]
        assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0]), run["method"]


def test_evaluate_flow_on_a_trained_checkpoint(smoke_compare, smoke_outcome):
    from flows.evaluate import evaluate_flow

    out, _ = smoke_outcome
    grpo = next(r for r in out["runs"] if r["method"] == "grpo")
    checkpoint = str(Path(grpo["run_dir"]) / "final_policy")
    runs = str(smoke_compare.runs)
    first = evaluate_flow(checkpoint=checkpoint, config_path=str(SMOKE_CONFIG), runs_dir=runs)
    # The same seed and checkpoint as the run's own last evaluation: the same numbers.
    assert first["metrics"]["eval/average_accuracy"] == grpo["final_metrics"]["eval/average_accuracy"]
    run = mlflow_client_of(out).get_run(first["mlflow_run_id"])
    assert run.data.tags["pilotcommit.kind"] == "evaluation"
    assert run.data.metrics["eval/average_accuracy"] == first["metrics"]["eval/average_accuracy"]
    again = evaluate_flow(checkpoint=checkpoint, config_path=str(SMOKE_CONFIG), runs_dir=runs)
    assert again == first
    assert set(task_states(latest_flow_run_id("evaluate"))["evaluate"]) == {"Cached"}


