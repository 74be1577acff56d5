"""Where a table of math prompts comes from and how its columns map to ours: ``DatasetSpec``.

A spec names one dataset (a Hugging Face hub dataset or one local .jsonl /
.json / .parquet file), the source column of each normalised column, and how
the reference answer is written. ``conf/data/*.yaml`` files hold specs; the
experiment config imports this class. Validation happens when a spec is
built, before anything is read, so a typo in a YAML file fails at load time.

Deliberately light: pydantic only (the experiment config imports it, and
must not pull in ``datasets`` or pandas). Reading is ``loaders.py``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

# normalised column -> must the spec map it?
NORMALISED_COLUMNS = {"problem": True, "answer": True, "prompt_id": False, "level": False}

# One segment of a column path: a column or key name, or a list index.
_PATH_SEGMENT = re.compile(r"[^.\s][^.]*")


class DatasetSpec(BaseModel):
    """One dataset of math problems with verifiable answers (training set or benchmark)."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    kind: Literal["math_dataset"] = Field(
        "math_dataset",
        description="Discriminator when a spec is one of several kinds of data config.",
    )
    name: str = Field(
        min_length=1,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$",
        description="Short dataset / benchmark name used in metric names and as the `source` "
        "column, e.g. `math500` (letters, digits, `_ . -`).",
    )
    hub_name: str | None = Field(
        None,
        description="Hugging Face hub dataset, e.g. `zwhe99/DeepMath-103K`. Exactly one of "
        "`hub_name` and `path`.",
    )
    hub_config: str | None = Field(None, description="Hub dataset configuration (subset) name.")
    split: str = Field(
        "train",
        min_length=1,
        description="Hub split. A local file is always read as one split; leave `train` there.",
    )
    path: str | None = Field(
        None,
        description="Local .jsonl / .json / .parquet file; a relative path is resolved against "
        "the loader's `base_dir` (the repository root for the shipped files). Exactly one of "
        "`hub_name` and `path`.",
    )
    columns: dict[str, str] = Field(
        description="Normalised column -> source column: `problem` and `answer` required, "
        "`prompt_id` and `level` optional. A source column may be a dotted path into nested "
        "fields (`reward_model.ground_truth`, `final_answer.0` for a list's first item). A "
        "`problem` that resolves to a list of chat messages ({role, content}) becomes the "
        "content of its last user message.",
    )
    answer_format: Literal["plain", "boxed", "gsm8k"] = Field(
        "plain",
        description="How the answer column is written: `plain` (the answer itself), `boxed` "
        "(a solution; its last \\boxed{} is the answer), `gsm8k` (a solution ending in "
        "`#### <answer>`).",
    )
    strip_problem_prefix: str | None = Field(
        None,
        description="Text removed from the start of each problem where present (an "
        "instruction baked into the source prompt, e.g. DAPO-Math-17k's), so that only the "
        "project's own template instructs the model.",
    )
    strip_problem_suffix: str | None = Field(
        None, description="Text removed from the end of each problem where present."
    )
    max_rows: int | None = Field(
        None, ge=1, description="Keep the first N prompts after de-duplication (None: all)."
    )
    eval_samples: int = Field(
        1,
        ge=1,
        description="Samples per problem when this set is a benchmark: accuracy is mean@k "
        "(the paper: 32 for AIME 2024/2025 and AMC 2023, 1 for the others).",
    )
    reward: Literal["math_verify"] = Field(
        "math_verify", description="Reward function (pilotcommit.rewards.REWARDS) for this data."
    )

    @field_validator("columns")
    @classmethod
    def _check_columns(cls, columns: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(columns) - set(NORMALISED_COLUMNS))
        if unknown:
            raise ValueError(
                f"unknown normalised column(s) {unknown}; allowed: {sorted(NORMALISED_COLUMNS)}"
            )
        missing = [c for c, required in NORMALISED_COLUMNS.items() if required and c not in columns]
        if missing:
            raise ValueError(f"missing required column mapping(s) {missing}")
        for target, source in columns.items():
            segments = source.split(".")
            if not source or not all(_PATH_SEGMENT.fullmatch(s) for s in segments):
                raise ValueError(f"{target}: {source!r} is not a column name or dotted path")
        return columns

    @model_validator(mode="after")
    def _check_location(self) -> DatasetSpec:
        if (self.hub_name is None) == (self.path is None):
            raise ValueError("set exactly one of hub_name and path")
        if self.path is not None:
            suffix = Path(self.path).suffix.lower()
            if suffix not in (".jsonl", ".json", ".parquet"):
                raise ValueError(f"path {self.path!r}: expected a .jsonl, .json or .parquet file")
            if self.hub_config is not None:
                raise ValueError("hub_config applies to hub datasets only (path is set)")
            if self.split != "train":
                raise ValueError(
                    "split applies to hub datasets only: a local file is one split; leave 'train'"
                )
        return self

    @property
    def origin(self) -> str:
        """Where the rows come from, for messages: hub name with config/split, or the path."""
        if self.hub_name is not None:
            config = f"/{self.hub_config}" if self.hub_config else ""
            return f"hub:{self.hub_name}{config}[{self.split}]"
        return str(self.path)


class DatasetSpecError(ValueError):
    """A dataset spec file is missing or invalid; the message names the file and the field."""


def read_dataset_specs(path: str | Path) -> list[DatasetSpec]:
    """The specs of one YAML file: a single spec, or ``benchmarks: [spec, ...]``.

    Raises :class:`DatasetSpecError` naming the file (and the entry) on any problem.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetSpecError(f"dataset spec file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise DatasetSpecError(f"{path}: invalid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise DatasetSpecError(f"{path}: expected a mapping, got {type(raw).__name__}")
    if "benchmarks" in raw:
        extra = sorted(set(raw) - {"benchmarks"})
        if extra or not isinstance(raw["benchmarks"], list):
            raise DatasetSpecError(
                f"{path}: a benchmark list file holds only `benchmarks: [spec, ...]` "
                f"(unexpected keys: {extra})"
            )
        entries = [(f"benchmarks[{i}]", e) for i, e in enumerate(raw["benchmarks"])]
    else:
        entries = [("", raw)]
    specs: list[DatasetSpec] = []
    for where, entry in entries:
        try:
            specs.append(DatasetSpec.model_validate(entry))
        except ValidationError as err:
            lines = [f"{path}: {where or 'spec'}: invalid dataset spec"]
            for e in err.errors():
                location = ".".join(str(x) for x in e["loc"]) or "<top level>"
                lines.append(f"  {location}: {e['msg']}")
            raise DatasetSpecError("\n".join(lines)) from None
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise DatasetSpecError(f"{path}: duplicate benchmark names in {names}")
    return specs
