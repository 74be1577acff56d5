"""MLflow tag keys and metric prefixes this project writes and reads (DESIGN.md lists method,
model, seed, config_hash, git_sha, prefect_flow_run_id; the ``pilotcommit.*`` keys identify runs
so a rerun finds them again)."""

TAG_RUN_KEY = "pilotcommit.run_key"
TAG_KIND = "pilotcommit.kind"  # "comparison", "sweep", "train", "regression"
TAG_CODE_VERSION = "pilotcommit.code_version"
TAG_ACCEPTED_BASELINE = "pilotcommit.accepted_baseline"
TAG_ACCEPTED_AT = "pilotcommit.accepted_at"
TAG_CONFIG_NAME = "pilotcommit.config_name"
TAG_DELAYED_METRICS = "pilotcommit.tracking.delayed_metrics"
TAG_DELAYED_STEPS = "pilotcommit.tracking.delayed_steps"
TAG_LOST_METRICS = "pilotcommit.tracking.lost_metrics"
TAG_SPOOL = "pilotcommit.tracking.spool_file"
PARENT_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"

BY_ROLLOUTS_PREFIX = "by_rollouts/"
TAG_FINGERPRINT_PREFIX = "pilotcommit.fingerprint."
TAG_FINGERPRINT_KEY = "pilotcommit.fingerprint_key"
