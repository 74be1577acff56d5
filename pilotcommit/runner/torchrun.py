"""What a training run needs from the machine, checked before anything is loaded.

:func:`gpus_needed` is the number of CUDA GPUs one training run of a config occupies
(``resources``: one per process; a single process with vLLM tensor parallelism uses the TP
group's GPUs). :func:`check_gpus` fails with a message naming the cell, the fields and the
visible devices when the machine has fewer, so a sweep cell on a too-small worker stops in
seconds instead of after downloading a model and data or inside NCCL.

:func:`train_under_torchrun` is how a training cell runs a run that asks for more than one
process (``resources.nproc_per_node``): it launches ``torchrun`` as a subprocess on this
module's worker, which runs :func:`pilotcommit.loop.train_run` on every rank with rank 0
tracking into the cell's MLflow run. The flow, the data stages and MLflow run creation stay in
the cell's process and happen once.

Deliberately not here: choosing GPUs (``CUDA_VISIBLE_DEVICES`` and the work pool do that),
or multi-node rendezvous (one node per run; several nodes are started by hand, see
docs/paper_scale.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from pilotcommit.config import ExperimentConfig, config_hash


class InsufficientGPUsError(RuntimeError):
    """A training cell needs more CUDA GPUs than this machine shows."""


def gpus_needed(cfg: ExperimentConfig) -> int:
    """CUDA GPUs one training run of ``cfg`` occupies (0 when ``resources.device`` is auto)."""
    if cfg.resources.device != "cuda":
        return 0
    tensor_parallel = cfg.rollout.vllm.tensor_parallel_size if cfg.rollout.engine == "vllm" else 1
    return max(cfg.resources.nproc_per_node, tensor_parallel)


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_gpus(cfg: ExperimentConfig, where: str, visible: int | None = None) -> None:
    """Raise :class:`InsufficientGPUsError` if this machine cannot run ``cfg``'s training runs."""
    needed = gpus_needed(cfg)
    if needed == 0:
        return
    visible = visible_gpus() if visible is None else visible
    if visible < needed:
        devices = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise InsufficientGPUsError(
            f"{where}: model {cfg.model.label} needs {needed} CUDA GPUs "
            f"(resources.nproc_per_node={cfg.resources.nproc_per_node}, "
            f"rollout.vllm.tensor_parallel_size={cfg.rollout.vllm.tensor_parallel_size}, "
            f"resources.device=cuda) but this machine shows {visible}"
            + (f" (CUDA_VISIBLE_DEVICES={devices})" if devices is not None else "")
            + "; run the cell on a larger worker, or lower resources.nproc_per_node and the "
            "tensor parallelism"
        )


# --------------------------------------------------------------------------- torchrun from a cell

LAUNCH_SPEC_FILE = "launch-spec.json"
LAUNCH_OUTCOME_FILE = "launch-outcome.json"
LAUNCH_LOG_FILE = "torchrun.log"


def torchrun_command(nproc_per_node: int, spec_path: Path) -> list[str]:
    """``torchrun --standalone --nproc-per-node N -m pilotcommit.runner.torchrun <spec>`` (this Python)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc_per_node}",
            "-m", "pilotcommit.runner.torchrun", str(spec_path)]


def train_under_torchrun(
    cfg: ExperimentConfig, label: str, seed: int, *, prepared: dict, initial_policy: str, run_dir: Path,
    tracking_uri: str, mlflow_run_id: str, resume: bool | None,
) -> dict:
    """Train one run in ``cfg.resources.nproc_per_node`` processes launched by ``torchrun``.

    Called by the training cell (pilotcommit/runner/training.py) when a run asks for more than one process: the
    flow, the data stages and the MLflow run stay in the caller's process and run once; the
    child processes only train. Rank 0 writes the run's metrics into ``mlflow_run_id``, the
    checkpoints, the final policy and ``result.json``; the caller sets the run's final status.
    Returns ``{"tracking_gap": ...}`` from rank 0; raises ``RuntimeError`` with the end of the
    processes' log when torchrun fails.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    spec = {"config": cfg.model_dump(mode="json"), "config_hash": config_hash(cfg), "label": label, "seed": seed,
            "prepared": prepared, "initial_policy": initial_policy, "run_dir": str(run_dir),
            "tracking_uri": tracking_uri, "mlflow_run_id": mlflow_run_id, "resume": resume}
    spec_path = run_dir / LAUNCH_SPEC_FILE
    spec_path.write_text(json.dumps(spec, indent=2))
    (run_dir / LAUNCH_OUTCOME_FILE).unlink(missing_ok=True)
    log_path = run_dir / LAUNCH_LOG_FILE
    command = torchrun_command(cfg.resources.nproc_per_node, spec_path)
    with log_path.open("ab") as log:
        proc = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=run_dir, check=False)
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace")[-4000:]
        raise RuntimeError(
            f"training run {label} seed {seed}: torchrun with {cfg.resources.nproc_per_node} processes "
            f"exited with {proc.returncode}; end of {log_path}:\n{tail}"
        )
    return json.loads((run_dir / LAUNCH_OUTCOME_FILE).read_text())


def _config_from_spec(spec: dict) -> ExperimentConfig:
    """The run config written by :func:`train_under_torchrun`, validated again.

    A run config may lack the target's reference method (it holds one method), which the
    experiment-level validator refuses; validate with a fixed target, then put the run's own
    target back, and check that the hash is the caller's (same config, same checkpoints).
    """
    from pilotcommit.config import TargetConfig

    data = spec["config"]
    checked = ExperimentConfig.model_validate({**data, "target": {**data["target"], "accuracy": 0.0}})
    cfg = checked.model_copy(update={"target": TargetConfig.model_validate(data["target"])})
    if config_hash(cfg) != spec["config_hash"]:
        raise RuntimeError(f"launch spec: the config hash {config_hash(cfg)} differs from {spec['config_hash']}")
    return cfg


def _worker_main(spec_path: Path) -> None:
    """One torchrun process: the training run, rank 0 tracking into the cell's MLflow run."""
    import torch.distributed as dist

    from pilotcommit import tracking
    from pilotcommit.loop import train_run
    from pilotcommit.pipeline import PreparedData

    spec = json.loads(Path(spec_path).read_text())
    cfg = _config_from_spec(spec)
    run_dir = Path(spec["run_dir"])
    rank = int(os.environ["RANK"])
    tracker = None
    if rank == 0:
        client = tracking.mlflow_client(spec["tracking_uri"])
        tracker = tracking.MlflowTracker(spec["mlflow_run_id"], client,
                                         spool_path=run_dir / "tracking-undelivered.jsonl")
    try:
        train_run(cfg, spec["label"], spec["seed"], prepared=PreparedData.from_dict(spec["prepared"]),
                  initial_policy=spec["initial_policy"], run_dir=run_dir, tracker=tracker, resume=spec["resume"])
        if tracker is not None:
            tracker.set_tags({TAG_WORLD_SIZE: str(dist.get_world_size())})
            tracker.log_artifact(run_dir / "result.json", "run")
    finally:
        gap = tracker.close() if tracker is not None else None  # the cell sets the final status
    if gap is not None:
        (run_dir / LAUNCH_OUTCOME_FILE).write_text(json.dumps({"tracking_gap": gap.summary()}))
    from pilotcommit.learner.distributed import exit_distributed

    exit_distributed()  # barrier, destroy, then exit without interpreter finalization


TAG_WORLD_SIZE = "pilotcommit.world_size"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: torchrun ... -m pilotcommit.runner.torchrun <launch-spec.json>")
    _worker_main(Path(sys.argv[1]))
