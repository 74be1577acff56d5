"""Prefect tasks of the pipeline, each calling one library function, and the bookkeeping around them.

Stages and their cache keys (every key also holds the code version,
:func:`pilotcommit.tracking.code_version`):

    prepare-data     hash(cfg.data) [+ prompt-length filter]      -> <runs>/data/<key>/
    initial-policy   hash(cfg.model) + data key                   -> <runs>/policies/<key>/
    train            hash(run config) + policy key + data key     -> <runs>/<name>/train/<label>-seed<s>-<key>/
    report           comparison key + train keys + report.py hash -> <runs>/<name>/reports/<key>/

The *run config* of a training run is the experiment config narrowed to that run (its one
method, its one seed), so adding a seed or a method to a comparison reuses the runs already
trained. Results are persisted (plain JSON, read back only through
:class:`flows.results.TrustedResultStorage`, which refuses records naming code) under
``<runs>/prefect-results`` with the key as the file name, so a second identical ``compare``
is served from the cache. Every stage also
materialises its outputs on disk (``stage.json`` / the run's ``result.json``); the flows
check those before trusting a cached result and recompute (``refresh_cache``) when files are
gone, so a cache hit never returns stale paths.

Tasks pass paths, keys and MLflow run ids, never models. Deliberately not here: any
algorithm, metric or summary (they live in ``pilotcommit``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run, task_run

from pilotcommit import tracking
from pilotcommit.config import ExperimentConfig

STAGE_FILE = "stage.json"
TRACKING_FILE = "tracking.json"
RESULT_FILE = "result.json"  # written by pilotcommit.loop.train_run
RESULTS_DIRNAME = "prefect-results"
ATTEMPT_FILE = "attempt.json"  # which task run restarted a run from scratch (kept by retire_outputs)

# --------------------------------------------------------------------------- progress

# A process-local sink for training progress (the CLI installs a rich progress bar here);
# deployments run without one. Not a task parameter: callables do not serialise.
_progress_sink: Callable[[dict[str, Any]], None] | None = None


def set_progress_sink(sink: Callable[[dict[str, Any]], None] | None) -> None:
    global _progress_sink
    _progress_sink = sink


def emit_progress(event: dict[str, Any]) -> None:
    if _progress_sink is not None:
        _progress_sink(event)


def run_stage(task_call, describe: str, *args, **kwargs) -> Any:
    """Call a configured task (``task.with_options(...)``) in the flow and log on the Prefect run
    whether it was served from the cache or computed; its result (raises as the task did)."""
    started = time.perf_counter()
    state = task_call(*args, return_state=True, **kwargs)
    log_stage_state(describe, state, time.perf_counter() - started)
    return state.result()


def log_stage_state(describe: str, state, seconds: float | None = None) -> None:
    from flows.reporting import run_logger

    if state.name == "Cached":
        run_logger().info("%s: served from the cache", describe)
    elif state.is_completed():
        took = f" in {seconds:.1f} s" if seconds is not None else ""
        run_logger().info("%s: computed%s", describe, took)


# --------------------------------------------------------------------------- runs at once

# How many training runs a flow trains at once (flows/processes.py); set by the flows from
# their `parallel_runs` parameter. 1: in the flow's own process, one after the other.
_parallel_runs = 1
_run_slots = threading.BoundedSemaphore(1)


def set_parallel_runs(count: int) -> None:
    global _parallel_runs, _run_slots
    if count < 1:
        raise ValueError(f"parallel_runs must be at least 1, got {count}")
    _parallel_runs = count
    _run_slots = threading.BoundedSemaphore(count)


def parallel_runs() -> int:
    return _parallel_runs


# --------------------------------------------------------------------------- keys and layout


def stage_key(stage: str, *parts: object) -> str:
    """``<stage>-<24 hex>`` from the stage's defining parts (config hashes, upstream keys, code)."""
    digest = hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).hexdigest()[:24]
    return f"{stage}-{digest}"


def run_config(cfg: ExperimentConfig, label: str, seed: int) -> ExperimentConfig:
    """The experiment config narrowed to one training run (its method and seed).

    Built with ``model_copy`` (no re-validation): the narrowed config may no longer hold the
    target's reference method, which a single run does not use.
    """
    # a training run does not probe: the comparison's probe settings must not change its key
    return cfg.model_copy(update={"seeds": [seed], "methods": {label: cfg.methods[label]},
                                  "probe": cfg.probe.model_copy(update={"prompts": 0})})


def file_hash(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


@dataclass(frozen=True)
class Context:
    """Where a flow writes and tracks: resolved once per flow run."""

    runs_root: Path
    tracking_uri: str
    experiment_id: str
    code_version: str
    git_sha: str

    @property
    def results_dir(self) -> Path:
        return self.runs_root / RESULTS_DIRNAME

    def data_dir(self, key: str) -> Path:
        return self.runs_root / "data" / key

    def policy_dir(self, key: str) -> Path:
        return self.runs_root / "policies" / key

    def train_dir(self, name: str, label: str, seed: int, train_key: str) -> Path:
        # Named by the stage key, not the config alone: new code or a new initial policy must
        # train into a new directory, never resume (or reuse) a run made by the old one.
        return self.runs_root / name / "train" / f"{label}-seed{seed}-{train_key.split('-', 1)[-1][:16]}"

    def report_dir(self, name: str, key: str) -> Path:
        return self.runs_root / name / "reports" / key

    def client(self):
        return tracking.mlflow_client(self.tracking_uri)

    def to_dict(self) -> dict:
        return {"runs_root": str(self.runs_root), "tracking_uri": self.tracking_uri,
                "experiment_id": self.experiment_id, "code_version": self.code_version,
                "git_sha": self.git_sha}

    @classmethod
    def from_dict(cls, data: dict) -> Context:
        return cls(Path(data["runs_root"]), data["tracking_uri"], data["experiment_id"],
                   data["code_version"], data["git_sha"])


def make_context(experiment_name: str, runs_dir: str | None, tracking_uri: str | None) -> Context:
    """Resolve the runs directory and the tracking store, check the store is usable (fail fast,
    before any compute), and make sure the MLflow experiment exists."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # copies of cached runs
    runs_root = Path(runs_dir).expanduser().resolve() if runs_dir else tracking.default_runs_root()
    runs_root.mkdir(parents=True, exist_ok=True)
    uri = tracking.resolve_tracking_uri(tracking_uri, runs_root)
    tracking.configure_mlflow_http()
    tracking.check_tracking_server(uri)
    client = tracking.mlflow_client(uri)
    experiment_id = tracking.ensure_experiment(
        client, experiment_name, tracking.default_artifact_root(uri, runs_root)
    )
    return Context(runs_root, uri, experiment_id, tracking.code_version(), tracking.git_sha())


def current_flow_run_id() -> str:
    return str(flow_run.id or "")


# --------------------------------------------------------------------------- materialised outputs


def _rebase(value: Any, old: str, new: str) -> Any:
    if isinstance(value, str) and value.startswith(old):
        return new + value[len(old):]
    if isinstance(value, dict):
        return {k: _rebase(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_rebase(v, old, new) for v in value]
    return value


def read_stage(out_dir: Path) -> dict | None:
    path = Path(out_dir) / STAGE_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def materialise(
    out_dir: Path, build: Callable[[Path], dict], valid: Callable[[dict], bool], rebuild: bool = False
) -> dict:
    """Run ``build(tmp_dir)`` and move its directory into ``out_dir`` in one rename, so a crash
    or a concurrent worker never leaves a half-written stage that looks complete. Paths in the
    returned dict are rewritten from the temporary directory to ``out_dir``. A valid existing
    stage is returned as it is unless ``rebuild`` (then it is replaced)."""
    out_dir = Path(out_dir)
    existing = read_stage(out_dir)
    if existing is not None and valid(existing) and not rebuild:
        return existing
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        result = _rebase(build(tmp), str(tmp), str(out_dir))
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / STAGE_FILE).write_text(json.dumps(result, indent=2))
        if out_dir.exists():
            existing = read_stage(out_dir)
            if existing is not None and valid(existing) and not rebuild:  # another worker was first
                return existing
            retired = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(out_dir, retired)  # an invalid leftover, or the stage being rebuilt
            shutil.rmtree(retired, ignore_errors=True)
        os.rename(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def prepared_valid(stage: dict) -> bool:
    from pilotcommit.pipeline import PreparedData

    return "prepared" in stage and PreparedData.from_dict(stage["prepared"]).exists()


def policy_valid(stage: dict) -> bool:
    policy = stage.get("initial_policy")
    if not policy:
        return False
    return Path(policy).is_dir() if stage.get("local", True) else True


def read_train_outputs(run_dir: Path) -> dict | None:
    """The finished run's ``result.json`` and ``tracking.json`` if both exist and the final
    policy is on disk; else None."""
    run_dir = Path(run_dir)
    try:
        result = json.loads((run_dir / RESULT_FILE).read_text())
        tracked = json.loads((run_dir / TRACKING_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not Path(result.get("final_checkpoint", "")).is_dir():
        return None
    return {"result": result, **tracked}


def read_attempt(run_dir: Path) -> str | None:
    """The id of the task run that last restarted ``run_dir`` from scratch (``attempt.json``)."""
    try:
        return json.loads((Path(run_dir) / ATTEMPT_FILE).read_text())["task_run_id"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_attempt(run_dir: Path, task_run_id: str) -> None:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / f".{ATTEMPT_FILE}.tmp"
    tmp.write_text(json.dumps({"task_run_id": task_run_id}))
    os.replace(tmp, run_dir / ATTEMPT_FILE)


def _key_from_parameters(context, parameters: dict) -> str:
    return parameters["stage_key"]


def stage_options(ctx: Context, refresh: bool) -> dict:
    """Task options for a call: results persisted under the runs directory; ``refresh``
    recomputes and overwrites the cached entry."""
    from flows.results import trusted_storage

    # read as data only: a record this pipeline did not write is refused (flows/results.py)
    return {"result_storage": trusted_storage(ctx.results_dir), "refresh_cache": refresh}


# --------------------------------------------------------------------------- tasks

_TASK_DEFAULTS = {"persist_result": True, "cache_key_fn": _key_from_parameters, "result_serializer": "json"}


@task(name="prepare-data", **_TASK_DEFAULTS)
def prepare_data_task(cfg: ExperimentConfig, stage_key: str, out_dir: str, rebuild: bool = False) -> dict:
    """:func:`pilotcommit.pipeline.prepare_data` into ``out_dir`` (validated parquet files)."""
    from flows.reporting import run_logger
    from pilotcommit.pipeline import PreparedData, prepare_data

    run_logger().info("prepare-data: running (%s, into %s)", stage_key, out_dir)
    stage = materialise(Path(out_dir), lambda tmp: {"prepared": prepare_data(cfg, tmp).to_dict()},
                        prepared_valid, rebuild)
    dropped = PreparedData.from_dict(stage["prepared"]).dropped_prompts()
    if dropped:  # model.max_prompt_length; the training runs log the same counts as parameters
        run_logger().info("prompts dropped as longer than model.max_prompt_length: %s", dropped)
    return stage


@task(name="initial-policy", **_TASK_DEFAULTS)
def initial_policy_task(
    cfg: ExperimentConfig, stage_key: str, prepared: dict, out_dir: str, rebuild: bool = False
) -> dict:
    """:func:`pilotcommit.pipeline.build_initial_policy`: the warm start (tiny model) or a hub name."""
    from pilotcommit.config import TinyModelConfig
    from pilotcommit.pipeline import PreparedData, build_initial_policy

    from flows.reporting import run_logger

    if not isinstance(cfg.model, TinyModelConfig):  # a hub model: nothing to build or cache on disk
        run_logger().info("initial-policy: the hub model %s", cfg.model.name_or_path)
        return {"initial_policy": cfg.model.name_or_path, "local": False}
    run_logger().info("initial-policy: running (%s, warm start of %s into %s)", stage_key, cfg.model.label, out_dir)

    def build(tmp: Path) -> dict:
        emit_progress({"stage": "initial-policy", "model": cfg.model.label, "status": "start"})
        path = build_initial_policy(cfg, PreparedData.from_dict(prepared), tmp)
        emit_progress({"stage": "initial-policy", "model": cfg.model.label, "status": "done"})
        return {"initial_policy": path, "local": True}

    return materialise(Path(out_dir), build, policy_valid, rebuild)


@task(name="train", retries=1, retry_delay_seconds=2, **_TASK_DEFAULTS)
def train_task(
    cfg: ExperimentConfig,
    label: str,
    seed: int,
    stage_key: str,
    prepared: dict,
    initial_policy: str,
    run_dir: str,
    tracking_uri: str,
    mlflow_run_id: str,
    fresh: bool = False,
) -> dict:
    """:func:`pilotcommit.pipeline.train_run` for one method x seed, logging to ``mlflow_run_id``.

    A Prefect retry (or a rerun after a crash) resumes from the run's last checkpoint, and the
    tracker drops the (metric, step) pairs the run had already logged. ``fresh`` (a refresh, or
    a run whose MLflow data is lost) first retires the directory's old outputs in one step and
    records this task run in ``attempt.json``; a retry of the same task run then resumes the new
    run, so a failed attempt can never hand back the previous run's result. A finished run
    found on disk is not trained again: its MLflow data is copied into ``mlflow_run_id`` when
    that is a new run of a new comparison; if that data is gone from the store, the run is
    retrained from scratch so the comparison's run has its metrics.
    """
    from pilotcommit.loop import retire_outputs

    run_path = Path(run_dir)
    client = tracking.mlflow_client(tracking_uri)
    attempt = str(task_run.id or "")
    if attempt and read_attempt(run_path) == attempt:
        # An earlier try of this very task run retired the old outputs and started the new
        # run: a Prefect retry continues that new run (from its checkpoint), never the old one.
        fresh = False
    done = None if fresh else read_train_outputs(run_path)
    if done is not None:
        source = done.get("mlflow_run_id")
        if source == mlflow_run_id and client.get_run(mlflow_run_id).info.status == "FINISHED":
            return done
        if source != mlflow_run_id and tracking.run_exists(client, source):
            if not client.get_run(mlflow_run_id).data.metrics:  # not already copied by an earlier try
                tracking.copy_run_contents(client, source, mlflow_run_id)
            client.set_terminated(mlflow_run_id, status="FINISHED")
            return {**done, "mlflow_run_id": mlflow_run_id, "copied_from": source}
        fresh = source != mlflow_run_id  # the metrics are lost: train again into this run
    if fresh:
        # From scratch: the old result, tracking record, final policy and checkpoints go first,
        # in one step, so neither a retry nor a cache check can mistake them for this run's.
        retire_outputs(run_path)
        write_attempt(run_path, attempt)

    kwargs = dict(cfg=cfg, label=label, seed=seed, prepared=prepared, initial_policy=initial_policy,
                  run_dir=run_dir, tracking_uri=tracking_uri, mlflow_run_id=mlflow_run_id, fresh=fresh)
    from flows.reporting import TrainingLog, mlflow_run_url

    # progress events -> the CLI's bars and, thinned to a readable rate, the Prefect run log
    describe = f"train {label} seed {seed} ({cfg.cell_label})"
    log = TrainingLog(describe, cfg.budget.max_steps, cfg.budget.max_rollouts, cfg.target.metric, emit_progress)
    log.logger.info("%s: %s", describe, _start_point(cfg, run_path, fresh))
    if _parallel_runs <= 1:
        out = train_and_track(**kwargs, progress=log)
    else:
        from flows.processes import run_in_child

        with _run_slots:  # at most `parallel_runs` children at once
            out = run_in_child(train_and_track, kwargs, on_progress=log,
                               describe=f"training run {label} seed {seed} ({cfg.cell_label})")
    result = out["result"]
    value = result["final_metrics"].get(cfg.target.metric)
    log.logger.info(
        "%s: finished after %d steps, %s rollouts, final %s %s; MLflow run %s", describe, result["steps"],
        f"{result['cumulative_rollouts']:,}", cfg.target.metric, "missing" if value is None else f"{value:.4f}",
        mlflow_run_url(tracking_uri, client.get_run(mlflow_run_id).info.experiment_id, mlflow_run_id),
    )
    return out


def _start_point(cfg: ExperimentConfig, run_path: Path, fresh: bool) -> str:
    """Where the run starts, for the log (the loop itself decides, by the same rule)."""
    from pilotcommit.checkpoint import latest_checkpoint

    if fresh or not cfg.checkpoint.resume:
        return "training from scratch"
    try:
        checkpoint = latest_checkpoint(run_path)
    except Exception:  # noqa: BLE001 - a broken checkpoint is the loop's error to raise, not the log's
        return "training (resuming from its last checkpoint)"
    return "training from scratch" if checkpoint is None else f"resuming from checkpoint {checkpoint.name}"


def train_and_track(
    cfg: ExperimentConfig,
    label: str,
    seed: int,
    prepared: dict,
    initial_policy: str,
    run_dir: str,
    tracking_uri: str,
    mlflow_run_id: str,
    fresh: bool,
    progress: Callable[[dict[str, Any]], None],
) -> dict:
    """The body of :func:`train_task` once it has decided to train: ``train_run`` logging to
    ``mlflow_run_id``, in this process or in a child (flows/processes.py); a run that asks for
    more than one process (``resources.nproc_per_node``) is launched with ``torchrun`` from
    here, and its rank 0 tracks (pilotcommit/launch.py)."""
    run_path = Path(run_dir)
    client = tracking.mlflow_client(tracking_uri)
    if client.get_run(mlflow_run_id).info.status != "RUNNING":
        client.update_run(mlflow_run_id, status="RUNNING")
    # system/* metrics of this machine while the run trains (all its GPUs under torchrun)
    monitor = tracking.start_system_metrics(mlflow_run_id, tracking_uri, cfg.tracking.system_metrics_interval_s)
    try:
        if cfg.resources.nproc_per_node > 1:
            result_dict, gap_summary = _train_under_torchrun(
                cfg, label, seed, prepared, initial_policy, run_path, tracking_uri, mlflow_run_id, fresh, progress)
        else:
            result_dict, gap_summary = _train_here(
                cfg, label, seed, prepared, initial_policy, run_path, client, mlflow_run_id, fresh, progress)
    except BaseException:
        if monitor is not None:
            monitor.finish()
        _set_status(client, mlflow_run_id, "FAILED")
        raise
    if monitor is not None:
        monitor.finish()  # its last samples land before the run is marked finished
    _set_status(client, mlflow_run_id, "FINISHED")
    tracked = {"mlflow_run_id": mlflow_run_id, "tracking_uri": tracking_uri, "tracking_gap": gap_summary}
    (run_path / TRACKING_FILE).write_text(json.dumps(tracked, indent=2))
    return {"result": result_dict, **tracked}


def _set_status(client, run_id: str, status: str) -> None:
    """End the MLflow run; a store that is down must not turn a trained run into a failure."""
    try:
        client.set_terminated(run_id, status=status)
    except Exception as err:  # noqa: BLE001 - the metrics are delivered or spooled already
        tracking.logger.warning("MLflow run %s: could not set status %s: %s", run_id, status, err)


def _train_here(cfg, label, seed, prepared, initial_policy, run_path: Path, client, mlflow_run_id: str, fresh: bool,
                progress) -> tuple[dict, str]:
    """``train_run`` in this process, tracked by an :class:`~pilotcommit.tracking.MlflowTracker`."""
    from pilotcommit.pipeline import PreparedData, train_run

    # Fresh runs log into a new MLflow run, so skipping logged steps only ever matters on resume.
    tracker = tracking.MlflowTracker(mlflow_run_id, client, spool_path=run_path / "tracking-undelivered.jsonl")
    reporter = EvaluationReporter(tracker, progress, {"stage": "train", "method": label, "seed": seed,
                                                      "model": cfg.model.label, "cell": cfg.cell_label})

    def on_step(step: int, metrics: dict) -> None:
        progress({"stage": "train", "method": label, "seed": seed, "model": cfg.model.label, "cell": cfg.cell_label, "cell": cfg.cell_label,
                  "step": step, "rollouts": metrics.get("rollouts/cumulative")})

    try:
        result = train_run(
            cfg, label, seed, prepared=PreparedData.from_dict(prepared), initial_policy=initial_policy,
            run_dir=run_path, tracker=reporter, resume=False if fresh else None, progress=on_step,
        )
        tracker.log_artifact(run_path / RESULT_FILE, "run")
    finally:
        gap = tracker.close()
    return result.to_dict(), gap.summary()


def _train_under_torchrun(cfg, label, seed, prepared, initial_policy, run_path: Path, tracking_uri: str,
                          mlflow_run_id: str, fresh: bool, progress) -> tuple[dict, str]:
    """The run in ``resources.nproc_per_node`` processes (pilotcommit/launch.py); rank 0 tracks
    into ``mlflow_run_id``. Progress is reported when the processes are done."""
    from pilotcommit.launch import train_under_torchrun
    from pilotcommit.loop import RunResult

    outcome = train_under_torchrun(cfg, label, seed, prepared=prepared, initial_policy=initial_policy,
                                   run_dir=run_path, tracking_uri=tracking_uri, mlflow_run_id=mlflow_run_id,
                                   resume=False if fresh else None)
    result = RunResult.from_dict(json.loads((run_path / RESULT_FILE).read_text()))
    progress({"stage": "train", "method": label, "seed": seed, "model": cfg.model.label, "cell": cfg.cell_label,
              "step": result.steps, "rollouts": result.cumulative_rollouts})
    return result.to_dict(), outcome["tracking_gap"]


class EvaluationReporter:
    """The run's tracker, passed through, that also reports every evaluation as a progress event
    (``event: "evaluation"``: step, cumulative rollouts, the evaluation metrics and the
    allocation counters of the steps since the previous evaluation). The loop already hands
    each evaluation to its tracker; listening there keeps the loop unaware of logging."""

    def __init__(self, inner: tracking.Tracker, progress: Callable[[dict[str, Any]], None],
                 identity: dict[str, Any]) -> None:
        from flows.reporting import AllocationTally

        self.inner, self.progress, self.identity = inner, progress, identity
        self.tally = AllocationTally()

    def log_metrics(self, metrics, step: int) -> None:
        self.inner.log_metrics(metrics, step)
        self.tally.add_step(metrics)

    def log_evaluation(self, metrics, step: int, cumulative_rollouts: int) -> None:
        from flows.reporting import AllocationTally

        self.inner.log_evaluation(metrics, step, cumulative_rollouts)
        self.progress({**self.identity, "event": "evaluation", "step": int(step), "rollouts": int(cumulative_rollouts),
                       "metrics": {k: float(v) for k, v in metrics.items()}, "alloc": self.tally.to_dict()})
        self.tally = AllocationTally()

    def log_prompt_stats(self, table, step: int, name: str) -> None:
        self.inner.log_prompt_stats(table, step, name)

    def log_params(self, params) -> None:
        self.inner.log_params(params)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.inner.log_artifact(path, artifact_path)

    def checkpoint_barrier(self) -> bool:
        return self.inner.checkpoint_barrier()

    def __getattr__(self, name: str) -> Any:  # anything a tracker grows later goes straight through
        return getattr(self.inner, name)


@task(name="probe", **_TASK_DEFAULTS)
def probe_task(cfg: ExperimentConfig, stage_key: str, prepared: dict, initial_policy: str) -> dict:
    """:func:`pilotcommit.probe.run_probe` with ``cfg.probe``'s settings (plain data, cached)."""
    from flows.reporting import run_logger
    from pilotcommit.data.prepared import PreparedData
    from pilotcommit.probe import run_probe

    p = cfg.probe
    run_logger().info("probe: running (%s, %d prompts x %d rollouts)", stage_key, p.prompts, p.samples)
    return run_probe(cfg, PreparedData.from_dict(prepared).train_path, initial_policy, prompts=p.prompts,
                     samples=p.samples, seed=0, estimator=p.estimator).to_dict()


@task(name="evaluate", **_TASK_DEFAULTS)
def evaluate_task(cfg: ExperimentConfig, stage_key: str, checkpoint: str, prepared: dict, seed: int) -> dict:
    """:func:`pilotcommit.pipeline.evaluate_checkpoint` on the prepared evaluation sets."""
    from flows.reporting import run_logger
    from pilotcommit.pipeline import PreparedData, evaluate_checkpoint

    run_logger().info("evaluate: running (%s, checkpoint %s)", stage_key, checkpoint)
    return {"metrics": evaluate_checkpoint(cfg, checkpoint, PreparedData.from_dict(prepared), seed=seed)}


@task(name="report", **_TASK_DEFAULTS)
def report_task(cfg: ExperimentConfig, stage_key: str, tracking_uri: str, parent_run_id: str,
                out_dir: str, model: str | None = None) -> dict:
    """:mod:`pilotcommit.report` on the runs under ``parent_run_id`` (only ``model``'s runs when
    given, for a sweep), logged to the parent run."""
    from flows.reporting import run_logger
    from pilotcommit import report

    run_logger().info("report: running (%s, the runs under MLflow run %s)", stage_key, parent_run_id)
    client = tracking.mlflow_client(tracking_uri)
    runs = report.load_comparison_runs(client, parent_run_id, cfg.target.metric)
    if model is not None:
        runs = [r for r in runs if r.cell == model]
    summary = report.summarize_comparison(runs, cfg.target)
    subdir = f"comparison/{model}" if model else "comparison"
    paths = report.log_comparison(client, parent_run_id, runs, summary, Path(out_dir), artifact_dir=subdir,
                                  metric_prefix=f"{subdir}/")
    return {"summary": summary.to_dict(), "text": report.summary_text(summary),
            "files": {k: str(v) for k, v in paths.items()}}


@task(name="open-mlflow-run", cache_policy=NO_CACHE)
def open_run_task(
    ctx: dict,
    key: str,
    run_name: str,
    tags: dict[str, str],
    parent_run_id: str | None = None,
    config: ExperimentConfig | None = None,
    datasets: dict | None = None,
) -> dict:
    """Find the MLflow run of ``key`` or create it; a new run gets the resolved config as an
    artifact and, for a training run, the prepared datasets as inputs."""
    context = Context.from_dict(ctx)
    client = context.client()
    ref = tracking.find_or_create_run(
        client, context.experiment_id, key, run_name=run_name, tags=tags, parent_run_id=parent_run_id
    )
    if ref.created:
        if config is not None:
            tracking.log_resolved_config(client, ref.run_id, config)
        if datasets is not None:
            from pilotcommit.pipeline import PreparedData

            prepared = PreparedData.from_dict(datasets)
            inputs = {"train": (prepared.train_path, "training")}
            inputs.update({name: (path, "evaluation") for name, path in prepared.eval_paths.items()})
            tracking.log_dataset_inputs(client, ref.run_id, inputs)
    return {"run_id": ref.run_id, "created": ref.created}


@task(name="close-mlflow-run", cache_policy=NO_CACHE)
def close_run_task(ctx: dict, run_id: str, status: str) -> None:
    Context.from_dict(ctx).client().set_terminated(run_id, status=status)
