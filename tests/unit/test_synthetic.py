"""The synthetic arithmetic task: templates, exact answers, deterministic disjoint splits."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pilotcommit.config import ArithDataConfig, load_experiment_config
from pilotcommit.data.schema import validate_prompt_table
from pilotcommit.data.synthetic import (
    DEFAULT_LEVELS,
    ArithLevel,
    ArithSpec,
    _draw_problem,
    evaluate_expression,
    generate_arith_splits,
    parse_template,
    write_prepared_dataset,
)
from tests.conftest import CONF_DIR


@pytest.mark.parametrize(
    "expression, value",
    [("3+4=", 7), ("12-30=", -18), ("47*6-18=", 264), ("2+3*4=", 14), ("9-2-3", 4),
     ("10*10*10", 1000), ("0*7+5", 5), ("5-3*4+2", -5)],
)
def test_evaluator_hand_cases(expression, value):
    assert evaluate_expression(expression) == value


def test_evaluator_matches_python_precedence_on_generated_problems():
    rng = np.random.default_rng(0)
    for template in ["dd*d±dd", "d±dd*d±d", "ddd±dd", "dd*dd*d"]:
        parsed = parse_template(template)
        for _ in range(200):
            problem = _draw_problem(parsed, rng)
            # trusted, generated digits and operators only: a reference for the test
            assert evaluate_expression(problem) == eval(problem[:-1])  # noqa: S307


@pytest.mark.parametrize("bad", ["", "d+", "+d", "d/d", "dx", "d++d", "05+d"])
def test_bad_templates_fail_naming_the_template(bad):
    with pytest.raises(ValueError) as info:
        parse_template(bad)
    assert repr(bad) in str(info.value)


def test_literal_digits_in_templates():
    rng = np.random.default_rng(1)
    problems = {_draw_problem(parse_template("dd+0"), rng) for _ in range(50)}
    assert all(p.endswith("+0=") and 10 <= int(p[:2]) <= 99 for p in problems)
    assert {_draw_problem(parse_template("1*d"), rng)[:2] for _ in range(20)} == {"1*"}


def test_splits_are_deterministic_disjoint_and_schema_valid():
    train_a, test_a = generate_arith_splits()
    train_b, test_b = generate_arith_splits()
    pd.testing.assert_frame_equal(train_a, train_b)
    pd.testing.assert_frame_equal(test_a, test_b)
    assert not set(train_a["problem"]) & set(test_a["problem"])
    assert train_a["prompt_id"].is_unique and test_a["prompt_id"].is_unique
    for frame in (train_a, test_a):
        frame = frame.assign(level=frame["level"].astype(str))
        validate_prompt_table(frame, origin="generated")
        assert all(str(evaluate_expression(p)) == a for p, a in zip(frame["problem"], frame["answer"]))
    other_train, _ = generate_arith_splits(ArithSpec(seed=1))
    assert set(other_train["problem"]) != set(train_a["problem"])


def test_changing_one_level_keeps_the_others():
    base = ArithSpec(levels=DEFAULT_LEVELS)
    changed = ArithSpec(levels=tuple(
        ArithLevel(lv.level, lv.templates, lv.n_train // 2, lv.n_test) if lv.level == 3 else lv
        for lv in DEFAULT_LEVELS
    ))
    (train_a, test_a), (train_b, test_b) = generate_arith_splits(base), generate_arith_splits(changed)
    for level in (1, 5):
        assert set(test_a[test_a.level == level].problem) == set(test_b[test_b.level == level].problem)


def test_small_template_space_fills_test_first():
    spec = ArithSpec(levels=(ArithLevel(0, ("d+d",), n_train=500, n_test=30),))
    train, test = generate_arith_splits(spec)
    assert len(test) == 30 and len(train) == 70  # d+d has exactly 100 problems


def test_written_dataset_round_trips(tmp_path):
    paths = write_prepared_dataset(tmp_path, ArithSpec(levels=DEFAULT_LEVELS[:2]))
    train = pd.read_parquet(paths.train)
    assert list(train.columns) == ["prompt_id", "problem", "answer", "source", "level"]
    assert paths.manifest.is_file()


def test_conf_data_arith_is_the_default_mix():
    cfg = load_experiment_config(CONF_DIR / "experiment" / "demo.yaml")
    assert isinstance(cfg.data, ArithDataConfig)
    assert cfg.data.to_spec().levels == DEFAULT_LEVELS


# Pinned: the demo's data must be bit-identical on every machine (integer draws from numpy's
# PCG64 and string formatting only). A change here changes every demo number: update the
# pins only together with docs/embedded_task.md and docs/benchmarks.md.
DEMO_TRAIN_SHA256 = "9db7b56256ac63ad6a4489b52179ae89cdb2699ecb00cfae99b782b81dcca0a8"
DEMO_TEST_SHA256 = "58c5e688602f0c0d52107c691d5edf5ee7f753f0dbe1810ac0ff6b4f3d28644d"


def test_the_demo_data_content_hash_is_pinned(tmp_path):
    from pilotcommit.data.prepared import read_prompt_table
    from pilotcommit.data.synthetic import content_hash

    spec = load_experiment_config(CONF_DIR / "experiment" / "demo.yaml").data.to_spec()
    train_df, test_df = generate_arith_splits(spec)
    assert (len(train_df), len(test_df)) == (17610, 600)
    assert content_hash(train_df) == DEMO_TRAIN_SHA256
    assert content_hash(test_df) == DEMO_TEST_SHA256
    # the written files hold the same content, and the manifest records its hash
    paths = write_prepared_dataset(tmp_path, spec)
    assert content_hash(read_prompt_table(paths.train)) == DEMO_TRAIN_SHA256
    manifest = json.loads(paths.manifest.read_text())
    assert manifest["content_sha256"] == {"train": DEMO_TRAIN_SHA256, "test": DEMO_TEST_SHA256}
