"""The model-scale sweep: one experiment config run for several model configs (x methods x seeds).

A sweep file (``conf/sweep/*.yaml``) names an experiment file and a list of models; each model
entry is what an experiment file's ``model:`` key accepts (a name under ``conf/model/``, or
``{base: name, field: value}``, or a full inline mapping). :func:`cell_config` builds the
validated :class:`~pilotcommit.config.ExperimentConfig` of one model by putting that entry in
place of the experiment's own ``model`` before references are resolved, so a sweep cell is
exactly what ``pilotcommit compare`` would run with that model. Files are read, overridden and
validated by the same functions as experiment files (pilotcommit/config/loading.py).

Deliberately not here: scheduling the cells (flows/sweep.py) or summarising them
(pilotcommit/analysis/).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pilotcommit.config.base import ConfigError
from pilotcommit.config.experiment import ExperimentConfig
from pilotcommit.config.loading import (
    apply_overrides,
    conf_dir_of,
    default_conf_dir,
    format_validation_error,
    read_yaml,
    resolve_references,
    validate_experiment,
)


class SweepConfig(BaseModel):
    """A sweep over model configs; every cell runs the experiment's methods and seeds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, description="Sweep name (MLflow experiment of the sweep).")
    experiment: str = Field(
        description="Experiment file: a name under conf/experiment/ or a path to a YAML file."
    )
    models: list[str | dict[str, Any]] = Field(
        min_length=1,
        description="Model entries, each what an experiment's `model:` accepts, or a cell "
        "`{model: <that>, label: <name>, overrides: [KEY=VALUE, ...]}` with settings of that cell "
        "only (its tensor parallelism and process count, or a data mix and group size); `label` "
        "names the cell (default: the model's label) and must be unique.",
    )
    seeds: list[int] | None = Field(None, description="Seeds of every cell (None: the experiment's).")
    methods: list[str] | None = Field(
        None, description="Method labels to run (None: all of the experiment's methods)."
    )
    overrides: list[str] = Field(
        default_factory=list, description="KEY=VALUE overrides applied to every cell."
    )
    cell_deployment: str = Field(
        "sweep-model/cell",
        description="Deployment that runs one model's cells when the sweep dispatches to a work pool.",
    )

    @model_validator(mode="after")
    def _check(self) -> SweepConfig:
        if self.seeds is not None and len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds: duplicates in {self.seeds}")
        for i, entry in enumerate(self.models):
            if isinstance(entry, dict) and _CELL_MODEL in entry:
                extra = set(entry) - {_CELL_MODEL, _CELL_OVERRIDES, _CELL_LABEL}
                if extra:
                    raise ValueError(f"models[{i}]: unknown keys {sorted(extra)} beside `model` "
                                     "(a cell entry has `model`, `label` and `overrides` only)")
                label = entry.get(_CELL_LABEL)
                if label is not None and not (isinstance(label, str) and label):
                    raise ValueError(f"models[{i}].label: expected a non-empty name, got {label!r}")
                overrides = entry.get(_CELL_OVERRIDES, [])
                if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
                    raise ValueError(f"models[{i}].overrides: expected a list of KEY=VALUE strings")
        return self

    def cell_entry(self, index: int) -> tuple[str | dict[str, Any], list[str], str | None]:
        """``(model entry, the cell's own overrides, its label or None)`` of cell ``index``."""
        entry = self.models[index]
        if isinstance(entry, dict) and _CELL_MODEL in entry:
            return entry[_CELL_MODEL], list(entry.get(_CELL_OVERRIDES, [])), entry.get(_CELL_LABEL)
        return entry, [], None


# a model config never has a `model` key
_CELL_MODEL, _CELL_OVERRIDES, _CELL_LABEL = "model", "overrides", "label"


def load_sweep_config(path: str | Path, overrides: list[str] | None = None,
                      methods: list[str] | None = None) -> SweepConfig:
    """Read and validate a sweep file (``overrides`` as for experiments: ``seeds=[0,1]``;
    ``methods``: run these of the experiment's methods only, in place of the file's ``methods``)."""
    path = Path(path)
    raw = apply_overrides(read_yaml(path, "sweep config"), list(overrides or []))
    if methods is not None:
        raw["methods"] = list(methods)
    try:
        return SweepConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, str(path), "sweep configuration")) from None


def experiment_path(sweep: SweepConfig, conf_dir: Path | None = None) -> Path:
    """The sweep's experiment file: a path if it is one, else ``conf/experiment/<name>.yaml``."""
    candidate = Path(sweep.experiment)
    if candidate.suffix in (".yaml", ".yml"):
        return candidate
    return Path(conf_dir or default_conf_dir()) / "experiment" / f"{sweep.experiment}.yaml"


def cell_config(
    sweep: SweepConfig, model_index: int, extra_overrides: list[str] | None = None, conf_dir: Path | None = None
) -> ExperimentConfig:
    """The validated experiment config of model ``model_index`` of the sweep."""
    if not 0 <= model_index < len(sweep.models):
        raise ConfigError(f"sweep {sweep.name}: model index {model_index} out of range 0..{len(sweep.models) - 1}")
    path = experiment_path(sweep, conf_dir)
    conf_dir = Path(conf_dir) if conf_dir else conf_dir_of(path)
    if not path.is_file():
        raise ConfigError(f"sweep {sweep.name}: experiment file not found: {path}")
    raw = read_yaml(path)
    model_entry, cell_overrides, label = sweep.cell_entry(model_index)
    raw["model"] = model_entry
    if label is not None:
        raw["cell"] = label
    origin = f"{path} (sweep {sweep.name}, models[{model_index}])"
    raw = resolve_references(raw, conf_dir, origin)
    # the sweep's, then this cell's own, then the caller's (the command line wins)
    overrides = list(sweep.overrides) + cell_overrides + list(extra_overrides or [])
    if sweep.seeds is not None:
        overrides.append(f"seeds={sweep.seeds}")
    raw = apply_overrides(raw, overrides)
    if sweep.methods is not None:
        methods = raw.get("methods", {})
        unknown = [m for m in sweep.methods if m not in methods]
        if unknown:
            raise ConfigError(f"sweep {sweep.name}: methods {unknown} are not in {path} (have {sorted(methods)})")
        raw["methods"] = {m: methods[m] for m in sweep.methods}
    return validate_experiment(raw, origin)


def cell_configs(sweep: SweepConfig, extra_overrides: list[str] | None = None) -> list[ExperimentConfig]:
    """Every cell's config, validated up front so a bad entry fails before any compute."""
    configs = [cell_config(sweep, i, extra_overrides) for i in range(len(sweep.models))]
    labels = [c.cell_label for c in configs]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"sweep {sweep.name}: two cells have the same label {labels}; give each "
                          "cell entry its own `label`")
    return configs
