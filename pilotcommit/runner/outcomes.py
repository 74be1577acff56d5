"""What a flow hands its caller: the training runs of a comparison (:class:`TrainedRun`) and the
comparison's outcome (:class:`CompareOutcome`). Flows return them as plain JSON (``to_dict``),
which is what a deployment's result and Prefect's result store accept; callers read them back
with ``from_dict``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from pilotcommit.analysis.publish import ComparisonReport


@dataclass(frozen=True)
class TrainedRun:
    """One training run of a comparison or sweep cell, finished."""

    method: str
    seed: int
    model: str
    cell: str
    stage_key: str
    mlflow_run_id: str
    run_dir: str
    final_metrics: dict[str, float] = field(default_factory=dict)
    tracking_gap: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainedRun:
        return cls(**data)


@dataclass(frozen=True)
class CompareOutcome:
    """A finished comparison: where it is tracked, its runs, its report, and the probe's
    prediction beside the measured informative-group rates."""

    config_name: str
    config_hash: str
    parent_run_id: str
    experiment_id: str
    tracking_uri: str
    runs_root: str
    runs: list[TrainedRun]
    report: ComparisonReport
    probe: dict | None  # ProbeResult.to_dict(), None without a probe
    informative_measured: dict[str, dict[str, float]]

    def to_dict(self) -> dict:
        return {**{k: getattr(self, k) for k in ("config_name", "config_hash", "parent_run_id", "experiment_id",
                                                  "tracking_uri", "runs_root", "probe", "informative_measured")},
                "runs": [r.to_dict() for r in self.runs], "report": self.report.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CompareOutcome:
        return cls(**{**data, "runs": [TrainedRun.from_dict(r) for r in data["runs"]],
                      "report": ComparisonReport.from_dict(data["report"])})
