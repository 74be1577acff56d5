"""Golden tests: what the rebuild of the house (issue 24) must not change.

``expected.json`` was written once, from the code before the first move, and is never edited:
a difference is a change of behaviour, not of layout. Pinned, all independent of the CPU:

- ``config_hash`` of every file in ``conf/`` (experiments, sweeps and their cells, the method,
  model and data files): the hash is part of every cache key and every run's identity;
- the smoke config's stage keys (data, policy, probe, train per method x seed, the comparison,
  the report, an evaluation, the MLflow run keys and run directory names; with a fixed code
  version, since the code version is meant to change with the code);
- a checkpoint's bytes (``state.json``, ``state.pt``, ``meta.json``) of a fixed state holding
  every record type a checkpoint may carry: runs resume across the rebuild;
- the text of the comparison tables the CLI prints, the comparison markdown the Prefect UI
  shows, the plain summary, the nightly verdict and the study report, from fixed runs.

Only the few lines under "the code's API" name modules; they follow the code when it moves.
``python -m tests.golden.test_golden --write`` rewrote ``expected.json``: never after the first
move.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
EXPECTED = Path(__file__).with_name("expected.json")
CODE = "golden-code-version"  # a fixed code version: the keys' formula is what is pinned
REPORT_CODE = "golden-report-code"

# --------------------------------------------------------------------------- the code's API


def api():
    """The functions the golden values come from, wherever they live now."""
    from pydantic import TypeAdapter

    from pilotcommit import checkpoint, config
    from pilotcommit.analysis import regression, render, study, summary
    from pilotcommit.tracking.links import MlflowLinks

    return {
        "load_experiment": config.load_experiment_config,
        "config_hash": config.config_hash,
        "load_sweep": config.load_sweep_config,
        "cell_configs": config.cell_configs,
        "method_adapter": TypeAdapter(config.MethodConfig),
        "model_adapter": TypeAdapter(config.ModelConfig),
        "data_adapter": TypeAdapter(config.DataConfig),
        "save_checkpoint": checkpoint.save_checkpoint,
        "summarize": summary.summarize_comparison,
        "render_summary": render.render_summary,
        "render_details": render.render_details,
        "summary_text": render.summary_text,
        "check_regression": regression.check_regression,
        "RegressionTolerance": regression.RegressionTolerance,
        "RunHistory": summary.RunHistory,
        "comparison_markdown": render.comparison_markdown,
        "MlflowLinks": MlflowLinks,
        "RunSteps": study.RunSteps,
        "StudyInputs": study.StudyInputs,
        "study_cells": study.study_cells,
        "study_markdown": render.study_markdown,
        "smoke_stage_keys": _stage_keys,
    }


def _stage_keys(cfg, sweep_cfg) -> dict:
    """The keys of pilotcommit/stages/table.py (before the rebuild: computed inline in
    flows/compare.py, flows/train.py, flows/evaluate.py and flows/sweep.py, three ways)."""
    from pilotcommit.config import cell_configs
    from pilotcommit.stages.table import (
        RunsLayout,
        UpstreamKeys,
        comparison_key,
        evaluate_key,
        report_key,
        run_config,
        run_key,
        sweep_key,
    )

    layout = RunsLayout(Path("/runs"))
    upstream = UpstreamKeys.of(cfg, CODE)
    parent_key = comparison_key(cfg, CODE, "")
    keys = {"data": upstream.data, "policy": upstream.policy, "probe": upstream.probe(cfg, CODE),
            "comparison": parent_key}
    train_keys = []
    for label in cfg.methods:
        for seed in cfg.seeds:
            train_key = upstream.train(run_config(cfg, label, seed), CODE)
            train_keys.append(train_key)
            keys[f"train/{label}/{seed}"] = train_key
            keys[f"train_dir/{label}/{seed}"] = str(layout.train_dir(cfg.name, label, seed, train_key))
            keys[f"mlflow_run_key/{label}/{seed}"] = run_key(parent_key, label, seed, cfg.cell_label, train_key)
            keys[f"train_flow_run_key/{label}/{seed}"] = run_key("train", train_key, "")
    keys["report"] = report_key(parent_key, None, train_keys, REPORT_CODE)
    keys["evaluate"] = evaluate_key(cfg, upstream.data, "Qwen/Qwen2.5-0.5B", cfg.eval.seed, CODE)
    keys["evaluate_run_key"] = run_key(keys["evaluate"])
    keys["sweep"] = sweep_key(sweep_cfg, cell_configs(sweep_cfg, []), CODE, "")
    keys["data_dir"] = str(layout.data_dir(upstream.data))
    keys["policy_dir"] = str(layout.policy_dir(upstream.policy))
    keys["report_dir"] = str(layout.report_dir(cfg.name, keys["report"]))
    return keys


# --------------------------------------------------------------------------- the values


def config_hashes(a) -> dict[str, str]:
    out = {}
    for path in sorted((CONF / "experiment").glob("*.yaml")):
        out[f"experiment/{path.name}"] = a["config_hash"](a["load_experiment"](path))
    for path in sorted((CONF / "sweep").glob("*.yaml")):
        sweep_cfg = a["load_sweep"](path)
        out[f"sweep/{path.name}"] = a["config_hash"](sweep_cfg)
        for cell in a["cell_configs"](sweep_cfg, []):
            out[f"sweep/{path.name}#{cell.cell_label}"] = a["config_hash"](cell)
    for group, adapter in (("method", a["method_adapter"]), ("model", a["model_adapter"])):
        for path in sorted((CONF / group).glob("*.yaml")):
            out[f"{group}/{path.name}"] = a["config_hash"](adapter.validate_python(yaml.safe_load(path.read_text())))
    for path in sorted((CONF / "data").glob("*.yaml")):
        raw = yaml.safe_load(path.read_text())
        if raw.get("kind") in ("synthetic_arith", "math"):
            out[f"data/{path.name}"] = a["config_hash"](a["data_adapter"].validate_python(raw))
        else:  # a dataset spec, or a list of benchmarks: read as experiments read them
            out[f"data/{path.name}"] = hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()[:16]
    return out


def checkpoint_bytes(a, tmp: Path) -> dict[str, str]:
    import numpy as np
    import torch

    from pilotcommit.allocation.buffer import BufferEntry
    from pilotcommit.types import (
        EvalRecord,
        Group,
        LoopState,
        RequestResult,
        Rollout,
        RolloutKind,
        RolloutRequest,
        TrainBatch,
    )

    rollouts = [Rollout(f"p{i}", RolloutKind.PILOT if i % 2 else RolloutKind.COMMIT, [1, 2, 3], [4, 5 + i],
                        [-0.5, -0.25 * i], f"{i}", "stop", reward=float(i % 2), correct=float(i % 2), policy_step=i)
                for i in range(4)]
    loop = LoopState(steps=3, generated_tokens=41, eval_history=[EvalRecord(0, 0, {"eval/a": 0.5}),
                                                                  EvalRecord(3, 120, {"eval/a": 0.625})],
                      evaluations=2, train_pass_rates={"p0": (0.5, 2)},
                      timings={"generate_s": [0.25], "learn_s": [0.5]})
    state = {
        "config_hash": "abc", "method": "pilot_commit", "seed": 1,
        "model": {"w": torch.arange(12, dtype=torch.float32).reshape(3, 4), "b": torch.tensor([1.5, -2.0])},
        "learner": {"optimizer": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.ones(2)}},
                                  "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "params": [0]}]},
                    "scheduler": {"last_epoch": 3}},
        "policy": {"buffer": [BufferEntry("p1", rollouts[:2], 2, 7)],
                   "pending": [RequestResult(RolloutRequest("p2", 2, RolloutKind.COMMIT), rollouts[2:])],
                   "batch": TrainBatch(3, [Group(0, "p0", rollouts, staleness=1)], {"rollouts/sampled": 8.0}),
                   "rng": np.random.default_rng(5).bit_generator.state, "floats": [float("inf"), 0.1]},
        "loop": loop,
        "torch_rng": torch.ByteTensor(list(range(16))),
    }
    folder = a["save_checkpoint"](tmp, 3, state, {"method": "pilot_commit", "seed": 1, "final": False})
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest()
            for name in ("state.json", "state.pt", "meta.json")}


def _history(points):
    from pilotcommit.evaluation import AVERAGE_ACCURACY
    from pilotcommit.types import EvalRecord

    return [EvalRecord(i, r, {AVERAGE_ACCURACY: acc, "eval/arith/accuracy": acc}) for i, (r, acc) in enumerate(points)]


def comparison_texts(a) -> dict[str, str]:
    from rich.console import Console

    from pilotcommit.config import TargetConfig

    RunHistory = a["RunHistory"]
    runs = [
        RunHistory("grpo", 0, _history([(0, 0.50), (2048, 0.58), (4096, 0.61), (6144, 0.60)]), "tiny", "r0", "tiny"),
        RunHistory("grpo", 1, _history([(0, 0.50), (2048, 0.57), (4096, 0.59), (6144, 0.62)]), "tiny", "r1", "tiny"),
        RunHistory("dapo", 0, _history([(0, 0.50), (5000, 0.55), (9000, 0.60)]), "tiny", "r2", "tiny"),
        RunHistory("dapo", 1, _history([(0, 0.50), (5100, 0.56), (9100, 0.58)]), "tiny", "r3", "tiny"),
        RunHistory("pilot_commit", 0, _history([(0, 0.50), (3000, 0.59), (6500, 0.62)]), "tiny", "r4", "tiny"),
        RunHistory("pilot_commit", 1, _history([(0, 0.50), (3100, 0.61), (6400, 0.615)]), "tiny", "r5", "tiny"),
    ]
    summary = a["summarize"](runs, TargetConfig(fraction_of_reference=0.9))
    console = Console(record=True, width=80, color_system=None, force_terminal=False)
    console.print(a["render_summary"](summary, "golden"))
    for table in a["render_details"](summary):
        console.print(table)
    links = a["MlflowLinks"]("http://127.0.0.1:5000", "http://127.0.0.1:5000/#/experiments/1/runs/p",
                             "http://127.0.0.1:5000/#/metric?x", True, "sqlite:///runs/mlflow.db")
    worse = [RunHistory(r.method, r.seed, [type(e)(e.step, e.cumulative_rollouts,
                                                   {k: v - 0.04 for k, v in e.metrics.items()}) for e in r.history],
                        r.model, r.run_id, r.cell) for r in runs]
    current = a["summarize"](worse, TargetConfig(fraction_of_reference=0.9), target_override=summary.target)
    verdict = a["check_regression"](current, summary, a["RegressionTolerance"](),
                                    hardware_differences=["torch: 2.13.0 vs 2.14.0"])
    return {
        "comparison_table": console.export_text(),
        "comparison_markdown": a["comparison_markdown"](summary, "comparison golden", links),
        "summary_text": a["summary_text"](summary),
        "summary_json": json.dumps(summary.to_dict(), sort_keys=True),
        "regression_report": verdict.report(),
    }


def study_text(a) -> str:
    RunHistory = a["RunHistory"]

    def cell_runs(cell: str, pc_scale: float):
        runs = []
        for s in (0, 1, 2):
            at = 1000 * (s + 1)
            runs.append(RunHistory("grpo", s, _history([(0, 0.40), (at, 0.60), (8000, 0.61)]), cell=cell))
            runs.append(RunHistory("pilot_commit", s, _history([(0, 0.40), (int(at * pc_scale), 0.60), (8000, 0.60)]),
                                   cell=cell))
            runs.append(RunHistory("dapo", s, _history([(0, 0.40), (4000, 0.50), (8000, 0.55)]), cell=cell))
        return runs

    runs = cell_runs("fast", 0.5) + cell_runs("slow", 1.7)
    steps = [a["RunSteps"](r.method, r.seed, r.cell, [8, 4, 2], [24, 28, 30]) for r in runs]
    probe = {"prompt_ids": ["a", "b", "c"], "successes": [0, 2, 4], "samples": 4, "estimator": "empirical_bayes",
             "spread": {"at_0": 1 / 3, "at_1": 1 / 3}, "recommendation": "as logged",
             "predictions": [{"method": m, "kind": m, "informative_groups_per_1k": v, "breakdown": {}, "note": ""}
                             for m, v in {"grpo": 20.0, "dapo": 10.0, "pilot_commit": 30.0}.items()]}
    rates = {c: {m: {"per_1k": 21.0, "early_per_1k": 19.5} for m in ("grpo", "dapo", "pilot_commit")}
             for c in ("fast", "slow")}
    inputs = a["StudyInputs"](runs, steps, {"fast": probe, "slow": probe}, rates,
                               [{"run_id": "x", "code_version": "v", "methods": ["dapo", "grpo", "pilot_commit"],
                                 "runs": len(runs)}])
    cells = a["study_cells"](inputs, resamples=300)
    return a["study_markdown"](cells, header="golden study")


def compute(tmp: Path) -> dict:
    a = api()
    smoke = a["load_experiment"](CONF / "experiment" / "smoke.yaml")
    return {
        "config_hash": config_hashes(a),
        "smoke_stage_keys": a["smoke_stage_keys"](smoke, a["load_sweep"](CONF / "sweep" / "smoke.yaml")),
        "checkpoint_sha256": checkpoint_bytes(a, tmp),
        "texts": comparison_texts(a),
        "study_report": study_text(a),
    }


# --------------------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    return json.loads(EXPECTED.read_text()), compute(tmp_path_factory.mktemp("golden"))


@pytest.mark.parametrize("part", ["config_hash", "smoke_stage_keys", "checkpoint_sha256", "texts", "study_report"])
def test_unchanged(golden, part):
    expected, actual = golden
    if isinstance(expected[part], dict):
        # every pinned item is still there (a new conf file adds an item: it has no old value)
        missing = sorted(set(expected[part]) - set(actual[part]))
        assert not missing, f"pinned items disappeared: {missing}"
        for key in expected[part]:
            assert actual[part][key] == expected[part][key], f"{part}[{key!r}] changed"
    else:
        assert actual[part] == expected[part]


if __name__ == "__main__":  # pragma: no cover - run once, before the first move
    import tempfile

    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python -m tests.golden.test_golden --write")
    with tempfile.TemporaryDirectory() as tmp:
        EXPECTED.write_text(json.dumps(compute(Path(tmp)), indent=1, sort_keys=True) + "\n")
    print(f"wrote {EXPECTED}")
