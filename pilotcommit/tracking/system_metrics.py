"""MLflow's system metrics (``system/*``) of a training run."""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def start_system_metrics(run_id: str, tracking_uri: str, interval_s: float | None):
    """Start MLflow's ``SystemMetricsMonitor`` on ``run_id`` (``system/*`` metrics, a daemon
    thread sampling this machine every ``interval_s``); returns it, to be ``finish()``-ed, or
    None when ``interval_s`` is None or psutil is missing.

    GPU metrics (``system/gpu_*``) need ``pynvml`` (the ``nvidia-ml-py`` package, which vLLM's
    CUDA build installs); without it MLflow skips them, and this says so once on a CUDA machine.
    A resumed run continues the ``system/*`` steps where they stopped (``resume_logging``).
    """
    if interval_s is None:
        return None
    from pilotcommit.dependencies import available, warn_missing_once

    # psutil before MLflow's monitor, which imports it at module level: a base dependency, but
    # an environment without it must lose the system metrics, not the run
    if not available("psutil"):
        logger.warning("MLflow run %s: no system metrics (psutil is not installed: pip install psutil)", run_id)
        return None
    import torch
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    if torch.cuda.is_available():
        warn_missing_once("pynvml", f"MLflow run {run_id}")
    monitor = SystemMetricsMonitor(run_id, sampling_interval=interval_s, samples_before_logging=1,
                                   resume_logging=True, tracking_uri=tracking_uri)
    monitor.start()
    return monitor

