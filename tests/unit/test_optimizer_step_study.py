"""The optimizer-step study (docs/regimes.md, "The optimizer-step study"; issue 26) is the design
it pre-registered."""

from __future__ import annotations

from pathlib import Path

from pilotcommit.config import load_experiment_config

CONF = Path(__file__).resolve().parents[2] / "conf"


def test_the_optimizer_step_study_is_its_preregistered_design():
    """conf/sweep/optimizer-steps.yaml (docs/regimes.md, "The optimizer-step study"): the regime
    study's demo and hard n = 64 cells, four arms at 4, 4, 6 and 6 optimizer steps, seeds 0-4,
    the demo's policy, evaluation and learning rate."""
    from pilotcommit.config import cell_configs, load_sweep_config

    study = cell_configs(load_sweep_config(CONF / "sweep" / "optimizer-steps.yaml"))
    regimes = {c.cell_label: c for c in cell_configs(load_sweep_config(CONF / "sweep" / "regimes.yaml"))}
    demo = load_experiment_config(CONF / "experiment" / "demo.yaml")
    assert [c.cell_label for c in study] == ["demo-n64", "hard-n64"]
    for cell in study:
        assert cell.seeds == [0, 1, 2, 3, 4]
        assert cell.train_mix == regimes[cell.cell_label].train_mix
        assert cell.budget.max_rollouts == regimes[cell.cell_label].budget.max_rollouts == 160_000
        assert (cell.model, cell.data, cell.eval) == (demo.model, demo.data, demo.eval)
        assert (cell.learner.lr, cell.learner.warmup_steps) == (demo.learner.lr, demo.learner.warmup_steps)
        steps = {label: cell.optimizer_steps(label) for label in cell.methods}
        assert steps == {"grpo": 4, "pilot_commit": 4, "pilot_commit_ref": 6, "grpo_6": 6}
        assert cell.minibatch_sequences("pilot_commit_ref") == cell.minibatch_sequences("grpo_6") == 384
        pc = regimes[cell.cell_label].methods["pilot_commit"]
        for label in ("pilot_commit", "pilot_commit_ref"):
            assert cell.methods[label].model_copy(update={"learner": None}) == pc
        assert {cell.methods[m].group_size for m in cell.methods} == {64}
