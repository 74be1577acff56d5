"""The nightly regression verdict: a rerun against the accepted baseline, method by method, with an
accuracy tolerance from the baseline's own seed spread; and :func:`nightly_verdict`, which finds
the baseline in MLflow (same machine fingerprint first), reads both comparisons and records the
verdict on the rerun's parent run.

Numbers are hardware-specific (docs/embedded_task.md): when the baseline came from another
fingerprint the report says so first, naming the fields that differ.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pilotcommit.analysis.render import format_rollouts as _fmt_rollouts
from pilotcommit.analysis.summary import ComparisonSummary


@dataclass(frozen=True)
class RegressionTolerance:
    """How much worse than the accepted baseline a nightly run may be.

    The accuracy tolerance follows from the baseline's own seed spread
    (:func:`seed_spread_tolerance`): a seed-mean accuracy moves by that much from the choice
    of seeds alone. ``accuracy_drop`` is the fallback when the baseline has fewer than two
    seeds (no spread to measure), and a floor for a baseline whose seeds agree exactly.
    """

    accuracy_drop: float = 0.02  # absolute; fallback and floor (see above)
    rollouts_increase: float = 0.25  # relative, on the seed-mean rollouts to the baseline's target
    confidence: float = 0.95  # of the bootstrap interval of the baseline's seed mean
    bootstrap_samples: int = 4000
    bootstrap_seed: int = 0
    min_accuracy_drop: float = 0.0  # floor under the bootstrap tolerance


def seed_spread_tolerance(
    values: Sequence[float], *, confidence: float = 0.95, samples: int = 4000, seed: int = 0
) -> float | None:
    """Half-width of the central ``confidence`` bootstrap interval of the mean of ``values``.

    ``values`` are a method's final accuracies, one per seed, of the accepted baseline.
    Resampling seeds with replacement gives how far a seed mean moves from the choice of seeds
    alone; a rerun's paired drop smaller than that is not a regression. None for fewer than
    two values. Seeded: the same baseline always gives the same tolerance.
    """
    finite = np.asarray([v for v in values if math.isfinite(v)], dtype=float)
    if len(finite) < 2:
        return None
    rng = np.random.default_rng(seed)
    means = finite[rng.integers(0, len(finite), size=(samples, len(finite)))].mean(axis=1)
    low, high = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(high - low) / 2


def paired_drop(baseline: Mapping[int, float], current: Mapping[int, float]) -> tuple[float, list[int]] | None:
    """Mean of ``baseline[s] - current[s]`` over the seeds both have (the pairs), and the seeds."""
    seeds = sorted(set(baseline) & set(current))
    pairs = [(baseline[s], current[s]) for s in seeds if math.isfinite(baseline[s]) and math.isfinite(current[s])]
    if not pairs:
        return None
    return float(np.mean([b - c for b, c in pairs])), seeds


@dataclass(frozen=True)
class RegressionVerdict:
    passed: bool
    lines: list[str]

    def report(self) -> str:
        head = "nightly regression: PASSED" if self.passed else "nightly regression: FAILED"
        return "\n".join([head, *self.lines])


def check_regression(
    current: ComparisonSummary,
    baseline: ComparisonSummary,
    tolerance: RegressionTolerance,
    *,
    hardware_differences: Sequence[str] = (),
) -> RegressionVerdict:
    """Compare a rerun with the accepted baseline, method by method.

    ``current`` must be summarised against the baseline's target (``target_override``) so that
    a weaker reference method does not lower the bar. Fails when a method's final accuracy
    drops, seed by seed against the baseline's same seeds, by more than the tolerance of the
    baseline's seed spread (:func:`seed_spread_tolerance`; ``accuracy_drop`` with a single
    seed), its rollouts to target grow by more than ``rollouts_increase``, it reaches the
    target in fewer seeds, or it is missing. ``hardware_differences``
    (:func:`pilotcommit.fingerprint.fingerprint_differences`) non-empty means the baseline came
    from other hardware or software: the report says so first, because the same commit and
    seeds give other numbers there (docs/embedded_task.md).
    """
    lines: list[str] = []
    if hardware_differences:
        lines.append(
            "WARNING: the accepted baseline came from other hardware or software, so its numbers "
            "are not bit-comparable with this rerun's (same commit and seeds give other numbers "
            "there); differences: " + "; ".join(hardware_differences)
        )
    lines.append(f"target {baseline.metric} = {baseline.target:.4f} (from the accepted baseline)")
    passed = True
    for name, base in baseline.methods.items():
        now = current.methods.get(name)
        if now is None:
            lines.append(f"  {name}: MISSING from the rerun")
            passed = False
            continue
        problems = []
        spread = seed_spread_tolerance(
            list(base.final_accuracy.values()), confidence=tolerance.confidence,
            samples=tolerance.bootstrap_samples, seed=tolerance.bootstrap_seed,
        )
        if spread is None:
            allowed, source = tolerance.accuracy_drop, "fixed: fewer than 2 baseline seeds"
        else:
            allowed = max(spread, tolerance.min_accuracy_drop)
            source = f"{tolerance.confidence:.0%} bootstrap half-width of the baseline's {len(base.final_accuracy)} seeds"
        paired = paired_drop(base.final_accuracy, now.final_accuracy)
        if paired is not None:
            drop, seeds = paired
            compared = f"paired over seeds {seeds}"
        else:  # summaries without per-seed values (older cached results): compare the means
            drop, compared = base.final_accuracy_mean - now.final_accuracy_mean, "seed means"
        if drop > allowed:
            problems.append(
                f"final accuracy {now.final_accuracy_mean:.4f} < baseline {base.final_accuracy_mean:.4f}: "
                f"drop {drop:.4f} ({compared}) > tolerance {allowed:.4f} ({source})"
            )
        if now.reached < base.reached:
            problems.append(f"reached the target in {now.reached}/{now.seeds} seeds (baseline {base.reached}/{base.seeds})")
        elif base.mean is not None and now.mean is not None and now.mean > base.mean * (1 + tolerance.rollouts_increase):
            problems.append(
                f"rollouts to target {now.mean:.0f} > baseline {base.mean:.0f} x {1 + tolerance.rollouts_increase:.2f}"
            )
        status = "REGRESSED: " + "; ".join(problems) if problems else "ok"
        lines.append(
            f"  {name}: accuracy {now.final_accuracy_mean:.4f} (baseline {base.final_accuracy_mean:.4f}, "
            f"tolerance {allowed:.4f}), rollouts to target {_fmt_rollouts(now.mean)} "
            f"(baseline {_fmt_rollouts(base.mean)}): {status}"
        )
        passed = passed and not problems
    return RegressionVerdict(passed, lines)


class RegressionDetected(RuntimeError):
    """The rerun is worse than the accepted baseline beyond the tolerance (or there is no
    baseline to compare with); the message is the report."""


@dataclass(frozen=True)
class NightlyVerdict:
    """What the nightly decided: passed or not, against which baseline run, and the report text."""

    passed: bool
    baseline_run_id: str
    report: str

    def to_dict(self) -> dict:
        return {"passed": self.passed, "baseline_run_id": self.baseline_run_id, "report": self.report}


def nightly_verdict(client, experiment_id: str, config_name: str, current_run_id: str, target_cfg,
                    tolerance: RegressionTolerance, accept_if_no_baseline: bool) -> NightlyVerdict:
    """The rerun ``current_run_id`` (a comparison's parent run) against the newest accepted
    baseline of ``config_name``: the rerun is summarised against the *baseline's* target, so a
    weaker reference method cannot lower the bar; the verdict is tagged on the rerun
    (``pilotcommit.regression``) and saved as its ``nightly/regression.txt``. Without a baseline:
    this run becomes it (``accept_if_no_baseline``), else :class:`RegressionDetected` says so."""
    from pilotcommit import fingerprint, tracking
    from pilotcommit.analysis.reads import load_comparison_runs
    from pilotcommit.analysis.summary import summarize_comparison

    machine = tracking.comparison_fingerprint(client, current_run_id)
    baseline = tracking.find_accepted_baseline(
        client, experiment_id, config_name,
        fingerprint_key=fingerprint.fingerprint_key(machine) if machine else None,
    )
    if baseline is None:
        if not accept_if_no_baseline:
            raise RegressionDetected(f"no accepted baseline for configuration {config_name!r}; "
                                     "run `pilotcommit accept` on a comparison first")
        tracking.accept_baseline(client, current_run_id, note="first nightly run, no earlier baseline")
        return NightlyVerdict(True, current_run_id,
                              f"nightly regression: no accepted baseline for {config_name!r}; "
                              f"this run ({current_run_id}) is now the baseline")
    baseline_summary = summarize_comparison(
        load_comparison_runs(client, baseline.info.run_id, target_cfg.metric), target_cfg
    )
    current_summary = summarize_comparison(
        load_comparison_runs(client, current_run_id, target_cfg.metric), target_cfg,
        target_override=baseline_summary.target,
    )
    recorded = tracking.baseline_fingerprint(baseline)
    differences = (
        fingerprint.fingerprint_differences(recorded, machine)
        if recorded and machine
        else ["unknown: the baseline or the rerun recorded no machine fingerprint (runs from "
              "before fingerprints existed), so the baseline may come from other hardware"]
    )
    verdict = check_regression(current_summary, baseline_summary, tolerance, hardware_differences=differences)
    text = verdict.report() + f"\nbaseline run {baseline.info.run_id}, rerun {current_run_id}"
    client.set_tag(current_run_id, "pilotcommit.regression", "passed" if verdict.passed else "failed")
    client.set_tag(current_run_id, "pilotcommit.regression_baseline", baseline.info.run_id)
    client.set_tag(current_run_id, "pilotcommit.regression_same_hardware", str(not differences).lower())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "regression.txt"
        path.write_text(text + "\n")
        client.log_artifact(current_run_id, str(path), "nightly")
    return NightlyVerdict(verdict.passed, baseline.info.run_id, text)
