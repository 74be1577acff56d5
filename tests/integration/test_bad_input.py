"""Bad input fails early with a message naming the file, row or field, and leaves nothing behind
that looks like a finished output.

Covered: dataset rows with empty or missing fields, wrong types and duplicate ids (through
``prepare_data`` on a math config pointing at hand-made .jsonl files, and through
``read_prompt_table`` on hand-made parquet files); unknown config keys and impossible values
(``load_experiment_config`` on hand-made YAML files); a missing data file, column, initial policy
or checkpoint; a corrupt checkpoint; a resume under another config, seed or method; and a loss,
gradient or policy that turns NaN or infinite, which stops the run at the step it happens and
keeps the last checkpoint written before it.

Everything runs for real (pandera, datasets, the tiny model, the transformers engine, the
learner); the training cases use the session's smoke data and warm start and take seconds each.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from pilotcommit.checkpoint import (
    STATE_FILE,
    CheckpointError,
    checkpoint_root,
    latest_checkpoint,
    load_checkpoint,
    read_meta,
    save_checkpoint,
)
from pilotcommit.config import ConfigError, load_experiment_config
from pilotcommit.data.loaders import DatasetColumnError
from pilotcommit.data.schema import DatasetValidationError
from pilotcommit.loop import FINAL_POLICY_DIR, RESULT_FILE, TrainingDivergedError, train_run
from pilotcommit.pipeline import PreparedData, prepare_data, read_prompt_table
from tests.conftest import CONF_DIR, SMOKE_CONFIG

pytestmark = pytest.mark.integration


def _assert_nothing_finished(run_dir: Path) -> None:
    """No output of a finished run: no result.json, no final policy."""
    assert not (run_dir / RESULT_FILE).exists()
    assert not (run_dir / FINAL_POLICY_DIR).exists()


# --------------------------------------------------------------------------- dataset rows

GOOD_ROWS = [{"id": "a", "problem": "What is 1+1?", "answer": "2"}, {"id": "b", "problem": "What is 2+3?", "answer": "5"}]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _math_config(tmp_path: Path, train_rows: list[dict], bench_rows: list[dict] | None = None, **train_spec):
    """An experiment whose training set and benchmark are .jsonl files under ``tmp_path``."""
    _write_jsonl(tmp_path / "train.jsonl", train_rows)
    _write_jsonl(tmp_path / "bench.jsonl", bench_rows if bench_rows is not None else GOOD_ROWS)
    spec = {"name": "train", "path": "train.jsonl", "columns": {"problem": "problem", "answer": "answer", "prompt_id": "id"}}
    spec.update(train_spec)
    raw = {
        "name": "bad-data",
        "data": {
            "kind": "math",
            "base_dir": str(tmp_path),
            "train": spec,
            "benchmarks": [{"name": "bench", "path": "bench.jsonl", "columns": {"problem": "problem", "answer": "answer"}}],
        },
        "model": {"base": "tiny-arith"},
        "methods": ["grpo"],
        "budget": {"max_steps": 1},
    }
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_experiment_config(path, conf_dir=CONF_DIR)


def _assert_no_prepared_output(out_dir: Path, failed_name: str) -> None:
    """The manifest marks prepared data as complete; it and the failing file's parquet are absent,
    and no temporary file is left."""
    assert not (out_dir / "manifest.json").exists()
    assert not (out_dir / f"{failed_name}.parquet").exists()
    assert not list(out_dir.glob("*.tmp"))


BAD_ROWS = {
    "empty problem": (
        [GOOD_ROWS[0], {"id": "b", "problem": "   ", "answer": "5"}],
        ["row 1", "prompt_id='train/b'", "problem", "non-empty"],
    ),
    "missing answer field": (
        [GOOD_ROWS[0], {"id": "b", "problem": "What is 2+3?"}],
        ["row 1", "prompt_id='train/b'", "answer: is missing"],
    ),
    "answer of the wrong type (list)": (
        [GOOD_ROWS[0], {"id": "b", "problem": "What is 2+3?", "answer": [5]}],
        ["row 1", "answer", "got list"],
    ),
    "answer of the wrong type (boolean)": (
        [GOOD_ROWS[0], {"id": "b", "problem": "What is 2+3?", "answer": True}],
        ["row 1", "answer", "boolean"],
    ),
    "problem of the wrong type (number)": (
        [GOOD_ROWS[0], {"id": "b", "problem": 5, "answer": "5"}],
        ["row 1", "problem", "got int"],
    ),
    "duplicate ids": (
        [GOOD_ROWS[0], {"id": "a", "problem": "What is 2+3?", "answer": "5"}],
        ["'train/a'", "rows 0, 1"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_bad_training_rows_are_refused_naming_file_and_row(case, tmp_path):
    rows, fragments = BAD_ROWS[case]
    cfg = _math_config(tmp_path, rows)
    out_dir = tmp_path / "prepared"
    with pytest.raises(DatasetValidationError) as err:
        prepare_data(cfg, out_dir)
    message = str(err.value)
    assert message.startswith(str(tmp_path / "train.jsonl")), message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert "row 0" not in message  # the good row is not blamed
    _assert_no_prepared_output(out_dir, "train")


def test_bad_benchmark_rows_are_refused_and_leave_no_manifest(tmp_path):
    cfg = _math_config(tmp_path, GOOD_ROWS, bench_rows=[GOOD_ROWS[0], {"problem": "What is 2+3?", "answer": None}])
    out_dir = tmp_path / "prepared"
    with pytest.raises(DatasetValidationError, match=re.escape(str(tmp_path / "bench.jsonl"))) as err:
        prepare_data(cfg, out_dir)
    assert "row 1" in str(err.value) and "answer: is missing" in str(err.value)
    # the training file was fine and may be there, but without a manifest the set is not complete
    _assert_no_prepared_output(out_dir, "eval-bench")
    assert not PreparedData(out_dir / "train.parquet", {"bench": out_dir / "eval-bench.parquet"},
                            out_dir / "manifest.json").exists()


def test_missing_data_file_is_named(tmp_path):
    cfg = _math_config(tmp_path, GOOD_ROWS, path="no-such-file.jsonl")
    with pytest.raises(FileNotFoundError) as err:
        prepare_data(cfg, tmp_path / "prepared")
    assert str(tmp_path / "no-such-file.jsonl") in str(err.value)
    assert "'train'" in str(err.value)
    _assert_no_prepared_output(tmp_path / "prepared", "train")


def test_missing_column_is_named_with_the_available_ones(tmp_path):
    cfg = _math_config(tmp_path, GOOD_ROWS, columns={"problem": "question", "answer": "answer"})
    with pytest.raises(DatasetColumnError) as err:
        prepare_data(cfg, tmp_path / "prepared")
    message = str(err.value)
    assert "'question'" in message and "'problem'" in message and "available columns" in message
    assert str(tmp_path / "train.jsonl") in message


PARQUET_BASE = {
    "prompt_id": ["p0", "p1", "p2"],
    "problem": ["1+1=", "2+2=", "3+3="],
    "answer": ["2", "4", "6"],
    "source": ["arith"] * 3,
}
BAD_TABLES = {
    "missing column": ({k: v for k, v in PARQUET_BASE.items() if k != "answer"}, ["column 'answer' is missing"]),
    "empty problem": ({**PARQUET_BASE, "problem": ["1+1=", " ", "3+3="]}, ["row 1 (prompt_id='p1')", "problem"]),
    "missing answer": ({**PARQUET_BASE, "answer": ["2", None, "6"]}, ["row 1 (prompt_id='p1')", "answer: is missing"]),
    "numbers as answers": ({**PARQUET_BASE, "answer": [2, 4, 6]}, ["row 0", "row 2", "answer", "got int64"]),
    "duplicate ids": ({**PARQUET_BASE, "prompt_id": ["p0", "p1", "p1"]}, ["row 1 (prompt_id='p1')", "row 2 (prompt_id='p1')", "unique"]),
}


@pytest.mark.parametrize("case", list(BAD_TABLES))
def test_bad_prepared_table_is_refused_naming_file_row_and_column(case, tmp_path):
    columns, fragments = BAD_TABLES[case]
    path = tmp_path / "train.parquet"
    pd.DataFrame(columns).to_parquet(path)
    with pytest.raises(DatasetValidationError) as err:
        read_prompt_table(path)
    message = str(err.value)
    assert message.startswith(str(path)), message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_missing_prepared_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "train.parquet"))):
        read_prompt_table(tmp_path / "train.parquet")


def test_prepared_data_edited_after_preparation_stops_the_run_before_any_compute(
    smoke_config, smoke_prepared, smoke_policy, tmp_path
):
    frame = pd.read_parquet(smoke_prepared.train_path)
    frame.loc[3, "answer"] = ""
    edited = tmp_path / "train.parquet"
    frame.to_parquet(edited, index=False)
    prepared = PreparedData(edited, smoke_prepared.eval_paths, smoke_prepared.manifest_path)
    run_dir = tmp_path / "run"
    with pytest.raises(DatasetValidationError) as err:
        train_run(smoke_config, "grpo", 0, prepared=prepared, initial_policy=smoke_policy, run_dir=run_dir)
    assert str(edited) in str(err.value) and "row 3" in str(err.value)
    assert not checkpoint_root(run_dir).exists()
    _assert_nothing_finished(run_dir)


# --------------------------------------------------------------------------- config files

SMOKE_RAW = yaml.safe_load(SMOKE_CONFIG.read_text())

BAD_CONFIGS = {
    "unknown top-level key": ({"bugdet": {"max_steps": 1}}, "bugdet", "Extra inputs are not permitted"),
    "unknown nested key": ({"learner": {**SMOKE_RAW["learner"], "learning_rate": 0.1}}, "learner.learning_rate", "Extra inputs"),
    "unknown key in a referenced file's overrides": (
        {"model": {**SMOKE_RAW["model"], "hiden_size": 64}}, "model.tiny.hiden_size", "Extra inputs"),
    "negative learning rate": ({"learner": {**SMOKE_RAW["learner"], "lr": -1.0}}, "learner.lr", "greater than 0"),
    "group size of 1 for DAPO": (
        {"methods": {**SMOKE_RAW["methods"], "dapo": {**SMOKE_RAW["methods"]["dapo"], "n": 1}}}, "methods.dapo.dapo.n", "greater than or equal to 2"),
    "empty pass band": (
        {"methods": {**SMOKE_RAW["methods"], "pilot_commit": {**SMOKE_RAW["methods"]["pilot_commit"], "p_low": 0.9}}},
        "methods.pilot_commit.pilot_commit", "p_low (0.9) must be <= 1 - p_high"),
    "unknown method name": ({"methods": {"ppo": {"name": "ppo"}}}, "methods.ppo", "'grpo', 'dapo', 'pilot_commit'"),
    "no budget": ({"budget": {}}, "budget", "set max_rollouts or max_steps"),
    "wrong type": ({"seeds": "zero"}, "seeds", "valid list"),
    "methods of different shapes": (
        {"methods": {**SMOKE_RAW["methods"], "grpo": {"name": "grpo", "n": 8, "train_batch_size": 4}}}, "methods", "same number of groups"),
    "reference method not compared": ({"target": {"reference_method": "ppo"}}, "target.reference_method", "'ppo'"),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_config_names_file_and_field(case, tmp_path):
    change, field, reason = BAD_CONFIGS[case]
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump({**SMOKE_RAW, **change}))
    with pytest.raises(ConfigError) as err:
        load_experiment_config(path, conf_dir=CONF_DIR)
    message = str(err.value)
    assert message.startswith(f"{path}: invalid configuration"), message
    # a check across fields is reported at the top level, its message opening with the field
    located = rf"^\s+(<top level>: Value error, )?{re.escape(field)}: .*{re.escape(reason)}"
    assert re.search(located, message, re.MULTILINE), message


def test_bad_override_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"learner\.lrr: Extra inputs are not permitted"):
        load_experiment_config(SMOKE_CONFIG, overrides=["learner.lrr=1e-4"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_experiment_config(SMOKE_CONFIG, overrides=["learner.lr"])


def test_missing_and_malformed_config_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match=re.escape(f"config file not found: {tmp_path / 'nope.yaml'}")):
        load_experiment_config(tmp_path / "nope.yaml", conf_dir=CONF_DIR)
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match=re.escape(f"{broken}: invalid YAML")):
        load_experiment_config(broken, conf_dir=CONF_DIR)
    listed = tmp_path / "list.yaml"
    listed.write_text("- name: x\n")
    with pytest.raises(ConfigError, match=re.escape(f"{listed}: expected a mapping")):
        load_experiment_config(listed, conf_dir=CONF_DIR)
    unknown_ref = tmp_path / "ref.yaml"
    unknown_ref.write_text(yaml.safe_dump({**SMOKE_RAW, "model": "tiny-arithh"}))
    with pytest.raises(ConfigError, match=r"model: no config 'tiny-arithh' .*known: .*'tiny-arith'"):
        load_experiment_config(unknown_ref, conf_dir=CONF_DIR)


# --------------------------------------------------------------------------- missing policy or checkpoint


@pytest.mark.parametrize("relative", [False, True], ids=["absolute path", "relative path"])
def test_missing_initial_policy_is_named_not_looked_up_on_the_hub(
    relative, smoke_config, smoke_prepared, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    policy = "runs/no-such-policy" if relative else str(tmp_path / "no-such-policy")
    run_dir = tmp_path / "run"
    with pytest.raises(FileNotFoundError, match=re.escape(f"policy checkpoint not found: {policy}")):
        train_run(smoke_config, "grpo", 0, prepared=smoke_prepared, initial_policy=policy, run_dir=run_dir)
    assert not checkpoint_root(run_dir).exists()
    _assert_nothing_finished(run_dir)


@pytest.fixture(scope="module")
def finished_run(smoke_config, smoke_prepared, smoke_policy, tmp_path_factory) -> Path:
    """A finished two-step GRPO run with a checkpoint after each step; tests copy it."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    train_run(smoke_config, "grpo", 0, prepared=smoke_prepared, initial_policy=smoke_policy, run_dir=run_dir)
    return run_dir


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(run_dir, target)
    return target


@pytest.mark.slow
def test_corrupt_checkpoint_stops_the_resume_naming_the_file(
    finished_run, smoke_config, smoke_prepared, smoke_policy, tmp_path
):
    run_dir = _copy(finished_run, tmp_path)
    state_file = latest_checkpoint(run_dir) / STATE_FILE
    state_file.write_bytes(state_file.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=re.escape(f"cannot read checkpoint {state_file}")):
        train_run(smoke_config, "grpo", 0, prepared=smoke_prepared, initial_policy=smoke_policy, run_dir=run_dir)


@pytest.mark.slow
def test_latest_marker_naming_a_deleted_checkpoint_is_named(
    finished_run, smoke_config, smoke_prepared, smoke_policy, tmp_path
):
    run_dir = _copy(finished_run, tmp_path)
    latest = latest_checkpoint(run_dir)
    shutil.rmtree(latest)
    with pytest.raises(CheckpointError, match=re.escape(str(latest))):
        train_run(smoke_config, "grpo", 0, prepared=smoke_prepared, initial_policy=smoke_policy, run_dir=run_dir)


@pytest.mark.slow
@pytest.mark.parametrize("change", ["config", "seed", "method"])
def test_resume_under_another_config_seed_or_method_is_refused(
    change, finished_run, smoke_config, smoke_prepared, smoke_policy, tmp_path
):
    run_dir = _copy(finished_run, tmp_path)
    latest = latest_checkpoint(run_dir)
    before = (latest / STATE_FILE).read_bytes(), (run_dir / RESULT_FILE).read_bytes()
    cfg, seed, method = smoke_config, 0, "grpo"
    if change == "config":
        cfg = smoke_config.model_copy(update={"learner": smoke_config.learner.model_copy(update={"lr": 3e-4})})
    elif change == "seed":
        seed = 1
    else:
        method = "dapo"
    with pytest.raises(ValueError) as err:
        train_run(cfg, method, seed, prepared=smoke_prepared, initial_policy=smoke_policy, run_dir=run_dir)
    message = str(err.value)
    assert str(latest) in message and "saved by another configuration" in message
    assert "new run directory" in message  # says what to do
    assert ((latest / STATE_FILE).read_bytes(), (run_dir / RESULT_FILE).read_bytes()) == before


# --------------------------------------------------------------------------- NaN or infinite loss


def _diverged_step(message: str) -> int:
    match = re.search(r"training diverged at step (\d+)", message)
    assert match, message
    return int(match.group(1))


@pytest.mark.slow
def test_nan_weights_after_an_update_stop_the_run_before_they_are_checkpointed(
    smoke_config, smoke_prepared, smoke_policy, tmp_path
):
    """Optimizer state poisoned with NaN (as a flipped bit or a broken optimizer would leave it):
    the loss and gradients of the next step are finite, but the update turns the weights NaN.
    The run stops at that step, and no checkpoint with NaN weights is written."""
    cfg = load_experiment_config(SMOKE_CONFIG, overrides=["budget.max_steps=3"])
    run_dir = tmp_path / "run"

    class Stop(Exception):
        pass

    def stop_after_step_1(step, metrics):
        if step == 1:
            raise Stop

    with pytest.raises(Stop):  # a run with one checkpoint (step 1)
        train_run(cfg, "dapo", 0, prepared=smoke_prepared, initial_policy=smoke_policy, run_dir=run_dir,
                  progress=stop_after_step_1)
    checkpoint = latest_checkpoint(run_dir)
    state = load_checkpoint(checkpoint)
    moments = [s["exp_avg_sq"] for s in state["learner"]["optimizer"]["state"].values()]
    assert moments, "step 1 made no optimizer step: nothing to poison"
    for exp_avg_sq in moments:
        exp_avg_sq.fill_(float("nan"))
    meta = {k: v for k, v in read_meta(checkpoint).items() if k != "step"}
    assert save_checkpoint(run_dir, 1, state, meta) == checkpoint  # the poisoned state, same format

    with pytest.raises(TrainingDivergedError) as err:
        train_run(cfg, "dapo", 0, prepared=smoke_prepared, initial_policy=smoke_policy, run_dir=run_dir)
    message = str(err.value)
    assert _diverged_step(message) == 2
    assert "the update left NaN or infinite weights" in message
    assert f"Last good checkpoint: {checkpoint}" in message
    assert latest_checkpoint(run_dir) == checkpoint
    assert all(torch.isfinite(w).all() for w in load_checkpoint(checkpoint)["model"].values())
    _assert_nothing_finished(run_dir)


@pytest.mark.slow
def test_nan_loss_stops_the_run_naming_the_step(smoke_prepared, smoke_policy, tmp_path):
    """A huge learning rate with two optimizer steps per batch: the first step's weights overflow
    the forward pass, so the second mini-batch's loss is NaN."""
    cfg = load_experiment_config(
        SMOKE_CONFIG, overrides=["learner.lr=1e30", "learner.optimizer_steps_per_batch=2", "budget.max_steps=3"]
    )
    run_dir = tmp_path / "run"
    with pytest.raises(TrainingDivergedError) as err:
        train_run(cfg, "dapo", 0, prepared=smoke_prepared, initial_policy=smoke_policy, run_dir=run_dir)
    message = str(err.value)
    assert _diverged_step(message) == 1
    assert "non-finite update" in message and "loss is nan" in message
    assert latest_checkpoint(run_dir) is None
    _assert_nothing_finished(run_dir)


@pytest.mark.slow
def test_divergence_after_a_checkpoint_keeps_it_loadable(smoke_prepared, smoke_policy, tmp_path):
    """A huge learning rate: step 1's update is finite but its weights make the policy's own
    sampling NaN at the next step. The run stops there and the step-1 checkpoint stays the
    latest one, loads, and holds finite weights."""
    cfg = load_experiment_config(
        SMOKE_CONFIG, overrides=["learner.lr=1e30", "budget.max_steps=4", "checkpoint.every_steps=1"]
    )
    run_dir = tmp_path / "run"
    with pytest.raises(TrainingDivergedError) as err:
        train_run(cfg, "dapo", 0, prepared=smoke_prepared, initial_policy=smoke_policy, run_dir=run_dir)
    message = str(err.value)
    step = _diverged_step(message)
    assert step >= 2, message
    last_good = checkpoint_root(run_dir) / f"step-{step - 1:06d}"
    assert f"Last good checkpoint: {last_good}" in message
    assert latest_checkpoint(run_dir) == last_good
    state = load_checkpoint(last_good)
    assert state["loop"].steps == step - 1
    assert all(torch.isfinite(w).all() for w in state["model"].values())
    _assert_nothing_finished(run_dir)


@pytest.mark.slow
def test_nan_weights_in_the_initial_policy_stop_the_run_at_step_1(smoke_prepared, smoke_policy, tmp_path):
    """A copy of the warm start with one NaN weight: every logit turns NaN, the policy samples
    garbage that scores 0 everywhere (so GRPO's loss never sees a gradient), and the run must still
    stop instead of spending its budget on a dead model."""
    corrupt = tmp_path / "policy"
    shutil.copytree(smoke_policy, corrupt)
    weights = load_file(corrupt / "model.safetensors")
    name = next(k for k in weights if k.endswith("input_layernorm.weight"))
    weights[name][0] = float("nan")
    save_file(weights, corrupt / "model.safetensors", metadata={"format": "pt"})
    cfg = load_experiment_config(SMOKE_CONFIG)
    run_dir = tmp_path / "run"
    with pytest.raises(TrainingDivergedError) as err:
        train_run(cfg, "grpo", 0, prepared=smoke_prepared, initial_policy=str(corrupt), run_dir=run_dir)
    message = str(err.value)
    assert _diverged_step(message) == 1
    assert "sampled log-probabilities are NaN or infinite" in message
    assert latest_checkpoint(run_dir) is None
    _assert_nothing_finished(run_dir)
