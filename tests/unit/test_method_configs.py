"""Every file of conf/method/ validates, holds the paper's settings, and bad values fail by name.

The files are loaded exactly as the experiment loader will see them: YAML
values validated by ``pydantic.TypeAdapter(MethodConfig)``, whose ``name``
discriminator picks the class.
"""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest
import yaml

from pilotcommit.config import (
    DAPOConfig,
    GRESOConfig,
    GRPOConfig,
    MethodConfig,
    PilotCommitConfig,
    SpeedRLConfig,
)

METHOD_DIR = Path(__file__).resolve().parents[2] / "conf" / "method"
ADAPTER = pydantic.TypeAdapter(MethodConfig)
METHOD_FILES = sorted(METHOD_DIR.glob("*.yaml"))


def load(name: str):
    return ADAPTER.validate_python(yaml.safe_load((METHOD_DIR / name).read_text()))


def test_the_method_directory_has_the_paper_files():
    names = {p.name for p in METHOD_FILES}
    assert {
        "grpo.yaml",
        "dapo.yaml",
        "pilot_commit.yaml",
        "grpo_n128.yaml",
        "dapo_n128.yaml",
        "pilot_commit_p16c48.yaml",
        "pilot_commit_p32c96.yaml",
        "greso.yaml",
        "greso_n64.yaml",
        "greso_n128.yaml",
        "speed_rl.yaml",
        "speed_rl_s8c56.yaml",
        "speed_rl_s8c120.yaml",
    } <= names


@pytest.mark.parametrize("path", METHOD_FILES, ids=lambda p: p.name)
def test_every_method_file_validates_and_its_name_matches_the_file(path: Path):
    raw = yaml.safe_load(path.read_text())
    assert isinstance(raw, dict), f"{path}: expected a mapping of values"
    config = ADAPTER.validate_python(raw)
    # the file name starts with the method it configures (grpo_n128.yaml is a grpo config)
    assert path.stem == config.name or path.stem.startswith(config.name + "_"), path.name
    assert config.group_size >= 1
    # a file holds values only: everything it sets is a field of the class
    assert set(raw) <= set(type(config).model_fields), path.name


@pytest.mark.parametrize(
    "name, cls, group_size",
    [
        ("grpo.yaml", GRPOConfig, 64),
        ("dapo.yaml", DAPOConfig, 64),
        ("pilot_commit.yaml", PilotCommitConfig, 64),
        ("pilot_commit_p16c48.yaml", PilotCommitConfig, 64),
        ("grpo_n128.yaml", GRPOConfig, 128),
        ("dapo_n128.yaml", DAPOConfig, 128),
        ("pilot_commit_p32c96.yaml", PilotCommitConfig, 128),
        ("greso_n64.yaml", GRESOConfig, 64),
        ("greso_n128.yaml", GRESOConfig, 128),
        ("speed_rl_s8c56.yaml", SpeedRLConfig, 64),
        ("speed_rl_s8c120.yaml", SpeedRLConfig, 128),
    ],
)
def test_paper_settings(name, cls, group_size):
    config = load(name)
    assert type(config) is cls
    assert config.group_size == group_size
    assert config.train_batch_size == 128
    if cls is not GRPOConfig:
        assert config.gen_batch_size == 3 * config.train_batch_size
        assert config.max_num_gen_batches == 10
    if cls is PilotCommitConfig:
        # pilots are 25% of the group: p16c48, p32c96
        assert config.n_pilot * 4 == group_size and config.n_pilot_effective is None
        assert (config.p_low, config.p_high, config.p_evict) == (0.125, 0.25, 1.0)
        assert config.max_off_steps == 4 and config.buffer_sampling == "max_variance"
    if cls is GRESOConfig:  # the public code's skip and controller values
        assert GRESOConfig(**{**config.model_dump(), "n": 16, "train_batch_size": 32,
                              "gen_batch_size": 96}) == load("greso.yaml")
    if cls is SpeedRLConfig:
        assert config.n_screen == 8  # the public code's 1.5B script screens with 8


def test_demo_scale_files_hold_the_public_defaults():
    greso, speed = load("greso.yaml"), load("speed_rl.yaml")
    assert (greso.p_easy, greso.p_hard, greso.target_zero_variance) == (0.5, 0.5, 0.25)
    assert (greso.exploration_step, greso.p_min, greso.p_max, greso.min_keep_probability) == (0.01, 0.05, 0.95, 0.01)
    assert abs(greso.easy_target_fraction - 1 / 3) < 1e-12
    assert greso == GRESOConfig()  # the file states the model's defaults
    assert (speed.n_screen, speed.n_continue) == (4, 12) and speed == SpeedRLConfig()
    assert greso.group_size == speed.group_size == 16
    assert greso.train_batch_size == speed.train_batch_size == 32


@pytest.mark.parametrize("suffix", ["", "_n128"])
def test_methods_compared_at_the_same_scale_share_group_and_batch_sizes(suffix):
    pc = load("pilot_commit.yaml" if suffix == "" else "pilot_commit_p32c96.yaml")
    grpo, dapo = load(f"grpo{suffix}.yaml"), load(f"dapo{suffix}.yaml")
    assert grpo.group_size == dapo.group_size == pc.group_size
    assert grpo.train_batch_size == dapo.train_batch_size == pc.train_batch_size
    assert dapo.gen_batch_size == pc.gen_batch_size
    assert dapo.max_num_gen_batches == pc.max_num_gen_batches


def test_default_pilot_commit_is_p16c48():
    # two names for one setting: keep them from drifting apart
    assert load("pilot_commit.yaml") == load("pilot_commit_p16c48.yaml")


# --------------------------------------------------------------------------- invalid values

VALID = {
    "grpo": {"name": "grpo", "n": 8, "train_batch_size": 4},
    "dapo": {"name": "dapo", "n": 8, "train_batch_size": 4, "gen_batch_size": 12},
    "pilot_commit": {"name": "pilot_commit", "n_pilot": 8, "n_commit": 24, "train_batch_size": 4},
    "greso": {"name": "greso", "n": 8, "train_batch_size": 4, "gen_batch_size": 12},
    "speed_rl": {"name": "speed_rl", "n_screen": 4, "n_continue": 4, "train_batch_size": 4},
}


@pytest.mark.parametrize("method", sorted(VALID))
def test_the_valid_base_values_validate(method):
    assert ADAPTER.validate_python(VALID[method]).name == method


@pytest.mark.parametrize(
    "method, change, field",
    [
        ("pilot_commit", {"p_low": 0.5, "p_high": 0.6}, "p_low"),  # p_low > 1 - p_high
        ("pilot_commit", {"n_pilot_effective": 9}, "n_pilot_effective"),  # > n_pilot
        ("pilot_commit", {"p_evict": 0.5}, "p_evict"),  # evicting prompts that are not too easy
        ("pilot_commit", {"train_batch_size": 0}, "train_batch_size"),
        ("pilot_commit", {"gen_batch_size": 0}, "gen_batch_size"),
        ("pilot_commit", {"max_num_gen_batches": 0}, "max_num_gen_batches"),
        ("pilot_commit", {"n_pilot": -1}, "n_pilot"),
        ("pilot_commit", {"n_commit": 0}, "n_commit"),
        ("pilot_commit", {"max_off_steps": -1}, "max_off_steps"),
        ("pilot_commit", {"p_low": 1.5}, "p_low"),
        ("pilot_commit", {"buffer_sampling": "fifo"}, "buffer_sampling"),
        ("pilot_commit", {"n_pilots": 8}, "n_pilots"),  # typo of n_pilot
        ("grpo", {"n": -4}, "n"),
        ("grpo", {"n": 0}, "n"),
        ("grpo", {"train_batch_size": 0}, "train_batch_size"),
        ("grpo", {"gen_batch_size": 12}, "gen_batch_size"),  # a DAPO key: no silent ignore
        ("dapo", {"n": -1}, "n"),
        ("dapo", {"n": 1}, "n"),  # a group of one never has reward variance
        ("dapo", {"train_batch_size": 0}, "train_batch_size"),
        ("dapo", {"gen_batch_size": 0}, "gen_batch_size"),
        ("dapo", {"max_num_gen_batches": 0}, "max_num_gen_batches"),
        ("dapo", {"max_num_gen_batch": 5}, "max_num_gen_batch"),  # typo
        ("greso", {"n": 1}, "n"),
        ("greso", {"p_easy": 0.0}, "p_easy"),  # a rate of 0 would skip every streak for good
        ("greso", {"p_hard": 1.5}, "p_hard"),
        ("greso", {"target_zero_variance": 1.2}, "target_zero_variance"),
        ("greso", {"easy_target_fraction": -0.1}, "easy_target_fraction"),
        ("greso", {"exploration_step": 0.0}, "exploration_step"),
        ("greso", {"p_min": 0.6, "p_max": 0.4}, "p_min"),
        ("greso", {"min_keep_probability": 0.0}, "min_keep_probability"),  # could never end
        ("greso", {"gen_batch_size": 0}, "gen_batch_size"),
        ("greso", {"max_num_gen_batches": 0}, "max_num_gen_batches"),
        ("greso", {"n_pilot": 4}, "n_pilot"),  # a PC key: no silent ignore
        ("speed_rl", {"n_screen": 1}, "n_screen"),  # no pass rate strictly between 0 and 1
        ("speed_rl", {"n_continue": 0}, "n_continue"),
        ("speed_rl", {"train_batch_size": 0}, "train_batch_size"),
        ("speed_rl", {"gen_batch_size": 0}, "gen_batch_size"),
        ("speed_rl", {"max_num_gen_batches": 0}, "max_num_gen_batches"),
        ("speed_rl", {"n_screens": 4}, "n_screens"),  # typo
    ],
)
def test_impossible_values_fail_naming_the_field(method, change, field):
    values = {**VALID[method], **change}
    with pytest.raises(pydantic.ValidationError) as info:
        ADAPTER.validate_python(values)
    assert field in str(info.value)


def test_unknown_method_name_fails_naming_the_choices():
    with pytest.raises(pydantic.ValidationError) as info:
        ADAPTER.validate_python({"name": "ppo", "n": 8})
    message = str(info.value)
    assert "ppo" in message and "pilot_commit" in message


def test_missing_method_name_fails():
    with pytest.raises(pydantic.ValidationError) as info:
        ADAPTER.validate_python({"n": 8, "train_batch_size": 4})
    assert "name" in str(info.value)


def test_pilot_count_with_no_informative_pass_rate_fails():
    # n_pilot = 1: pass rates 0 (too hard) or 1 (too easy); no prompt can ever be committed
    with pytest.raises(pydantic.ValidationError) as info:
        ADAPTER.validate_python({**VALID["pilot_commit"], "n_pilot": 1})
    assert "n_pilot" in str(info.value)


def test_eviction_threshold_inside_the_pass_band_fails():
    with pytest.raises(pydantic.ValidationError) as info:
        ADAPTER.validate_python({**VALID["pilot_commit"], "p_evict": 0.75})
    assert "p_evict" in str(info.value)


def test_mini_batches_that_do_not_divide_the_step_fail_at_load():
    """smoke: 4 groups of 4 rollouts = 16 per step: 3 optimizer steps cannot split them equally."""
    from pilotcommit.config import ConfigError, load_experiment_config

    smoke = Path(__file__).resolve().parents[2] / "conf" / "experiment" / "smoke.yaml"
    assert load_experiment_config(smoke, overrides=["learner.optimizer_steps_per_batch=4"])
    with pytest.raises(ConfigError, match="optimizer_steps_per_batch: 3 does not divide the 16"):
        load_experiment_config(smoke, overrides=["learner.optimizer_steps_per_batch=3"])
    with pytest.raises(ConfigError, match="rollout.temperature: training rollouts need"):
        load_experiment_config(smoke, overrides=["rollout.temperature=0"])
    with pytest.raises(ConfigError, match="clip_ratio_c"):
        load_experiment_config(smoke, overrides=["learner.clip_ratio_c=1.0"])


def test_demo_all_methods_is_the_demo_plus_greso_and_speed_rl_with_five_seeds():
    """conf/experiment/demo-all-methods.yaml may differ from the demo only by its name, seeds and
    the two added methods; the demo keeps its three methods."""
    from pilotcommit.config import load_experiment_config

    experiments = METHOD_DIR.parent / "experiment"
    demo = load_experiment_config(experiments / "demo.yaml")
    every = load_experiment_config(experiments / "demo-all-methods.yaml")
    assert list(demo.methods) == ["grpo", "dapo", "pilot_commit"]
    assert list(every.methods) == ["grpo", "dapo", "pilot_commit", "greso", "speed_rl"]
    assert every.seeds == [0, 1, 2, 3, 4]
    assert {k: every.methods[k] for k in demo.methods} == dict(demo.methods)
    assert every.methods["greso"] == load("greso.yaml") and every.methods["speed_rl"] == load("speed_rl.yaml")
    same = {"name", "seeds", "methods"}
    assert every.model_dump(exclude=same) == demo.model_dump(exclude=same)
