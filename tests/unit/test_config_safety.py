"""A config file is data, never code: YAML is loaded safely, no field takes an import path or a
callable, behaviour is chosen from closed sets of names, and a bad key fails when the file is
loaded, before any data is read or any model is built.

Each "nothing executed" test arms a payload that would create a marker file if it ran and
checks the marker is absent afterwards (and, as a control, that the same payload does create
it when run the unsafe way), so the tests would notice a loader that quietly ran the code.
"""

from __future__ import annotations

import json
import re
import types
from pathlib import Path
from typing import Annotated, Literal, Union, get_args, get_origin

import pytest
import yaml
from pydantic import BaseModel

from pilotcommit.allocation import POLICIES
from pilotcommit.config import (
    METHOD_NAMES,
    ConfigError,
    ExperimentConfig,
    PretrainedModelConfig,
    load_experiment_config,
)
from pilotcommit.rewards import REWARDS
from tests.conftest import CONF_DIR, REPO_ROOT, SMOKE_CONFIG

SMOKE_TEXT = SMOKE_CONFIG.read_text()


def _payloads(marker: Path) -> dict[str, str]:
    """YAML tags that make PyYAML's unsafe loaders run code or import names."""
    command = f"touch {marker}"
    return {
        "object/apply": f'!!python/object/apply:os.system ["{command}"]',
        "object/new": f'!!python/object/new:subprocess.check_call [["touch", "{marker}"]]',
        "name": "!!python/name:os.system",
        "module": "!!python/module:os",
    }


def test_control_the_payload_does_run_under_an_unsafe_loader(tmp_path):
    """Guards the tests below: if the payload could not run at all, their 'marker absent' would
    prove nothing."""
    marker = tmp_path / "MARKER"
    yaml.unsafe_load(f"name: {_payloads(marker)['object/apply']}\n")
    assert marker.exists()


@pytest.mark.parametrize("tag", ["object/apply", "object/new", "name", "module"])
def test_python_tags_in_the_experiment_file_are_refused_and_never_run(tag, tmp_path):
    marker = tmp_path / "MARKER"
    path = tmp_path / "experiment.yaml"
    path.write_text(SMOKE_TEXT.replace("name: smoke", f"name: {_payloads(marker)[tag]}"))
    with pytest.raises(ConfigError, match=re.escape(f"{path}: invalid YAML")) as err:
        load_experiment_config(path, conf_dir=CONF_DIR)
    assert "python/" in str(err.value)  # the message shows the offending tag
    assert not marker.exists()


def test_python_tags_in_a_referenced_conf_file_are_refused_and_never_run(tmp_path):
    """``model: evil`` reads conf/model/evil.yaml: that file is loaded just as safely."""
    marker = tmp_path / "MARKER"
    conf_dir = tmp_path / "conf"
    (conf_dir / "model").mkdir(parents=True)
    (conf_dir / "data").mkdir()
    (conf_dir / "method").mkdir()
    for group in ("data", "method"):
        for source in (CONF_DIR / group).glob("*.yaml"):
            (conf_dir / group / source.name).write_text(source.read_text())
    evil = conf_dir / "model" / "evil.yaml"
    evil.write_text(f"kind: tiny\nhidden_size: {_payloads(marker)['object/apply']}\n")
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump({**yaml.safe_load(SMOKE_TEXT), "model": "evil"}))
    with pytest.raises(ConfigError, match=re.escape(f"{evil}: invalid YAML")):
        load_experiment_config(path, conf_dir=conf_dir)
    assert not marker.exists()


def test_python_tags_in_a_command_line_override_are_refused_and_never_run(tmp_path):
    marker = tmp_path / "MARKER"
    override = f"name={_payloads(marker)['object/apply']}"
    with pytest.raises(ConfigError, match=re.escape(f"override {override!r}: invalid YAML value")):
        load_experiment_config(SMOKE_CONFIG, overrides=[override])
    assert not marker.exists()


@pytest.mark.parametrize("name", ["../../../etc/passwd", "/etc/passwd", ".hidden", "model/tiny-arith"])
def test_references_resolve_only_to_files_inside_the_conf_directory(name, tmp_path):
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump({**yaml.safe_load(SMOKE_TEXT), "model": name}))
    with pytest.raises(ConfigError, match=re.escape(f"model: {name!r} is not a config name")):
        load_experiment_config(path, conf_dir=CONF_DIR)


# --------------------------------------------------------------------------- the schema


def _leaf_types(annotation, path: str):
    """(field path, leaf annotation) for every value a config can hold, through nested models,
    unions, containers and Annotated."""
    origin = get_origin(annotation)
    if origin is Annotated:
        yield from _leaf_types(get_args(annotation)[0], path)
    elif origin in (Union, types.UnionType):
        for arg in get_args(annotation):
            yield from _leaf_types(arg, path)
    elif origin in (list, tuple, set, frozenset):
        for arg in get_args(annotation):
            if arg is not Ellipsis:
                yield from _leaf_types(arg, f"{path}[]")
    elif origin is dict:
        key, value = get_args(annotation)
        yield from _leaf_types(key, f"{path}[key]")
        yield from _leaf_types(value, f"{path}[]")
    elif origin is Literal:
        yield path, annotation
    elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
        for name, field in annotation.model_fields.items():
            yield from _leaf_types(field.annotation, f"{path}.{name}" if path else name)
    else:
        yield path, annotation


# Every free-text field, with what the project does with it. None is ever imported, evaluated,
# or used to pick code; a new free-text field fails this test until it is reviewed and added.
FREE_TEXT_FIELDS = {
    "name": "experiment name: MLflow experiment and directory names",
    "cell": "sweep cell name (a pattern of letters, digits, `_.-`): tags, run names, artifact paths",
    "data.levels[].templates[]": "arithmetic template, parsed by synthetic.parse_template's own grammar",
    "data.train.name": "dataset name, validated by a pattern; metric names and the source column",
    "data.train.hub_name": "hub dataset id, read by datasets.load_dataset (no loading scripts)",
    "data.train.hub_config": "hub dataset subset name",
    "data.train.split": "hub split name",
    "data.train.path": "local data file, read as json/parquet only",
    "data.train.columns[key]": "normalised column name, checked against a fixed set",
    "data.train.columns[]": "source column path, looked up in the data",
    "data.train.strip_problem_prefix": "literal text removed from problems",
    "data.train.strip_problem_suffix": "literal text removed from problems",
    "data.benchmarks[].name": "as data.train.name",
    "data.benchmarks[].hub_name": "as data.train.hub_name",
    "data.benchmarks[].hub_config": "as data.train.hub_config",
    "data.benchmarks[].split": "as data.train.split",
    "data.benchmarks[].path": "as data.train.path",
    "data.benchmarks[].columns[key]": "as data.train.columns[key]",
    "data.benchmarks[].columns[]": "as data.train.columns[]",
    "data.benchmarks[].strip_problem_prefix": "as data.train.strip_problem_prefix",
    "data.benchmarks[].strip_problem_suffix": "as data.train.strip_problem_suffix",
    "data.base_dir": "directory relative data paths resolve against",
    "model.name_or_path": "hub model id or directory, loaded with trust_remote_code=False",
    "model.label": "short model name for tags",
    "model.revision": "hub commit of the model",
    "model.gguf.file": "GGUF file path or model-cache name, read as a file after its sha256 check",
    "model.gguf.sha256": "64 hex digits (pattern), names the converted folder",
    "methods[key]": "run label of a method",
    "train_mix.level_shares[key]": "a level value, compared with the prepared table's `level` column",
    "target.metric": "metric name looked up in evaluation results",
    "target.reference_method": "a key of methods (checked)",
    "tracking.experiment_name": "MLflow experiment name",
    "tracking.tracking_uri": "MLflow store URI",
}
SAFE_LEAVES = (int, float, bool, type(None), str)


def test_no_field_can_hold_an_import_path_callable_or_object():
    leaves = list(_leaf_types(ExperimentConfig, ""))
    unsafe = [(p, t) for p, t in leaves if get_origin(t) is not Literal and t not in SAFE_LEAVES]
    assert not unsafe, f"fields typed other than plain values or closed sets of names: {unsafe}"
    free_text = sorted({p for p, t in leaves if t is str})
    assert free_text == sorted(FREE_TEXT_FIELDS), (
        "free-text config fields changed; review each new one (it must never be imported, "
        f"evaluated or used to pick code) and list it here: {set(free_text) ^ set(FREE_TEXT_FIELDS)}"
    )


def test_method_and_reward_names_are_closed_sets_matching_the_registries():
    method_tags = {
        get_args(m.model_fields["name"].annotation)[0]
        for m in get_args(get_args(ExperimentConfig.model_fields["methods"].annotation)[1])[0].__args__
    }
    assert method_tags == set(METHOD_NAMES) == set(POLICIES)
    reward_names = set()
    for data_model in get_args(get_args(ExperimentConfig.model_fields["data"].annotation)[0]):
        reward_names |= set(get_args(data_model.model_fields["reward"].annotation))
    assert reward_names <= set(REWARDS)


@pytest.mark.parametrize(
    "where, value, field",
    [
        ("methods", {"grpo": {"name": "os.system"}}, "methods.grpo"),
        ("methods", {"grpo": {"name": "pilotcommit.allocation.grpo:GRPOPolicy"}}, "methods.grpo"),
        ("data", {"base": "arith", "reward": "builtins:eval"}, "data.synthetic_arith.reward"),
        ("data", {"kind": "os:system"}, "data"),
        ("rollout", {"engine": "pilotcommit.rollout.vllm_engine.VLLMEngine"}, "rollout.engine"),
    ],
)
def test_an_import_path_where_a_name_is_expected_is_refused(where, value, field, tmp_path):
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump({**yaml.safe_load(SMOKE_TEXT), where: value}))
    with pytest.raises(ConfigError) as err:
        load_experiment_config(path, conf_dir=CONF_DIR)
    assert re.search(rf"^\s+{re.escape(field)}\b", str(err.value), re.MULTILINE), str(err.value)


# A typo in every section, including the ones a run reads last (evaluation, checkpoints) and
# the ones filled from referenced files: none is validated lazily, so none waits for compute.
TYPOS = {
    "rollout.temprature": ("rollout", "temprature", 0.5),
    "eval.greedyy": ("eval", "greedyy", False),
    "checkpoint.evry_steps": ("checkpoint", "evry_steps", 3),
    "budget.max_stepz": ("budget", "max_stepz", 3),
    "tracking.tracking_url": ("tracking", "tracking_url", "http://127.0.0.1:5000"),
    "target.acuracy": ("target", "acuracy", 0.5),
    "model.tiny.warm_start.lrr": ("model.warm_start", "lrr", 0.1),
    "methods.pilot_commit.pilot_commit.n_pilott": ("methods.pilot_commit", "n_pilott", 4),
    "data.synthetic_arith.levels.0.n_trian": ("data.levels.0", "n_trian", 10),
}


@pytest.mark.parametrize("field", list(TYPOS))
def test_unknown_keys_anywhere_fail_when_the_file_is_loaded(field, tmp_path):
    """The whole config is validated when loaded, so a run never starts (and never prepares data
    or builds a model) on a default the user did not mean."""
    section, key, value = TYPOS[field]
    raw = yaml.safe_load(SMOKE_TEXT)
    node = raw
    for part in section.split("."):
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    node[key] = value
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as err:
        load_experiment_config(path, conf_dir=CONF_DIR)
    assert f"{field}: Extra inputs are not permitted" in str(err.value), str(err.value)


def test_every_committed_config_loads_with_only_safe_yaml():
    """The repository's own conf/ files need nothing beyond safe YAML (no custom tags)."""
    for path in sorted(CONF_DIR.rglob("*.yaml")):
        yaml.safe_load(path.read_text())  # raises on any python/ or custom tag
    for path in sorted((CONF_DIR / "experiment").glob("*.yaml")):
        load_experiment_config(path)


def test_model_directories_with_custom_code_are_refused_and_never_run(tmp_path):
    """A model directory (or hub repo) may ship Python that transformers would import with
    trust_remote_code=True; the project never passes it, so such a model fails to load and its
    code does not run."""
    from pilotcommit.models.loading import load_policy

    model_dir = tmp_path / "evil-model"
    model_dir.mkdir()
    markers = []
    for module in ("configuration_evil", "modeling_evil", "tokenization_evil"):
        marker = tmp_path / f"MARKER-{module}"
        markers.append(marker)
        (model_dir / f"{module}.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    auto_map = {
        "AutoConfig": "configuration_evil.EvilConfig",
        "AutoModelForCausalLM": "modeling_evil.EvilModel",
        "AutoTokenizer": ["tokenization_evil.EvilTokenizer", None],
    }
    (model_dir / "config.json").write_text(
        json.dumps({"model_type": "evil_model", "architectures": ["EvilModel"], "auto_map": auto_map})
    )
    (model_dir / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "EvilTokenizer", "auto_map": {"AutoTokenizer": auto_map["AutoTokenizer"]}})
    )
    config = PretrainedModelConfig(name_or_path=str(model_dir), label="evil", dtype="float32")
    with pytest.raises(ValueError, match="trust_remote_code"):
        load_policy(str(model_dir), config)
    assert not any(m.exists() for m in markers)


def test_package_source_has_no_unsafe_loaders_or_dynamic_code():
    """No unsafe YAML loader, eval/exec, dynamic import, pickle, trust_remote_code=True anywhere
    in the library or the flows; no torch.load without weights_only=True (checkpoints hold
    tensors and allow-listed JSON, pilotcommit/checkpoint.py); and none of the parsers that
    evaluate model output as code: sympy's parse_expr / sympify and math-verify's
    ExprExtractionConfig (its plain-expression extraction calls parse_expr)."""
    forbidden = re.compile(
        r"yaml\.(load|unsafe_load|full_load)\(|yaml\.(Unsafe|Full)?Loader\b|(?<![.\w])(eval|exec)\(|"
        r"import_module\(|__import__\(|trust_remote_code\s*=\s*True|pickle\.loads?\(|"
        r"weights_only\s*=\s*False|parse_expr\(|sympify\(|ExprExtractionConfig|"
        r"torch\.load\((?!.*weights_only\s*=\s*True)"
    )
    # the one reviewed exception: pilotcommit.dependencies.require imports an optional package
    # by a name it first checks against its closed registry (test_optional_packages.py)
    reviewed = ("pilotcommit/dependencies.py", "# safety scan: only names of OPTIONAL (checked above)")
    hits = []
    for path in sorted([*(REPO_ROOT / "pilotcommit").rglob("*.py"), *(REPO_ROOT / "flows").rglob("*.py")]):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if path.relative_to(REPO_ROOT).as_posix() == reviewed[0] and line.endswith(reviewed[1]):
                continue
            if forbidden.search(line):
                hits.append(f"{path.relative_to(REPO_ROOT)}:{number}: {line.strip()}")
    assert not hits, "\n".join(hits)


@pytest.mark.parametrize("line", [
    "x = torch.load(path, weights_only=False)",
    "x = torch.load(path)",
    "expr = parse_expr(text)",
    "value = sympy.sympify(text)",
    "configs = [ExprExtractionConfig(), LatexExtractionConfig()]",
    "obj = pickle.loads(blob)",
])
def test_the_source_scan_catches_each_forbidden_call(line, tmp_path, monkeypatch):
    """Control for the scan above: each forbidden call, planted in a package file, is reported."""
    import tests.unit.test_config_safety as this

    fake = tmp_path / "repo"
    (fake / "pilotcommit").mkdir(parents=True)
    (fake / "flows").mkdir()
    (fake / "pilotcommit" / "planted.py").write_text(f"{line}\n")
    monkeypatch.setattr(this, "REPO_ROOT", fake)
    with pytest.raises(AssertionError, match="planted.py:1"):
        test_package_source_has_no_unsafe_loaders_or_dynamic_code()
