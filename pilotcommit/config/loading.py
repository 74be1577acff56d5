"""Reading configs: YAML files, references to other files of ``conf/``, overrides, validation
with messages that name the file and the field, and the config hash.

An experiment file (``conf/experiment/*.yaml``) may name the
files of other groups instead of inlining them: ``model: tiny-arith`` reads
``conf/model/tiny-arith.yaml``; ``model: {base: tiny-arith, hidden_size: 64}``
reads it and overrides a field; ``methods: [grpo, dapo]`` reads
``conf/method/grpo.yaml`` and ``conf/method/dapo.yaml``. Command-line overrides
(``learner.lr=1e-4``) apply last. An impossible combination fails when the file is loaded,
with a message naming the field, before any data is read or any model is built.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError

from pilotcommit.config.base import ConfigError
from pilotcommit.config.experiment import ExperimentConfig

_GROUP_DIRS = {"data": "data", "model": "model"}
_METHOD_DIR = "method"
_BASE_KEY = "base"


def default_conf_dir() -> Path:
    """``$PILOTCOMMIT_CONF_DIR``, else the repository's ``conf/`` next to the package."""
    env = os.environ.get("PILOTCOMMIT_CONF_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "conf"


def conf_dir_of(path: Path) -> Path:
    """The ``conf/`` folder a file of ``conf/experiment/`` lives in, else :func:`default_conf_dir`."""
    folder = Path(path).resolve().parent
    return folder.parent if folder.name == "experiment" else default_conf_dir()


def read_yaml(path: Path, kind: str = "config file") -> dict:
    """The mapping a YAML file holds, read safely (a config cannot construct objects); a
    :class:`ConfigError` naming the file when it is missing, not YAML or not a mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{kind} not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())  # safe_load: a config cannot construct objects
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {err}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _deep_merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _resolve_ref(value: object, group_dir: Path, where: str) -> object:
    """``"name"`` -> contents of ``group_dir/name.yaml``; ``{base: name, ...}`` -> merged."""
    if isinstance(value, str):
        return read_yaml(_ref_path(group_dir, value, where))
    if isinstance(value, dict) and _BASE_KEY in value:
        overrides = {k: v for k, v in value.items() if k != _BASE_KEY}
        base = read_yaml(_ref_path(group_dir, value[_BASE_KEY], where))
        return _deep_merge(base, overrides)
    return value


def _ref_path(group_dir: Path, name: object, where: str) -> Path:
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise ConfigError(f"{where}: {name!r} is not a config name under {group_dir}")
    path = group_dir / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in group_dir.glob("*.yaml"))
        raise ConfigError(f"{where}: no config {name!r} in {group_dir} (known: {known})")
    return path


def resolve_references(raw: dict, conf_dir: Path, origin: str) -> dict:
    """Replace names of files under ``conf_dir`` by their contents (see module docstring)."""
    resolved = dict(raw)
    for key, group in _GROUP_DIRS.items():
        if key in resolved:
            resolved[key] = _resolve_ref(resolved[key], conf_dir / group, f"{origin}: {key}")
    data = resolved.get("data")
    if isinstance(data, dict) and data.get("kind") == "math":
        data = dict(data)
        data_dir = conf_dir / _GROUP_DIRS["data"]
        if "train" in data:
            data["train"] = _resolve_ref(data["train"], data_dir, f"{origin}: data.train")
        if isinstance(data.get("benchmarks"), str):
            listed = _resolve_ref(data["benchmarks"], data_dir, f"{origin}: data.benchmarks")
            if not isinstance(listed, dict) or "benchmarks" not in listed:
                raise ConfigError(f"{origin}: data.benchmarks: {data['benchmarks']!r} has no `benchmarks` list")
            data["benchmarks"] = listed["benchmarks"]
        resolved["data"] = data
    methods = resolved.get("methods")
    if isinstance(methods, list):  # [grpo, dapo] -> {grpo: grpo, dapo: dapo}
        if not all(isinstance(m, str) for m in methods):
            raise ConfigError(f"{origin}: methods: a list must hold config names only")
        methods = {m: m for m in methods}
    if isinstance(methods, dict):
        resolved["methods"] = {
            label: _resolve_ref(value, conf_dir / _METHOD_DIR, f"{origin}: methods.{label}")
            for label, value in methods.items()
        }
    return resolved


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """``["learner.lr=1e-4", "seeds=[0,1]"]``: dotted keys, values parsed as YAML."""
    result = copy.deepcopy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. learner.lr=1e-4")
        node = result
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node = child
        try:
            node[parts[-1]] = yaml.safe_load(text)  # safe_load: an override cannot construct objects
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: invalid YAML value: {err}") from None
    return result


def format_validation_error(err: ValidationError, origin: str, kind: str = "configuration") -> str:
    """One line naming the file, then one per failing field: ``  learner.lr: ...``."""
    lines = [f"{origin}: invalid {kind} ({err.error_count()} error(s))"]
    for e in err.errors():
        location = ".".join(str(x) for x in e["loc"]) or "<top level>"
        lines.append(f"  {location}: {e['msg']}")
    return "\n".join(lines)


def validate_experiment(raw: dict, origin: str = "<config>") -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, origin)) from None


def load_experiment_config(
    path: str | Path, overrides: list[str] | None = None, conf_dir: str | Path | None = None
) -> ExperimentConfig:
    """Load, resolve references, apply overrides and validate an experiment file.

    ``conf_dir`` defaults to the ``conf/`` folder above the file when the file lives in
    ``conf/experiment/``, else :func:`default_conf_dir`.
    """
    path = Path(path)
    conf_dir = conf_dir_of(path) if conf_dir is None else conf_dir
    raw = read_yaml(path)
    raw = resolve_references(raw, Path(conf_dir), str(path))
    raw = apply_overrides(raw, list(overrides or []))
    return validate_experiment(raw, str(path))


def config_hash(config: BaseModel) -> str:
    """Stable short hash of a resolved config (canonical JSON of all values)."""
    canonical = json.dumps(config.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def demo_config_path() -> Path:
    """The embedded default (``conf/experiment/demo.yaml``)."""
    return default_conf_dir() / "experiment" / "demo.yaml"
