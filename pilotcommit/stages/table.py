"""Every stage of the pipeline in one table: its cache key, its output folder, its validity rule.

    stage            key (every key also holds the code version)        folder (under the runs dir)             valid when
    data             data config [+ prompt-length filter]               data/<key>/                             the prepared files exist
    policy           model config + data key                            policies/<key>/                         the checkpoint folder exists (a hub name: always)
    probe            probe/methods/mix/rollout settings + policy + data  (its result only: Prefect's cache)      -
    train            the run config (one method, one seed) + policy +   <name>/train/<label>-seed<s>-<key16>/   result.json, tracking.json and the final
                     data                                                                                        policy are there
    comparison       experiment config [+ the flow run, on refresh]     (an MLflow parent run)                  -
    report           comparison key + cell + train keys + report code   <name>/reports/<key>/                   -
    evaluate         data + eval/rollout/model configs + checkpoint     (its result only)                       -
                     files + seed
    sweep            sweep config + every cell's config [+ flow run]    (an MLflow parent run)                  -

The *run config* of a training run is the experiment config narrowed to that run (its one
method, its one seed, no probe), so adding a seed or a method to a comparison reuses the runs
already trained. A train folder is named by the stage key, not the config alone: new code or a
new initial policy trains into a new folder, never resumes (or reuses) a run of the old one.
MLflow runs are found again by a run key (:func:`run_key`), the same hash of their parts.

One hash for all of them (:func:`digest`); Prefect caches each stage's result under its key,
and a cached result is trusted only if its folder is still valid (:mod:`.materialise`).
Pure: no Prefect, no MLflow.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pilotcommit.config import ExperimentConfig, config_hash

STAGE_FILE = "stage.json"
RESULT_FILE = "result.json"  # written by pilotcommit.loop.train_run
TRACKING_FILE = "tracking.json"
RESULTS_DIRNAME = "prefect-results"


# --------------------------------------------------------------------------- the hash


def digest(text: str, length: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def stage_key(stage: str, *parts: object) -> str:
    """``<stage>-<24 hex>`` from the stage's defining parts (config hashes, upstream keys, code)."""
    return f"{stage}-{digest(json.dumps([str(p) for p in parts]), 24)}"


def run_key(*parts: object) -> str:
    """Stable identity of an MLflow run from its defining parts (16 hex; tag ``pilotcommit.run_key``)."""
    return digest(json.dumps([str(p) for p in parts]), 16)


def settings_digest(settings: dict) -> str:
    """16 hex of a settings mapping (canonical JSON, sorted keys)."""
    return digest(json.dumps(settings, sort_keys=True), 16)


# --------------------------------------------------------------------------- the keys


def run_config(cfg: ExperimentConfig, label: str, seed: int) -> ExperimentConfig:
    """The experiment config narrowed to one training run (its method and seed, no probe).

    Built with ``model_copy`` (no re-validation): the narrowed config may no longer hold the
    target's reference method, which a single run does not use.
    """
    # a training run does not probe: the comparison's probe settings must not change its key
    return cfg.model_copy(update={"seeds": [seed], "methods": {label: cfg.methods[label]},
                                  "probe": cfg.probe.model_copy(update={"prompts": 0})})


@dataclass(frozen=True)
class UpstreamKeys:
    """The keys of an experiment's shared stages: its data and its initial policy."""

    data: str
    policy: str

    @classmethod
    def of(cls, cfg: ExperimentConfig, code_version: str) -> UpstreamKeys:
        from pilotcommit.pipeline import data_fingerprint

        data = stage_key("data", *data_fingerprint(cfg), code_version)
        return cls(data, stage_key("policy", config_hash(cfg.model), data, code_version))

    def probe(self, cfg: ExperimentConfig, code_version: str) -> str:
        settings = cfg.model_dump(mode="json", include={"probe", "methods", "train_mix", "rollout"})
        return stage_key("probe", settings_digest(settings), self.policy, self.data, code_version)

    def train(self, run_cfg: ExperimentConfig, code_version: str) -> str:
        return stage_key("train", config_hash(run_cfg), self.policy, self.data, code_version)

    def probe_run(self, cfg: ExperimentConfig, prompts: int, samples: int, seed: int, estimator: str,
                  attempt: str) -> str:
        """The MLflow run of one ``pilotcommit probe`` (a new one per flow run ``attempt``)."""
        return stage_key("probe", config_hash(cfg), self.policy, prompts, samples, seed, estimator, attempt)


def comparison_key(cfg: ExperimentConfig, code_version: str, attempt: str = "") -> str:
    """The comparison's parent run; ``attempt`` (a flow run id, on refresh) makes a new one."""
    return stage_key("comparison", config_hash(cfg), code_version, attempt)


def sweep_key(sweep, cells: Sequence[ExperimentConfig], code_version: str, attempt: str = "") -> str:
    return stage_key("sweep", config_hash(sweep), *[config_hash(c) for c in cells], code_version, attempt)


def report_key(parent_key: str, cell: str | None, train_keys: Sequence[str], report_code: str) -> str:
    return stage_key("report", parent_key, cell or "", *train_keys, report_code)


def checkpoint_fingerprint(checkpoint: str) -> str:
    """Path, size and mtime of every file of a local checkpoint (a hub name: the name)."""
    path = Path(checkpoint)
    if not path.exists():
        return checkpoint
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return ";".join(f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)


def evaluate_key(cfg: ExperimentConfig, data_key: str, checkpoint: str, seed: int, code_version: str) -> str:
    return stage_key("evaluate", data_key, config_hash(cfg.eval), config_hash(cfg.rollout), config_hash(cfg.model),
                     checkpoint_fingerprint(checkpoint), seed, code_version)


def report_code_version() -> str:
    """Hash of the code that writes a comparison report (pilotcommit/analysis/): a changed report
    is rewritten, cached training runs are not."""
    folder = Path(__file__).resolve().parents[1] / "analysis"
    return digest("".join(p.read_text() for p in sorted(folder.glob("*.py"))), 16)


# --------------------------------------------------------------------------- the folders


@dataclass(frozen=True)
class RunsLayout:
    """Where each stage writes under the runs directory."""

    root: Path

    @property
    def results_dir(self) -> Path:
        return self.root / RESULTS_DIRNAME

    def data_dir(self, key: str) -> Path:
        return self.root / "data" / key

    def policy_dir(self, key: str) -> Path:
        return self.root / "policies" / key

    def train_dir(self, name: str, label: str, seed: int, train_key: str) -> Path:
        return self.root / name / "train" / f"{label}-seed{seed}-{train_key.split('-', 1)[-1][:16]}"

    def report_dir(self, name: str, key: str) -> Path:
        return self.root / name / "reports" / key


# --------------------------------------------------------------------------- the validity rules


def prepared_valid(stage: dict) -> bool:
    from pilotcommit.data.prepared import PreparedData

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


def read_stage(folder: Path) -> dict | None:
    """The ``stage.json`` a materialised stage left in ``folder`` (None: none, or unreadable)."""
    path = Path(folder) / STAGE_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


@dataclass(frozen=True)
class Stage:
    """One row of the table: the folder a stage writes under a :class:`RunsLayout` (None: only
    its result, in Prefect's cache) and whether what a folder holds is a finished stage."""

    name: str
    folder: Callable[..., Path] | None
    valid: Callable[[Path], bool] | None

    def done(self, folder: Path) -> bool:
        return self.valid is not None and self.valid(folder)


def _materialised(rule: Callable[[dict], bool]) -> Callable[[Path], bool]:
    def valid(folder: Path) -> bool:
        stage = read_stage(folder)
        return stage is not None and rule(stage)

    return valid


STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("data", RunsLayout.data_dir, _materialised(prepared_valid)),
    Stage("policy", RunsLayout.policy_dir, _materialised(policy_valid)),
    Stage("probe", None, None),
    Stage("train", RunsLayout.train_dir, lambda folder: read_train_outputs(folder) is not None),
    Stage("comparison", None, None),
    Stage("report", RunsLayout.report_dir, None),
    Stage("evaluate", None, None),
    Stage("sweep", None, None),
)}
