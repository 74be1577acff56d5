"""The ``probe`` flow: the pass-rate spread of the training prompts under the initial policy, and
the predicted informative groups per 1,000 rollouts of each configured method, before training.

    prepare-data -> initial-policy -> probe (sample N prompts x K) -> one MLflow run

The data and initial-policy stages are the cached ones of ``compare``, so probing a config that
was compared (or will be) costs only the sampling. The MLflow run (tag ``pilotcommit.kind=probe``)
holds the spread and predictions as metrics, the recommendation as a tag, the histogram figure
and the per-prompt and per-method tables.
"""

from __future__ import annotations

from prefect import flow

from flows import tasks
from flows.compare import parent_run, parent_tags, prepare_stages
from pilotcommit.analysis.publish import log_probe
from pilotcommit.probe import ProbeResult
from pilotcommit.stages.context import open_experiment


@flow(name="probe")
def probe_flow(config_path: str | None = None, overrides: list[str] | None = None, runs_dir: str | None = None,
               tracking_uri: str | None = None, prompts: int = 256, samples: int = 16, seed: int = 0,
               estimator: str = "empirical_bayes") -> dict:
    """Probe ``prompts`` training prompts with ``samples`` rollouts each; log one MLflow run."""
    cfg, ctx = open_experiment(config_path, overrides, runs_dir, tracking_uri)
    keys, prepared, policy = prepare_stages(ctx, cfg)
    # a new probe (and MLflow run) per flow run: the key holds the flow run's id
    key = keys.probe_run(cfg, prompts, samples, seed, estimator, tasks.current_flow_run_id())
    run = tasks.open_run_task(ctx.to_dict(), key, f"{cfg.name}-probe",
                              parent_tags(ctx, cfg, "probe", seed=str(seed)), config=cfg)
    with parent_run(ctx, run["run_id"]):
        data = tasks.probe_task.with_options(persist_result=False, refresh_cache=True)(
            cfg, key, prepared, policy, prompts, samples, seed, estimator, str(ctx.runs_root / "probe-chunks"))
        log_probe(ctx.client(), run["run_id"], ProbeResult.from_dict(data), f"{cfg.name}: probe of the initial policy")
    return {"probe": data, "mlflow_run_id": run["run_id"], "experiment_id": ctx.experiment_id,
            "tracking_uri": ctx.tracking_uri}
