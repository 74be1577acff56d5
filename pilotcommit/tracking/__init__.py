"""Experiment tracking: the small interface the training loop logs through, and MLflow behind it.

    protocol.py        Tracker (what the loop calls, with plain dicts) and MemoryTracker
    writer.py          MlflowTracker: one run through a background queue; outages delay, never stop
    store.py           where the store is (explicit > $MLFLOW_TRACKING_URI > SQLite under the runs
                       directory), a fail-fast check before any compute, the client, experiments
    runs.py            runs found again by their key tag or created, children, copies, the latest
                       parent, the resolved config and dataset inputs, metric histories
    baselines.py       accepted baselines of the nightly regression and their fingerprints
    provenance.py      the code version in every cache key, the git commit
    system_metrics.py  MLflow's system/* metrics of a run
    links.py           MLflow UI addresses (runs, parent runs, the by-rollouts chart)
    tags.py            the tag keys and metric prefixes

Deliberately not here: what a run trains (loop.py, pipeline.py) and how a comparison is
summarised (pilotcommit/analysis/). The names below are the package's API.
"""

from pilotcommit.tracking.baselines import (
    accept_baseline,
    accept_comparison,
    baseline_fingerprint,
    comparison_fingerprint,
    find_accepted_baseline,
)
from pilotcommit.tracking.links import (
    MlflowLinks,
    browse_hint,
    metric_chart_url,
    mlflow_links,
    mlflow_run_url,
    mlflow_ui_url,
)
from pilotcommit.tracking.protocol import MemoryTracker, Tracker
from pilotcommit.tracking.provenance import code_version, git_sha, source_hash
from pilotcommit.tracking.runs import (
    RunRef,
    child_runs,
    copy_run_contents,
    find_or_create_run,
    find_run,
    flatten_params,
    latest_parent_run,
    log_dataset_inputs,
    log_resolved_config,
    metric_history,
    open_run,
    resolve_parent_run,
    run_exists,
)
from pilotcommit.tracking.store import (
    TrackingUnavailable,
    check_tracking_server,
    configure_mlflow_http,
    default_artifact_root,
    default_runs_root,
    ensure_experiment,
    mlflow_client,
    resolve_tracking_uri,
)
from pilotcommit.tracking.system_metrics import start_system_metrics
from pilotcommit.tracking.tags import (
    BY_ROLLOUTS_PREFIX,
    PARENT_TAG,
    TAG_ACCEPTED_BASELINE,
    TAG_CODE_VERSION,
    TAG_CONFIG_NAME,
    TAG_DELAYED_METRICS,
    TAG_DELAYED_STEPS,
    TAG_FINGERPRINT_KEY,
    TAG_FINGERPRINT_PREFIX,
    TAG_KIND,
    TAG_LOST_METRICS,
    TAG_RUN_KEY,
    TAG_SPOOL,
)
from pilotcommit.tracking.writer import MlflowTracker, TrackingGap, replay_spool

__all__ = [
    "BY_ROLLOUTS_PREFIX", "MemoryTracker", "MlflowLinks", "MlflowTracker", "PARENT_TAG", "RunRef",
    "TAG_ACCEPTED_BASELINE", "TAG_CODE_VERSION", "TAG_CONFIG_NAME", "TAG_DELAYED_METRICS",
    "TAG_DELAYED_STEPS", "TAG_FINGERPRINT_KEY", "TAG_FINGERPRINT_PREFIX", "TAG_KIND", "TAG_LOST_METRICS",
    "TAG_RUN_KEY", "TAG_SPOOL", "Tracker", "TrackingGap", "TrackingUnavailable", "accept_baseline",
    "accept_comparison", "baseline_fingerprint", "browse_hint", "check_tracking_server", "child_runs",
    "code_version", "comparison_fingerprint", "configure_mlflow_http", "copy_run_contents",
    "default_artifact_root", "default_runs_root", "ensure_experiment", "find_accepted_baseline",
    "find_or_create_run", "find_run", "flatten_params", "git_sha", "latest_parent_run", "log_dataset_inputs",
    "log_resolved_config", "metric_chart_url", "metric_history", "mlflow_client", "mlflow_links",
    "mlflow_run_url", "mlflow_ui_url", "open_run", "replay_spool", "resolve_parent_run",
    "resolve_tracking_uri", "run_exists", "source_hash", "start_system_metrics",
]
