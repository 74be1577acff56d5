"""Prepared data on disk: the validated prompt tables every stage after data preparation reads.

``PreparedData`` names the files (one training table, one per benchmark, a
manifest); ``read_prompt_table`` reads one back and validates it again. Both
the stage functions (``pilotcommit.pipeline``) and the run loop
(``pilotcommit.loop``) use them, so they live here, below both: the run loop
never imports the pipeline.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pilotcommit.data.schema import validate_prompt_table

PROMPTS_TOO_LONG = "prompts_too_long"  # manifest key: prompts dropped by model.max_prompt_length


@dataclass(frozen=True)
class PreparedData:
    """Validated prompt tables on disk: one training set and one file per benchmark."""

    train_path: Path
    eval_paths: dict[str, Path]
    manifest_path: Path

    def to_dict(self) -> dict:
        return {
            "train_path": str(self.train_path),
            "eval_paths": {k: str(v) for k, v in self.eval_paths.items()},
            "manifest_path": str(self.manifest_path),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "PreparedData":
        return cls(
            Path(data["train_path"]),
            {k: Path(v) for k, v in data["eval_paths"].items()},
            Path(data["manifest_path"]),
        )

    def dropped_prompts(self) -> dict[str, int]:
        """``{"data.<section>.<name>.prompts_too_long": count}`` from the manifest (empty when
        no length filter applied), for the training run's parameters."""
        manifest = json.loads(self.manifest_path.read_text())
        return {
            f"data.{section}.{name}.{PROMPTS_TOO_LONG}": int(entry[PROMPTS_TOO_LONG])
            for section, tables in manifest.items() if isinstance(tables, dict)
            for name, entry in tables.items() if isinstance(entry, dict) and PROMPTS_TOO_LONG in entry
        }

    def dataset_inputs(self) -> dict[str, tuple[Path, str]]:
        """``{name: (file, context)}`` of every table, as a training run's MLflow inputs."""
        return {"train": (self.train_path, "training"),
                **{name: (path, "evaluation") for name, path in self.eval_paths.items()}}

    def exists(self) -> bool:
        paths = [self.train_path, self.manifest_path, *self.eval_paths.values()]
        return all(p.is_file() for p in paths)


def read_prompt_table(path: Path) -> pd.DataFrame:
    """A prepared parquet file, validated again (it may have been edited since)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prepared data file not found: {path}")
    frame = pd.read_parquet(path)
    if "level" in frame.columns:
        frame["level"] = frame["level"].map(lambda v: None if pd.isna(v) else str(v))
    return validate_prompt_table(frame, origin=str(path))
