"""Sweep files: every committed one loads and builds its cells; a cell is the experiment with
the model entry swapped in; bad entries fail at load naming the sweep and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from pilotcommit.config import ConfigError, load_experiment_config
from pilotcommit.sweep import SweepConfig, cell_config, cell_configs, load_sweep_config

CONF = Path(__file__).resolve().parents[2] / "conf"


@pytest.mark.parametrize("path", sorted((CONF / "sweep").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_sweep_file_builds_its_cells(path):
    sweep = load_sweep_config(path)
    configs = cell_configs(sweep)
    assert len(configs) == len(sweep.models)
    assert len({c.model.label for c in configs}) == len(configs)


def test_a_cell_is_the_experiment_with_the_model_swapped():
    sweep = load_sweep_config(CONF / "sweep" / "smoke.yaml")
    cell = cell_config(sweep, 1)
    smoke = load_experiment_config(CONF / "experiment" / "smoke.yaml")
    assert cell == smoke  # the smoke sweep's second model is the smoke experiment's own
    first = cell_config(sweep, 0)
    assert first.model.num_layers == 1 and first.model_dump(exclude={"model"}) == smoke.model_dump(exclude={"model"})


def test_seeds_methods_and_overrides_apply_to_every_cell():
    sweep = SweepConfig(name="s", experiment="smoke", models=["tiny-arith"], seeds=[3, 4],
                        methods=["grpo", "pilot_commit"], overrides=["learner.lr=0.001"])
    (cfg,) = cell_configs(sweep, ["budget.max_steps=5"])
    assert cfg.seeds == [3, 4] and list(cfg.methods) == ["grpo", "pilot_commit"]
    assert cfg.learner.lr == 0.001 and cfg.budget.max_steps == 5


def test_bad_entries_fail_clearly(tmp_path):
    with pytest.raises(ConfigError, match="methods \\['ppo'\\] are not in"):
        cell_configs(SweepConfig(name="s", experiment="smoke", models=["tiny-arith"], methods=["ppo"]))
    with pytest.raises(ConfigError, match="no config 'nope'"):
        cell_configs(SweepConfig(name="s", experiment="smoke", models=["nope"]))
    with pytest.raises(ConfigError, match="same label"):
        cell_configs(SweepConfig(name="s", experiment="smoke", models=["tiny-arith", "tiny-arith"]))
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: s\nexperiment: smoke\nmodels: [tiny-arith]\nmodle: x\n")
    with pytest.raises(ConfigError, match="(?s)bad.yaml: invalid sweep configuration.*modle"):
        load_sweep_config(bad)
    with pytest.raises(ConfigError, match="sweep config not found"):
        load_sweep_config(tmp_path / "missing.yaml")


def test_a_cell_entry_carries_its_own_overrides_after_the_sweeps():
    sweep = SweepConfig(name="s", experiment="smoke", overrides=["learner.lr=0.001", "learner.micro_batch_size=8"],
                        models=[{"model": "tiny-arith", "overrides": ["learner.lr=0.002"]},
                                {"base": "tiny-arith", "num_layers": 2}])
    first, second = cell_configs(sweep)
    assert first.learner.lr == 0.002 and first.learner.micro_batch_size == 8
    assert second.learner.lr == 0.001
    (cli,) = cell_configs(SweepConfig(name="s", experiment="smoke",
                                      models=[{"model": "tiny-arith", "overrides": ["learner.lr=0.002"]}]),
                          ["learner.lr=0.003"])
    assert cli.learner.lr == 0.003  # the command line wins
    with pytest.raises(ValueError, match="unknown keys \\['overides'\\]"):
        SweepConfig(name="s", experiment="smoke", models=[{"model": "tiny-arith", "overides": []}])
