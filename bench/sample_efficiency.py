"""Sample efficiency over seeds: GRPO vs DAPO vs Pilot-Commit under equal rollout budgets.

Runs the comparison through the project's own pipeline (the ``compare`` Prefect flow: cached
data and warm start, one MLflow child run per method x seed, resumable) with the seeds
replaced by ``--seeds`` (default 0-4), then reports:

- per method: rollouts to target (mean, std over the seeds that reached it, and how many
  did), final and best accuracy (mean, std over seeds), generated tokens, training steps and
  wall time per run;
- speed-ups of Pilot-Commit over GRPO and DAPO (ratio of mean rollouts to target, as
  ``pilotcommit report`` prints it) with a 95% percentile bootstrap interval: seeds are
  resampled with replacement, the same resampled seeds for every method (a seed fixes the
  initial data order of all three), and the target is recomputed from the resampled GRPO
  runs, so the interval includes the uncertainty of the target itself. Resamples where a
  ratio is undefined (a method never reaches the target) are counted and left out;
- the allocation diagnostics logged per training step (means over steps and seeds):
  prompts piloted / informative / too hard / too easy per step, how well pilot pass rates
  predicted commit pass rates (``alloc/pilot_commit_agreement``), zero-variance groups in
  the trained batch, sampling rounds, evictions;
- the same speed-ups for lower targets (``--fractions``: a fraction of the reference's best
  gain over the initial accuracy, ``TargetConfig.fraction_of_reference``), because a target
  at the very end of the reference's budget turns "rollouts to target" into a test of
  evaluation noise at the last few evaluations;
- accuracy at equal budgets (``--budgets``): each run's curve interpolated at the same
  cumulative rollouts, seed means, and Pilot-Commit minus each baseline paired by seed with a
  95% bootstrap interval;
- the accuracy-versus-cumulative-rollouts figure (``pilotcommit.analysis.figures.accuracy_figure``:
  seed mean, min-max band, target, each method's mean rollouts to target).

The target, rollouts to target and speed-ups are ``pilotcommit.analysis.summary``'s pure
functions, the bootstrap and equal-budget statistics ``pilotcommit.analysis.stats``'; nothing here
re-implements them. A benchmark, not a test: the numbers and the command are recorded in
docs/benchmarks.md.

    python bench/sample_efficiency.py                        # the demo, seeds 0-4 (long)
    python bench/sample_efficiency.py --config conf/experiment/smoke.yaml --seeds 0 1 --bootstrap 200
    python bench/sample_efficiency.py --from-json <runs-dir>/report/sample_efficiency.json   # re-analyse
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/_requires.py, also when loaded by path
from _common import REPO_ROOT, load_average, print_environment, print_table, quiet_services  # noqa: E402
from _requires import require  # noqa: E402

quiet_services()  # before Prefect and MLflow are imported (the check imports them)
require(__file__, "numpy", "torch", "prefect", "mlflow", "pilotcommit", "flows")

import numpy as np  # noqa: E402

from pilotcommit.analysis.stats import bootstrap_speedups, equal_budget_table  # noqa: E402
from pilotcommit.analysis.summary import (  # noqa: E402
    BASELINE_METHODS,
    CANDIDATE_METHOD,
    ComparisonSummary,
    RunHistory,
    summarize_comparison,
)
from pilotcommit.evaluation import EvalRecord  # noqa: E402

DEFAULT_RUNS_DIR = REPO_ROOT / "runs" / "bench" / "sample-efficiency"
# per-step allocation metrics summarised per method (DESIGN.md metric names)
ALLOC_METRICS = (
    "rollouts/sampled",
    "rollouts/pilot",
    "rollouts/commit",
    "alloc/rounds",
    "alloc/informative",
    "alloc/too_hard",
    "alloc/too_easy",
    "alloc/dropped_groups",
    "alloc/pilot_commit_agreement",
    "alloc/pilot_pass_rate_mean",
    "alloc/commit_pass_rate_mean",
    "alloc/staleness_mean",
    "alloc/evicted_total",
    "reward/mean",
    "reward/zero_variance_groups",
)


@dataclass(frozen=True)
class RunRecord:
    """One finished training run as this benchmark needs it."""

    method: str
    seed: int
    history: list[EvalRecord]
    generated_tokens: float
    steps: int
    wall_s: float
    mlflow_run_id: str
    step_metrics: dict[str, list[float]]  # per-step values of ALLOC_METRICS that were logged


# --------------------------------------------------------------------------- pure statistics


def best_accuracy(history: Sequence[EvalRecord], metric: str) -> float:
    return max(r.metrics.get(metric, -math.inf) for r in history)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    return float(np.mean(values)), float(np.std(values))


def method_table(records: Sequence[RunRecord], summary: ComparisonSummary) -> list[dict]:
    """One row per method: rollouts to target, final and best accuracy, tokens, steps, wall time."""
    rows = []
    metric = summary.metric
    for method, m in summary.methods.items():
        mine = [r for r in records if r.method == method]
        final = mean_std([r.history[-1].metrics.get(metric, math.nan) for r in mine if r.history])
        best = mean_std([best_accuracy(r.history, metric) for r in mine if r.history])
        initial = mean_std([r.history[0].metrics.get(metric, math.nan) for r in mine if r.history])
        rows.append(
            {
                "method": method,
                "reached": f"{m.reached}/{m.seeds}",
                "rollouts_to_target_mean": m.mean,
                "rollouts_to_target_std": m.std,
                "rollouts_to_target_per_seed": m.rollouts_to_target,
                "initial_accuracy_mean": initial[0],
                "final_accuracy_mean": final[0],
                "final_accuracy_std": final[1],
                "best_accuracy_mean": best[0],
                "best_accuracy_std": best[1],
                "final_rollouts_mean": m.final_rollouts_mean,
                "generated_tokens_mean": mean_std([r.generated_tokens for r in mine])[0],
                "steps_mean": mean_std([r.steps for r in mine])[0],
                "wall_s_mean": mean_std([r.wall_s for r in mine])[0],
            }
        )
    return rows


def allocation_table(records: Sequence[RunRecord]) -> dict[str, dict[str, float]]:
    """Per method, each allocation metric's mean over all logged steps of all seeds
    (``alloc/evicted_total``: the final value, averaged over seeds)."""
    out: dict[str, dict[str, float]] = {}
    for method in sorted({r.method for r in records}):
        mine = [r for r in records if r.method == method]
        row = {}
        for key in ALLOC_METRICS:
            if key == "alloc/evicted_total":
                finals = [r.step_metrics[key][-1] for r in mine if r.step_metrics.get(key)]
                if finals:
                    row[key] = float(np.mean(finals))
                continue
            values = [v for r in mine for v in r.step_metrics.get(key, [])]
            if values:
                row[key] = float(np.mean(values))
        out[method] = row
    return out


# --------------------------------------------------------------------------- running


def run_comparison(config: Path, overrides: list[str], runs_dir: Path) -> dict:
    """The ``compare`` flow (cached stages, MLflow child runs) with a progress line per run
    (at most one a minute)."""
    from flows.compare import compare_flow
    from pilotcommit.runner.progress import StepProgress, WarmStartProgress, progress_sink

    last: dict[tuple, float] = {}

    def progress(event) -> None:
        if isinstance(event, WarmStartProgress):
            print(f"  warm start {event.model}: {'done' if event.done else 'running'}", flush=True)
        elif isinstance(event, StepProgress):
            key = (event.run.method, event.run.seed)
            now = time.monotonic()
            if now - last.get(key, 0.0) > 60:
                last[key] = now
                print(
                    f"  {event.run.method:<13} seed {event.run.seed}: step {event.step}, "
                    f"{event.rollouts or 0:,.0f} rollouts",
                    flush=True,
                )

    with progress_sink(progress):
        return compare_flow(config_path=str(config), overrides=overrides, runs_dir=str(runs_dir))


def flow_out_from_json(saved: dict, runs_dir: Path, name: str) -> dict:
    """The parts of the compare flow's output that :func:`collect_records` reads, rebuilt from a
    saved report and the runs directory it was written from."""
    runs = []
    for r in saved["runs"]:
        found = sorted(
            (runs_dir / name / "train").glob(f"{r['method']}-seed{r['seed']}-*/result.json")
        )
        if len(found) != 1:
            raise FileNotFoundError(
                f"{runs_dir}: expected one result.json of {r['method']} seed {r['seed']}, found {len(found)}"
            )
        runs.append({**r, "run_dir": str(found[0].parent)})
    uri = saved.get("tracking_uri") or f"sqlite:///{runs_dir.resolve() / 'mlflow.db'}"
    return {"runs": runs, "tracking_uri": uri, "parent_run_id": saved["parent_run_id"]}


def collect_records(flow_out: dict) -> list[RunRecord]:
    from pilotcommit import tracking
    from pilotcommit.loop import RunResult

    client = tracking.mlflow_client(flow_out["tracking_uri"])
    records = []
    for run in flow_out["runs"]:
        result = RunResult.from_dict(json.loads((Path(run["run_dir"]) / "result.json").read_text()))
        step_metrics = {}
        for key in ALLOC_METRICS:
            history = tracking.metric_history(client, run["mlflow_run_id"], key)
            if history:
                step_metrics[key] = [v for _, v in history]
        records.append(
            RunRecord(
                method=run["method"],
                seed=int(run["seed"]),
                history=result.eval_history,
                generated_tokens=float(
                    result.final_metrics.get("tokens/generated_cumulative", math.nan)
                ),
                steps=result.steps,
                wall_s=result.wall_s,
                mlflow_run_id=run["mlflow_run_id"],
                step_metrics=step_metrics,
            )
        )
    return records


# --------------------------------------------------------------------------- printing


def _num(value, fmt: str = ",.0f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "not reached" if fmt == ",.0f" else "-"
    return format(value, fmt)


def print_report(rows, speedups, alloc, summary, cfg, seeds, flow_out) -> None:
    print(
        f"\n## {cfg.name}: {', '.join(cfg.methods)} x seeds {list(seeds)}, "
        f"budget {cfg.budget.max_rollouts or '-'} rollouts / {cfg.budget.max_steps or '-'} steps"
    )
    table = []
    for r in rows:
        std = f" ± {r['rollouts_to_target_std']:,.0f}" if r["rollouts_to_target_std"] is not None else ""
        table.append((
            r["method"], f"{_num(r['rollouts_to_target_mean'])}{std}", r["reached"], f"{r['initial_accuracy_mean']:.4f}",
            f"{r['final_accuracy_mean']:.4f} ± {r['final_accuracy_std']:.4f}",
            f"{r['best_accuracy_mean']:.4f} ± {r['best_accuracy_std']:.4f}", f"{r['final_rollouts_mean']:,.0f}",
            f"{r['generated_tokens_mean']:,.0f}", f"{r['steps_mean']:.1f}", f"{r['wall_s_mean']:.0f}",
        ))
    print_table(
        ("method", "rollouts to target (mean ± std)", "reached", "initial acc.", "final acc. (mean ± std)",
         "best acc. (mean ± std)", "rollouts sampled", "tokens generated", "steps", "wall s / run"),
        table,
        title=f"target {summary.metric} = {summary.target:.4f} (best seed-mean of {cfg.target.reference_method})",
    )
    print("\nrollouts to target per seed:")
    for r in rows:
        per_seed = ", ".join(f"{s}: {_num(v)}" for s, v in r["rollouts_to_target_per_seed"].items())
        print(f"  {r['method']}: {per_seed}")
    table = []
    for baseline, s in speedups.items():
        paired = ", ".join(f"{k}: {v:.2f}" for k, v in s["paired"].items()) or "-"
        ratio = _num(s["speedup"], ".2f") + ("x (partial)" if s["partial"] else "x")
        if s["note"]:
            ratio = f"n/a ({s['note']})"
        table.append((f"vs {baseline}", ratio, f"[{_num(s['ci_low'], '.2f')}, {_num(s['ci_high'], '.2f')}]",
                      f"{s['undefined_fraction']:.1%}", paired))
    candidate = summary.speedups[0].method if summary.speedups else CANDIDATE_METHOD
    print_table((f"speed-up of {candidate}", "ratio of means", "95% bootstrap interval", "undefined resamples",
                 "paired per seed"), table)
    keys = [k for k in ALLOC_METRICS if any(k in row for row in alloc.values())]
    print_table(("metric", *alloc), [(key, *(_num(alloc[m].get(key), ".3f") for m in alloc)) for key in keys],
                title="allocation per training step (mean over steps and seeds; evicted: final total):")
    print(f"\nMLflow: parent run {flow_out['parent_run_id']} in {flow_out['tracking_uri']}")


def print_secondary(fraction_rows: list[tuple], budget_rows: list[dict], metric: str,
                    candidate: str = CANDIDATE_METHOD,
                    baselines: Sequence[str] = BASELINE_METHODS) -> None:
    table = []
    for fraction, summary, speedups in fraction_rows:
        per_method = "; ".join(
            f"{m}: {_num(v.mean)} ({v.reached}/{v.seeds})" for m, v in summary.methods.items()
        )
        cells = []
        for baseline in baselines:
            sp = speedups.get(baseline)
            if sp is None or sp["note"]:
                cells.append(f"n/a ({sp['note'] if sp else 'missing'})")
            else:
                cells.append(
                    f"{sp['speedup']:.2f}x{' partial' if sp['partial'] else ''} "
                    f"[{_num(sp['ci_low'], '.2f')}, {_num(sp['ci_high'], '.2f')}]"
                )
        table.append((f"{fraction:g}", f"{summary.target:.4f}", per_method, *cells))
    print_table(("fraction", "target", "rollouts to target (mean, reached) per method",
                 *(f"{candidate} vs {b} [95% CI]" for b in baselines)), table,
                title="lower targets (a fraction of the reference's best gain over the initial accuracy):")
    if not budget_rows:
        return
    methods = [k for k in budget_rows[0] if k != "rollouts" and not k.startswith("diff_vs_")]
    others = [
        k.removeprefix("diff_vs_")
        for k in budget_rows[0]
        if k.startswith("diff_vs_") and not k.endswith("_ci")
    ]
    table = []
    for row in budget_rows:
        diffs = [
            f"{row[f'diff_vs_{o}']:+.4f} [{row[f'diff_vs_{o}_ci'][0]:+.4f}, {row[f'diff_vs_{o}_ci'][1]:+.4f}]"
            if f"diff_vs_{o}" in row
            else "-"
            for o in others
        ]
        table.append((f"{row['rollouts']:,.0f}", *(_num(row[m], ".4f") for m in methods), *diffs))
    print_table(("rollouts", *methods, *(f"{candidate} - {o}" for o in others)), table,
                title=f"{metric} at equal budgets (seed mean; PC minus baseline, paired by seed, 95% bootstrap CI):")


def main() -> None:
    from pilotcommit.config import demo_config_path, load_experiment_config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config", type=Path, default=demo_config_path(), help="experiment YAML (default: demo)"
    )
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], help="KEY=VALUE override"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--runs-dir", type=Path, default=DEFAULT_RUNS_DIR)
    parser.add_argument(
        "--out", type=Path, default=None, help="report directory (default: <runs-dir>/report)"
    )
    parser.add_argument("--figure", type=Path, default=None, help="also copy the figure here")
    parser.add_argument("--bootstrap", type=int, default=10_000, help="bootstrap resamples")
    parser.add_argument(
        "--from-json",
        type=Path,
        default=None,
        help="re-analyse a saved sample_efficiency.json instead of running the comparison",
    )
    parser.add_argument(
        "--fractions",
        type=float,
        nargs="*",
        default=[0.5, 0.75],
        help="also report lower targets: these fractions of the reference's best gain",
    )
    parser.add_argument(
        "--budgets",
        type=float,
        nargs="*",
        default=[10_000, 20_000, 30_000],
        help="also report accuracy at these cumulative rollout budgets",
    )
    parser.add_argument("--candidate", default=CANDIDATE_METHOD,
                        help="the method whose speed-ups are reported (default: pilot_commit)")
    parser.add_argument("--baselines", nargs="*", default=None,
                        help="the methods it is compared with (default: every other method)")
    args = parser.parse_args()

    overrides = [*args.overrides, f"seeds=[{','.join(str(s) for s in args.seeds)}]"]
    cfg = load_experiment_config(args.config, overrides)
    out_dir = args.out or args.runs_dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    load_before = load_average()
    print(
        f"{cfg.name}: {len(cfg.methods)} methods x {len(cfg.seeds)} seeds into {args.runs_dir}",
        flush=True,
    )
    if args.from_json:
        # re-analyse a finished comparison without the flow (whose cache keys hold the code
        # version: after any edit to pilotcommit/ it would train everything again)
        saved = json.loads(args.from_json.read_text())
        flow_out = flow_out_from_json(saved, args.runs_dir, cfg.name)
        elapsed = float(saved["wall_s"])
    else:
        flow_out = run_comparison(args.config, overrides, args.runs_dir)
        elapsed = time.perf_counter() - started
    records = collect_records(flow_out)
    runs = [RunHistory(r.method, r.seed, r.history) for r in records]
    candidate = args.candidate
    baselines = tuple(args.baselines or [m for m in cfg.methods if m != candidate])
    compared = {"candidate": candidate, "baselines": baselines}
    summary = summarize_comparison(runs, cfg.target, **compared)
    rows = method_table(records, summary)
    speedups = bootstrap_speedups(runs, cfg.target, resamples=args.bootstrap, **compared)
    alloc = allocation_table(records)
    print_report(rows, speedups, alloc, summary, cfg, cfg.seeds, flow_out)
    fraction_rows = []
    for fraction in args.fractions:
        target_cfg = cfg.target.model_copy(update={"fraction_of_reference": fraction})
        fraction_rows.append(
            (
                fraction,
                summarize_comparison(runs, target_cfg, **compared),
                bootstrap_speedups(runs, target_cfg, resamples=args.bootstrap, **compared),
            )
        )
    budget_rows = equal_budget_table(
        runs, args.budgets, cfg.target.metric, resamples=args.bootstrap, candidate=candidate
    )
    print_secondary(fraction_rows, budget_rows, cfg.target.metric, candidate, baselines)

    import matplotlib.pyplot as plt

    from pilotcommit.analysis.figures import accuracy_figure

    fig = accuracy_figure(
        runs,
        summary,
        title=f"{cfg.name}: accuracy against rollout budget, "
        f"{len(cfg.seeds)} seeds (mean, min-max shaded)",
    )
    figure_path = out_dir / "accuracy_vs_rollouts.png"
    fig.savefig(figure_path, dpi=110)
    plt.close(fig)
    if args.figure:
        args.figure.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(figure_path, args.figure)
    (out_dir / "sample_efficiency.json").write_text(
        json.dumps(
            {
                "config": str(args.config),
                "overrides": overrides,
                "target": summary.target,
                "methods": rows,
                "speedups": speedups,
                "allocation": alloc,
                "lower_targets": [
                    {"fraction": f, "summary": sm.to_dict(), "speedups": sp}
                    for f, sm, sp in fraction_rows
                ],
                "equal_budgets": budget_rows,
                "runs": [
                    {
                        "method": r.method,
                        "seed": r.seed,
                        "steps": r.steps,
                        "wall_s": r.wall_s,
                        "mlflow_run_id": r.mlflow_run_id,
                        "generated_tokens": r.generated_tokens,
                        "step_metrics": r.step_metrics,
                        "history": [h.to_dict() for h in r.history],
                    }
                    for r in records
                ],
                "wall_s": elapsed,
                "parent_run_id": flow_out["parent_run_id"],
                "tracking_uri": flow_out["tracking_uri"],
            },
            indent=2,
            default=str,
        )
    )
    print(
        f"figure {figure_path}{' and ' + str(args.figure) if args.figure else ''}; "
        f"table {out_dir / 'sample_efficiency.json'}; {elapsed:.0f} s"
    )
    print_environment(load_before, libraries=("prefect", "mlflow"), torch_threads=cfg.torch_threads)


if __name__ == "__main__":
    main()
