"""Sweep files: every committed one loads and builds its cells; a cell is the experiment with
the model entry swapped in; bad entries fail at load naming the sweep and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from pilotcommit.config import (
    ConfigError,
    SweepConfig,
    cell_config,
    cell_configs,
    load_experiment_config,
    load_sweep_config,
)

CONF = Path(__file__).resolve().parents[2] / "conf"


@pytest.mark.parametrize("path", sorted((CONF / "sweep").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_sweep_file_builds_its_cells(path):
    sweep = load_sweep_config(path)
    configs = cell_configs(sweep)
    assert len(configs) == len(sweep.models)
    assert len({c.cell_label for c in configs}) == len(configs)


def test_a_cell_is_the_experiment_with_the_model_swapped():
    sweep = load_sweep_config(CONF / "sweep" / "smoke.yaml")
    cell = cell_config(sweep, 1)
    smoke = load_experiment_config(CONF / "experiment" / "smoke.yaml")
    # the smoke sweep's second model is the smoke experiment's own; it runs the paper's three
    # of the smoke experiment's methods (sweep.methods)
    assert list(cell.methods) == ["grpo", "dapo", "pilot_commit"]
    assert {k: smoke.methods[k] for k in cell.methods} == dict(cell.methods)
    assert cell.model_dump(exclude={"methods"}) == smoke.model_dump(exclude={"methods"})
    first = cell_config(sweep, 0)
    assert first.model.num_layers == 1
    assert first.model_dump(exclude={"model", "methods"}) == smoke.model_dump(exclude={"model", "methods"})


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


def test_labelled_cells_of_one_model_are_told_apart():
    sweep = SweepConfig(name="s", experiment="smoke", models=[
        {"model": "tiny-arith", "label": "a", "overrides": ["learner.lr=0.002"]},
        {"model": "tiny-arith", "label": "b"}])
    a, b = cell_configs(sweep)
    assert (a.cell_label, b.cell_label) == ("a", "b") and a.model == b.model
    assert cell_config(SweepConfig(name="s", experiment="smoke", models=["tiny-arith"]), 0).cell_label == "tiny-h128-l3"
    with pytest.raises(ConfigError, match="two cells have the same label"):
        cell_configs(SweepConfig(name="s", experiment="smoke", models=[
            {"model": "tiny-arith", "label": "a"}, {"model": "tiny-arith", "label": "a"}]))
    with pytest.raises(ValueError, match="label: expected a non-empty name"):
        SweepConfig(name="s", experiment="smoke", models=[{"model": "tiny-arith", "label": ""}])


def test_the_regime_study_varies_only_the_training_mix_group_size_and_budget():
    """conf/sweep/regimes.yaml (docs/regimes.md): the pre-registered design, five methods."""
    demo = load_experiment_config(CONF / "experiment" / "demo.yaml")
    everything = load_experiment_config(CONF / "experiment" / "demo-all-methods.yaml")
    cells = {c.cell_label: c for c in cell_configs(load_sweep_config(CONF / "sweep" / "regimes.yaml"))}
    assert sorted(cells) == sorted(f"{r}-n{n}" for r in ("demo", "hard", "saturated") for n in (16, 64))
    fixed = {"model", "data", "learner", "eval", "rollout", "target", "checkpoint", "torch_threads"}
    core = ("grpo", "dapo", "pilot_commit")
    for label, cfg in cells.items():
        assert cfg.model_dump(include=fixed) == demo.model_dump(include=fixed), label  # same policy, eval, lr
        assert cfg.seeds == [0, 1, 2]
        n = 64 if label.endswith("n64") else 16
        assert {m: c.group_size for m, c in cfg.methods.items()} == dict.fromkeys(
            (*core, "greso", "speed_rl"), n)
        pc, speed = cfg.methods["pilot_commit"], cfg.methods["speed_rl"]
        assert (pc.n_pilot, pc.n_commit) == ((16, 48) if n == 64 else (4, 12))  # pilots are a quarter
        assert (speed.n_screen, speed.n_continue) == (pc.n_pilot, pc.n_commit)  # screens as PC pilots
        # GRPO takes the demo's number of steps: the budget scales with the group size
        assert cfg.budget.max_rollouts == demo.budget.max_rollouts * n // 16
        for method, base in [("dapo", demo), ("greso", everything)]:  # all else as at n = 16
            same_but_n = {k: v for k, v in cfg.methods[method].model_dump().items() if k != "n"}
            assert same_but_n == {k: v for k, v in base.methods[method].model_dump().items() if k != "n"}
    # the demo cell: the demo's own three methods and the all-methods demo's GRESO and SPEED-RL
    assert cells["demo-n16"].train_mix is None and cells["demo-n16"].methods == everything.methods
    assert {m: everything.methods[m] for m in core} == demo.methods
    assert cells["hard-n16"].train_mix == cells["hard-n64"].train_mix
    assert cells["hard-n16"].train_mix.level_shares["8"] == 0.6
    assert cells["saturated-n16"].train_mix.level_shares["0"] == 0.6


def test_a_sweep_can_run_some_of_its_methods():
    """`pilotcommit sweep --methods a,b` (load_sweep_config(methods=...)): those methods only, in
    the file's settings; an unknown one fails naming the experiment's methods."""
    path = CONF / "sweep" / "regimes.yaml"
    full = {c.cell_label: c for c in cell_configs(load_sweep_config(path))}
    some = cell_configs(load_sweep_config(path, methods=["grpo", "speed_rl"]))
    assert [c.cell_label for c in some] == list(full)
    for cfg in some:
        assert list(cfg.methods) == ["grpo", "speed_rl"]
        assert cfg.methods == {m: full[cfg.cell_label].methods[m] for m in ("grpo", "speed_rl")}
    with pytest.raises(ConfigError, match=r"methods \['sped_rl'\] are not in .*demo-all-methods.yaml"):
        cell_configs(load_sweep_config(path, methods=["grpo", "sped_rl"]))


def test_a_shortened_regime_cell_trains_on_its_mix(smoke_policy, tmp_path):
    """One regime cell end to end, shortened (2 steps, a tiny evaluation) on the smoke policy:
    its training mix is drawn from the demo's data and its groups of 64 are trained."""
    from pilotcommit.data.mix import apply_train_mix
    from pilotcommit.data.prepared import read_prompt_table
    from pilotcommit.loop import train_run
    from pilotcommit.pipeline import prepare_data
    from pilotcommit.tracking import MemoryTracker

    sweep = load_sweep_config(CONF / "sweep" / "regimes.yaml")
    index = [c.cell_label for c in cell_configs(sweep)].index("hard-n64")
    cfg = cell_config(sweep, index, ["budget.max_rollouts=null", "budget.max_steps=2", "eval.max_prompts=20",
                                     "eval.samples_per_prompt=2", "eval.every_steps=2",
                                     "methods.pilot_commit.train_batch_size=4",
                                     "methods.pilot_commit.gen_batch_size=12", "methods.grpo.train_batch_size=4",
                                     "methods.dapo.train_batch_size=4", "methods.dapo.gen_batch_size=12",
                                     "methods.greso.train_batch_size=4", "methods.greso.gen_batch_size=12",
                                     "methods.speed_rl.train_batch_size=4",
                                     "methods.speed_rl.gen_batch_size=12"])
    prepared = prepare_data(cfg, tmp_path / "data")
    tracker = MemoryTracker()
    # GRPO: the weak smoke policy solves too few hard prompts for the filtering methods' pilots
    result = train_run(cfg, "grpo", 0, prepared=prepared, initial_policy=smoke_policy,
                       run_dir=tmp_path / "run", tracker=tracker)
    assert result.steps == 2
    metrics = [m for _, m in tracker.metrics]
    assert all(m["rollouts/trained"] == m["rollouts/sampled"] == 4 * 64 for m in metrics)
    sampled = set().union(*[set(t["prompt_id"]) for _, name, t in tracker.prompt_stats if name == "train"])
    mixed = apply_train_mix(read_prompt_table(prepared.train_path), cfg.train_mix)
    assert sampled and sampled <= set(mixed["prompt_id"])
    levels = dict(zip(mixed["prompt_id"], mixed["level"]))
    assert {levels[p] for p in sampled} <= {"8", "7", "6", "4", "3"}
