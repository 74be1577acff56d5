"""Runs read back from MLflow for the analyses: one training run's evaluation history (``eval/*``
against steps, ``by_rollouts/*`` against cumulative rollouts), a comparison's child runs, the
measured informative-group rates, and a sweep's study inputs (histories, per-step group counts,
probes, provenance). Reads only; what is computed from them is pure (summary.py, study.py)."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pilotcommit.analysis.study import (
    PROBE_ARTIFACT,
    ZERO_VARIANCE,
    RunSteps,
    StudyInputs,
    merge_study_inputs,
)
from pilotcommit.analysis.summary import RunHistory
from pilotcommit.evaluation import AVERAGE_ACCURACY
from pilotcommit.types import EvalRecord

INFORMATIVE_GROUPS = "reward/informative_groups"


EARLY_STEPS = 10  # "early": the first training steps, where the policy is still close to the probed one


def _pair_histories(run_id: str, by_step: list[tuple[int, float]], by_rollouts: list[tuple[int, float]]):
    """Match the i-th evaluation against steps with the i-th against rollouts (both in order)."""
    if len(by_step) != len(by_rollouts):
        raise ValueError(
            f"MLflow run {run_id}: {len(by_step)} evaluations by step but {len(by_rollouts)} by rollouts; "
            "the run's evaluation metrics are incomplete"
        )
    return [(step, rollouts) for (step, _), (rollouts, _) in zip(by_step, by_rollouts)]


def load_run_history(client, run, metric: str = AVERAGE_ACCURACY) -> RunHistory:
    """One child run's evaluation history from its ``eval/*`` and ``by_rollouts/`` metrics."""
    from pilotcommit.tracking import BY_ROLLOUTS_PREFIX, metric_history

    run_id = run.info.run_id
    tags = run.data.tags
    for needed in ("method", "seed"):
        if needed not in tags:
            raise ValueError(f"MLflow run {run_id}: missing tag {needed!r}; not a pilotcommit training run")
    eval_keys = [k for k in run.data.metrics if k.startswith("eval/")]
    if metric not in eval_keys:
        return RunHistory(tags["method"], int(tags["seed"]), [], tags.get("model", ""), run_id,
                          tags.get("cell", tags.get("model", "")))
    by_step = metric_history(client, run_id, metric)
    by_rollouts = metric_history(client, run_id, BY_ROLLOUTS_PREFIX + metric)
    pairs = _pair_histories(run_id, by_step, by_rollouts)
    values = {k: dict(metric_history(client, run_id, k)) for k in eval_keys}
    history = [
        EvalRecord(step, int(rollouts), {k: v[step] for k, v in values.items() if step in v})
        for step, rollouts in pairs
    ]
    return RunHistory(tags["method"], int(tags["seed"]), history, tags.get("model", ""), run_id,
                      tags.get("cell", tags.get("model", "")))


def informative_group_rates(client, runs: Sequence[tuple[str, str]]) -> dict[str, dict[str, float]]:
    """Measured informative groups per 1,000 sampled rollouts, per method (mean over its runs):
    over the whole run (``per_1k``) and over its first ``EARLY_STEPS`` steps (``early_per_1k``),
    the counterpart of what ``pilotcommit probe`` predicts from the initial policy.

    ``runs``: ``(method, MLflow run id)`` pairs. A run without the metric (older code) is left out.
    """
    from pilotcommit.tracking import metric_history

    per_method: dict[str, list[tuple[float, float]]] = {}
    for method, run_id in runs:
        informative = dict(metric_history(client, run_id, INFORMATIVE_GROUPS))
        cumulative = dict(metric_history(client, run_id, "rollouts/cumulative"))
        steps = sorted(set(informative) & set(cumulative))
        if not steps:
            continue
        early = [s for s in steps if s <= EARLY_STEPS] or steps[:1]
        whole = 1000 * sum(informative[s] for s in steps) / cumulative[steps[-1]]
        first = 1000 * sum(informative[s] for s in early) / cumulative[early[-1]]
        per_method.setdefault(method, []).append((whole, first))
    return {m: {"per_1k": float(np.mean([w for w, _ in v])), "early_per_1k": float(np.mean([f for _, f in v])),
                "runs": len(v)} for m, v in per_method.items()}


def load_comparison_runs(client, parent_run_id: str, metric: str = AVERAGE_ACCURACY) -> list[RunHistory]:
    """The training runs nested under a comparison's parent run."""
    from pilotcommit.tracking import child_runs

    parent = client.get_run(parent_run_id)
    children = child_runs(client, parent.info.experiment_id, parent_run_id)
    runs = [load_run_history(client, r, metric) for r in children if "method" in r.data.tags]
    if not runs:
        raise ValueError(f"MLflow run {parent_run_id} has no training runs nested under it")
    return runs


def load_study_inputs(client, parent_run_id: str | Sequence[str],
                      metric: str = AVERAGE_ACCURACY) -> StudyInputs:
    """The sweep's child runs (histories and per-step group counts), its probes, and the
    measured informative-group rates per cell; several parent runs: :func:`merge_study_inputs`
    of each one's, in the order given, with the rates over every merged run (a method's seeds may
    come from several sweeps)."""
    ids = [parent_run_id] if isinstance(parent_run_id, str) else list(parent_run_id)
    inputs = merge_study_inputs([(p, _load_sweep(client, p, metric)) for p in ids])
    inputs.rates = _measured_rates(client, inputs.runs)
    return inputs


def _measured_rates(client, runs: Sequence[RunHistory]) -> dict[str, dict[str, dict[str, float]]]:
    return {cell: informative_group_rates(client, [(r.method, r.run_id) for r in runs if r.cell == cell])
            for cell in dict.fromkeys(r.cell for r in runs)}


def _load_sweep(client, parent_run_id: str, metric: str) -> StudyInputs:
    """One sweep's runs, per-step counts, probes and provenance (rates: :func:`_measured_rates`)."""
    from pilotcommit.tracking import TAG_CODE_VERSION, metric_history

    runs = load_comparison_runs(client, parent_run_id, metric)
    steps = []
    for r in runs:
        zero = [v for _, v in metric_history(client, r.run_id, ZERO_VARIANCE)]
        informative = [v for _, v in metric_history(client, r.run_id, INFORMATIVE_GROUPS)]
        steps.append(RunSteps(r.method, r.seed, r.cell, zero, informative))
    source = {"run_id": parent_run_id,
              "code_version": client.get_run(parent_run_id).data.tags.get(TAG_CODE_VERSION, "unknown"),
              "methods": sorted({r.method for r in runs}), "runs": len(runs)}
    return StudyInputs(runs, steps, load_probes(client, parent_run_id), {}, [source])


def load_probes(client, parent_run_id: str) -> dict[str, dict]:
    """``probe/<cell>/probe.json`` artifacts of the parent run: cell -> probe dict."""
    probes = {}
    try:
        cells = client.list_artifacts(parent_run_id, "probe")
    except Exception:  # noqa: BLE001 - no probe folder: a sweep without probes
        return probes
    with tempfile.TemporaryDirectory() as tmp:
        for entry in cells:
            if not entry.is_dir:
                continue
            cell = entry.path.rsplit("/", 1)[-1]
            try:
                local = client.download_artifacts(parent_run_id, f"{entry.path}/{PROBE_ARTIFACT}", tmp)
            except Exception:  # noqa: BLE001 - a cell folder without a probe file: no prediction
                local = None
            if local is not None:
                probes[cell] = json.loads(Path(local).read_text())
    return probes
