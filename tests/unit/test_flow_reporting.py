"""What the Prefect run page and the terminal show, without Prefect: the thinning of training
progress lines, the allocation tally, the comparison's markdown, and the CLI tables' width.

The flows' real log lines and artifacts (through a Prefect API) are checked in
tests/integration/test_prefect_run_page.py.
"""

from __future__ import annotations

import re

from rich.console import Console

from flows.ui import artifact_key
from pilotcommit.analysis.render import (
    comparison_markdown,
    comparison_rows,
    render_details,
    render_summary,
)
from pilotcommit.analysis.summary import ComparisonSummary, MethodSummary, SpeedUp
from pilotcommit.runner.progress import (
    AllocationTally,
    EvaluationProgress,
    RunIdentity,
    TrainingLog,
    budget_fraction,
    evaluation_due,
)
from pilotcommit.tracking.links import mlflow_links


def _summary(seeds: int = 5, big: bool = True) -> ComparisonSummary:
    """A wide worst case: long method names, seven-digit rollouts, not-reached seeds, a partial speed-up."""
    scale = 1_000_000 if big else 1_000
    grpo = MethodSummary("grpo", {s: scale + scale // 100 * s for s in range(seeds)}, scale * 1.05, scale * 0.123,
                         0.58161, 0.01234, scale * 2.0)
    dapo = MethodSummary("dapo", {s: None for s in range(seeds)}, None, None, 0.50012, 0.02345, scale * 2.0)
    pc = MethodSummary("pilot_commit", {s: (scale // 2 if s % 2 else None) for s in range(seeds)}, scale * 0.5,
                       scale * 0.0123, 0.59001, 0.00999, scale * 2.0)
    speedups = [SpeedUp("pilot_commit", "grpo", 2.1, {1: 2.02, 3: 2.2}, True),
                SpeedUp("pilot_commit", "dapo", None, {}, False, "not reached")]
    return ComparisonSummary("eval/average_accuracy", 0.5816, {"grpo": grpo, "dapo": dapo, "pilot_commit": pc},
                             speedups)


def _render(renderable, width: int) -> list[str]:
    console = Console(width=width, record=True, color_system=None)
    console.print(renderable)
    return console.export_text().rstrip("\n").splitlines()


def test_the_cli_tables_fit_80_columns_without_wrapping():
    summary = _summary(seeds=8)
    for table in [render_summary(summary, "demo (run 0123456789abcdef0123456789abcdef)"), *render_details(summary)]:
        # natural width: rendered on a very wide console, no line may pass 80 columns...
        wide = _render(table, 200)
        assert max(len(line) for line in wide) <= 80, "\n".join(wide)
        # ...so on an 80-column terminal nothing wraps: the same lines
        assert _render(table, 80) == wide
    main = "\n".join(_render(render_summary(summary, "model-scale / qwen3-14b-base"), 80))
    assert "1,050,000 ± 123,000" in main
    # the title on one line: the table is as wide as it
    assert main.splitlines()[0].strip() == "model-scale / qwen3-14b-base: target eval/average_accuracy = 0.5816"
    details = "\n".join("\n".join(_render(t, 80)) for t in render_details(summary))
    assert "2.10x partial" in details and "[2.02-2.20]" in details and "n/a: not reached" in details
    # one row per seed, a column per method
    assert re.search(r"│ +6 │ 1,060,000 │ +- │ +- │", details), details
    assert "paired [min-max]" in details


def test_evaluation_lines_are_thinned_to_a_readable_rate():
    # a 1,000-step run evaluated every 5 steps: 201 evaluations, about 20 lines logged
    lines: list[str] = []
    log = TrainingLog("train grpo seed 0 (m)", 1000, None, "eval/average_accuracy", sink=lambda e: None,
                      logger=type("L", (), {"info": lambda self, msg: lines.append(msg)})())
    run = RunIdentity("grpo", 0, "m", "m")
    for step in range(0, 1001, 5):
        log(EvaluationProgress(run, step, step * 64, {"eval/average_accuracy": 0.5},
                               AllocationTally(5 if step else 0, {"alloc/informative": 10.0}, {})))
    assert 20 <= len(lines) <= 22, len(lines)
    assert "evaluation at step 0/1000 (0% of the budget)" in lines[0]
    assert "evaluation at step 1000/1000 (100% of the budget), 64,000 rollouts, eval/average_accuracy 0.5000" in lines[-1]
    # the allocation summary covers every step since the last logged line, skipped evaluations included
    assert "50 steps" in lines[1] and "100 informative" in lines[1], lines[1]


def test_evaluation_due_first_each_fraction_and_final():
    assert evaluation_due(0.0, None)
    assert not evaluation_due(0.04, 0.0, lines=20)
    assert evaluation_due(0.05, 0.04, lines=20)
    assert evaluation_due(1.0, 0.99, lines=20)
    assert budget_fraction(100, None, 50, 10**9) == 0.5
    assert budget_fraction(None, 1000, 5, 250) == 0.25
    assert budget_fraction(100, 1000, 10, 900) == 0.9  # whichever limit comes first
    assert budget_fraction(100, None, 150, 0) == 1.0


def test_allocation_tally_sums_counts_and_keeps_latest_gauges():
    tally = AllocationTally()
    tally.add_step({"alloc/rounds": 2, "alloc/informative": 3, "alloc/too_hard": 1, "alloc/buffer_size": 4})
    tally.add_step({"alloc/rounds": 4, "alloc/informative": 5, "alloc/too_easy": 2, "alloc/buffer_size": 7})
    assert tally.steps == 2 and tally.sums["alloc/informative"] == 8 and tally.latest["alloc/buffer_size"] == 7
    text = tally.describe()
    assert "2 steps, 3.0 sampling rounds/step" in text and "8 informative / 1 too hard / 2 too easy" in text
    assert "buffer 7" in text


def test_comparison_markdown_has_the_target_rows_intervals_and_links():
    summary = _summary(seeds=3, big=False)
    links = mlflow_links("sqlite:////tmp/runs/mlflow.db", "7", "abc", ["r1", "r2"])
    text = comparison_markdown(summary, "comparison demo", links)
    assert "**Target** eval/average_accuracy = **0.5816**" in text
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert rows[0] == ("| method | rollouts to target | reached | final accuracy | speed-up vs grpo | "
                       "speed-up vs dapo |")
    assert "| pilot_commit | 500 ± 12 | 1/3 | 0.5900 ± 0.0100 | 2.10x [2.02-2.20] (partial) | n/a (not reached) |" in rows
    assert "| dapo | not reached | 0/3 | 0.5001 ± 0.0234 | - | - |" in rows
    assert "| grpo | 1,000 | 1,010 | 1,020 |" in rows  # per seed
    assert "[parent run](http://127.0.0.1:5000/#/experiments/7/runs/abc)" in text
    assert "mlflow ui --backend-store-uri sqlite:////tmp/runs/mlflow.db" in text
    assert [r["method"] for r in comparison_rows(summary)] == ["grpo", "dapo", "pilot_commit"]


def test_artifact_keys_are_valid_prefect_keys():
    assert artifact_key("sweep", "Model_Scale", "cell", "qwen3-14b.base") == "sweep-model-scale-cell-qwen3-14b-base"
    assert re.fullmatch(r"[a-z0-9-]+", artifact_key("comparison", "demo/x y"))
