"""The ``probe`` flow: the pass-rate spread of the training prompts under the initial policy, and
the predicted informative groups per 1,000 rollouts of each configured method, before training.

    prepare-data -> initial-policy -> probe (sample N prompts x K) -> one MLflow run

The data and initial-policy stages are the cached ones of ``compare``, so probing a config that
was compared (or will be) costs only the sampling. The MLflow run (tag ``pilotcommit.kind=probe``)
holds the spread and predictions as metrics, the recommendation as a tag, the histogram figure
and the per-prompt and per-method tables.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows import stages
from flows.compare import comparison_tags, prepare_stages
from pilotcommit.config import ExperimentConfig, config_hash, demo_config_path, load_experiment_config
from pilotcommit.probe import ProbeResult, histogram_figure, run_probe


@task(name="probe", cache_policy=NO_CACHE)
def probe_task(cfg: ExperimentConfig, prepared: dict, initial_policy: str, prompts: int, samples: int,
               seed: int, estimator: str) -> dict:
    """:func:`pilotcommit.probe.run_probe` on the prepared training prompts."""
    from pilotcommit.data.prepared import PreparedData

    train_path = PreparedData.from_dict(prepared).train_path
    return run_probe(cfg, train_path, initial_policy, prompts=prompts, samples=samples, seed=seed,
                     estimator=estimator).to_dict()


def log_probe(client, run_id: str, result: ProbeResult, title: str) -> None:
    """Metrics, tags, figure and tables of a probe into an MLflow run."""
    metrics = {f"probe/{k}": v for k, v in result.spread.items()}
    metrics["probe/prompts"] = len(result.prompt_ids)
    metrics["probe/samples_per_prompt"] = result.samples
    for pred in result.predictions:
        metrics[f"predict/{pred.method}/informative_groups_per_1k"] = pred.informative_groups_per_1k
        for key, value in pred.breakdown.items():
            metrics[f"predict/{pred.method}/{key}"] = value
    for key, value in metrics.items():
        client.log_metric(run_id, key, float(value), step=0)
    client.set_tag(run_id, "pilotcommit.recommendation", result.recommendation)
    client.set_tag(run_id, "pilotcommit.estimator", result.estimator)
    client.log_figure(run_id, histogram_figure(result, title), "probe/pass_rate_histogram.png")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        result.prompt_table().to_csv(out / "prompts.csv", index=False)
        result.prediction_table().to_csv(out / "predictions.csv", index=False)
        (out / "probe.json").write_text(json.dumps(result.to_dict(), indent=2))
        for name in ("prompts.csv", "predictions.csv", "probe.json"):
            client.log_artifact(run_id, str(out / name), "probe")


@flow(name="probe")
def probe_flow(
    config_path: str | None = None,
    overrides: list[str] | None = None,
    runs_dir: str | None = None,
    tracking_uri: str | None = None,
    prompts: int = 256,
    samples: int = 16,
    seed: int = 0,
    estimator: str = "empirical_bayes",
) -> dict:
    """Probe ``prompts`` training prompts with ``samples`` rollouts each; log one MLflow run."""
    cfg = load_experiment_config(config_path or demo_config_path(), list(overrides or []))
    ctx = stages.make_context(cfg.tracking.experiment_name or cfg.name, runs_dir,
                              tracking_uri or cfg.tracking.tracking_uri)
    upstream = prepare_stages(ctx, cfg)
    key = stages.stage_key("probe", config_hash(cfg), upstream["policy_key"], prompts, samples, seed,
                           estimator, stages.current_flow_run_id())
    run = stages.open_run_task(ctx.to_dict(), key, f"{cfg.name}-probe",
                               {**comparison_tags(ctx, cfg, "probe"), "seed": str(seed)}, config=cfg)
    try:
        data = probe_task(cfg, upstream["prepared"], upstream["initial_policy"], prompts, samples, seed,
                          estimator)
        result = ProbeResult.from_dict(data)
        log_probe(ctx.client(), run["run_id"], result, f"{cfg.name}: probe of the initial policy")
    except BaseException:
        stages.close_run_task(ctx.to_dict(), run["run_id"], "FAILED")
        raise
    stages.close_run_task(ctx.to_dict(), run["run_id"], "FINISHED")
    return {"probe": data, "mlflow_run_id": run["run_id"], "experiment_id": ctx.experiment_id,
            "tracking_uri": ctx.tracking_uri}
