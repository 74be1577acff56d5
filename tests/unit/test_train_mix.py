"""The RL training mix (pilotcommit/data/mix.py, config.TrainMixConfig)."""

from __future__ import annotations

import pandas as pd
import pytest

from pilotcommit.config import ConfigError, TrainMixConfig, load_experiment_config
from pilotcommit.data.mix import TrainMixError, apply_train_mix, level_counts
from tests.conftest import SMOKE_CONFIG


def _table() -> pd.DataFrame:
    levels = ["0"] * 10 + ["1"] * 5 + ["2"] * 20
    return pd.DataFrame({"prompt_id": [f"p{i}" for i in range(35)], "level": levels})


def test_level_counts_sum_exactly_with_largest_remainders():
    assert level_counts({"a": 0.5, "b": 0.5}, 10) == {"a": 5, "b": 5}
    # 7 * (1/3) = 2.33 each: floors 2, 2, 2 and one more to the first of the tied remainders
    assert level_counts({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}, 7) == {"a": 3, "b": 2, "c": 2}
    assert level_counts({"a": 0.15, "b": 0.85}, 10) == {"a": 2, "b": 8}  # 1.5 vs 8.5: tie to a


def test_apply_train_mix_draws_the_shares_without_replacement_in_split_order():
    mix = TrainMixConfig(level_shares={0: 0.4, 2: 0.6}, prompts=10, seed=3)
    picked = apply_train_mix(_table(), mix)
    assert picked["level"].value_counts().to_dict() == {"0": 4, "2": 6}
    assert picked["prompt_id"].is_unique
    assert list(picked.index) == sorted(picked.index)
    assert picked.equals(apply_train_mix(_table(), mix))  # same seed, same prompts
    other = apply_train_mix(_table(), mix.model_copy(update={"seed": 4}))
    assert set(other["prompt_id"]) != set(picked["prompt_id"])
    assert apply_train_mix(_table(), None) is not None and len(apply_train_mix(_table(), None)) == 35


def test_a_level_that_cannot_supply_its_share_is_named():
    mix = TrainMixConfig(level_shares={1: 0.5, 2: 0.5}, prompts=20)
    with pytest.raises(TrainMixError, match=r"level_shares\['1'\] needs 10 prompts of level 1, the split has 5"):
        apply_train_mix(_table(), mix, "train.parquet")
    with pytest.raises(TrainMixError, match="no"):
        apply_train_mix(_table().drop(columns="level"), mix)


@pytest.mark.parametrize("shares, message", [({"0": 0.5, "1": 0.4}, "sum to 0.9"), ({"0": 1.2, "1": -0.2}, "> 0")])
def test_shares_are_validated(shares, message):
    with pytest.raises(ValueError, match=message):
        TrainMixConfig(level_shares=shares, prompts=10)


def test_config_load_checks_the_mix_against_the_synthetic_levels():
    cfg = load_experiment_config(SMOKE_CONFIG, ["train_mix={level_shares: {0: 0.5, 2: 0.5}, prompts: 100}"])
    assert cfg.train_mix.level_shares == {"0": 0.5, "2": 0.5}
    with pytest.raises(ConfigError, match=r"train_mix.level_shares\['1'\]: needs 100 prompts of level 1, the data has 60"):
        load_experiment_config(SMOKE_CONFIG, ["train_mix={level_shares: {1: 0.5, 2: 0.5}, prompts: 200}"])
    with pytest.raises(ConfigError, match="level '9' is not a level"):
        load_experiment_config(SMOKE_CONFIG, ["train_mix={level_shares: {9: 1.0}, prompts: 10}"])


def test_train_run_trains_on_the_mix_only(smoke_config, smoke_prepared, smoke_policy, tmp_path):
    from pilotcommit.data.prepared import read_prompt_table
    from pilotcommit.loop import train_run
    from pilotcommit.tracking import MemoryTracker

    cfg = smoke_config.model_copy(update={
        "train_mix": TrainMixConfig(level_shares={"2": 1.0}, prompts=30),
        "methods": {"grpo": smoke_config.methods["grpo"]},
    })
    tracker = MemoryTracker()
    train_run(cfg, "grpo", 0, prepared=smoke_prepared, initial_policy=smoke_policy, run_dir=tmp_path,
              tracker=tracker)
    sampled = set().union(*[set(t["prompt_id"]) for _, name, t in tracker.prompt_stats if name == "train"])
    mixed = apply_train_mix(read_prompt_table(smoke_prepared.train_path), cfg.train_mix)
    assert len(sampled) == 8  # two GRPO steps of 4 prompts
    assert sampled <= set(mixed["prompt_id"])
