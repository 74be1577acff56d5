"""Step-aware prediction: what a rollout budget buys in optimizer steps, and in progress.

The informative-group rate (pilotcommit/allocation/predict.py) says how many groups with a
gradient a method buys per rollout. The regime study (docs/regimes.md) found that this rate
did not rank the methods: on its task a training step on 32 groups of which 12 are informative
moved the policy almost as far as a step on 32 informative ones, so what a budget buys is
mostly *optimizer steps*. This module predicts per method, in closed form from the probe:

- **rollouts per training step** (the predictors' ``rollouts_per_step``) and **optimizer steps
  per training step** (the config: ``ExperimentConfig.optimizer_steps``, 1 to 6 here), so
  **rollouts per optimizer step**;
- **progress per training step** as ``optimizer_steps ** steps_exponent x informative_share **
  share_exponent`` (:class:`StepModel`), where the informative share is the trained batch's
  share of groups with reward variance (GRPO: 1 minus its zero-variance share; DAPO, GRESO and
  SPEED-RL: 1; Pilot-Commit: the share of its committed groups that are informative);
- and so **rollouts to a target, relative to the cheapest method**: ``rollouts_per_step /
  progress_per_step``, normalised. The recommendation ranks by that.

The two exponents are fitted (pilotcommit/analysis/step_fit.py) on the runs of the regime study
and the optimizer-step study, by how far each method's accuracy curve is ahead of the reference
method's at equal training steps; docs/regimes.md reports the fit and its leave-one-cell-out
accuracy beside the informative-group rate's. Like the rate, the model ignores learning during
training (the shares are the initial policy's) and how long the target is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pilotcommit.allocation.predict import CLEAR_EDGE, MethodPrediction


@dataclass(frozen=True)
class StepModel:
    """Progress of one training step: ``optimizer_steps ** steps_exponent x informative_share **
    share_exponent`` (relative units: only ratios between methods are used)."""

    share_exponent: float
    steps_exponent: float
    fitted_on: str = ""

    def progress_per_step(self, informative_share: float, optimizer_steps: int) -> float:
        if informative_share <= 0.0:
            return 0.0
        return optimizer_steps ** self.steps_exponent * informative_share ** self.share_exponent


# Fitted by `python -m pilotcommit.analysis.step_fit` (docs/regimes.md, "A predictor that counts
# optimizer steps"), on every cell of the regime study and of the optimizer-step study.
# share_exponent 0.257: a batch of 65% informative groups moves the policy 0.89x as far as an all-
# informative one; steps_exponent 0.045: 6 optimizer steps per batch instead of 4 add 2%.
STEP_MODEL = StepModel(share_exponent=0.257, steps_exponent=0.045,
                       fitted_on="the regime study's 6 cells and the optimizer-step study's 2 (docs/regimes.md)")


@dataclass(frozen=True)
class StepPrediction:
    """One method's step-aware prediction."""

    method: str
    rollouts_per_step: float
    optimizer_steps: int
    informative_share: float
    progress_per_step: float
    relative_rollouts_to_target: float  # 1.0 for the cheapest method; inf: makes no progress

    @property
    def rollouts_per_optimizer_step(self) -> float:
        return self.rollouts_per_step / self.optimizer_steps


def step_predictions(predictions: Sequence[MethodPrediction], optimizer_steps: Mapping[str, int],
                     model: StepModel = STEP_MODEL) -> list[StepPrediction]:
    """The step-aware prediction of every method that has a rollout count per step (a method
    whose steps fail predicts none and is left out)."""
    rows = []
    for pred in predictions:
        rollouts = pred.breakdown.get("rollouts_per_step")
        if not rollouts or pred.informative_groups_per_1k <= 0:
            continue
        share = pred.breakdown.get("informative_share", 1.0)
        steps = int(optimizer_steps[pred.method])
        rows.append((pred.method, float(rollouts), steps, share, model.progress_per_step(share, steps)))
    costs = [r / p if p > 0 else float("inf") for _, r, _, _, p in rows]
    cheapest = min(costs, default=float("inf"))
    return [
        StepPrediction(method, rollouts, steps, share, progress, cost / cheapest)
        for (method, rollouts, steps, share, progress), cost in zip(rows, costs, strict=True)
    ]


def recommend_by_steps(steps: Sequence[StepPrediction], exhausted: Sequence[str] = ()) -> str:
    """One line: the method with the fewest predicted rollouts to target. Within ``CLEAR_EDGE``
    of the runner-up there is no clear winner and the simplest configured method stays (GRPO
    when configured, found by label)."""
    ranked = sorted((s for s in steps if s.method not in exhausted), key=lambda s: s.relative_rollouts_to_target)
    if not ranked:
        return "no method is predicted to make progress"
    best = ranked[0]
    per_step = (f"{best.rollouts_per_optimizer_step:,.0f} rollouts per optimizer step, "
                f"{best.informative_share:.0%} of its groups informative")
    if len(ranked) == 1:
        return f"{best.method}: {per_step}"
    second = ranked[1]
    if second.relative_rollouts_to_target < CLEAR_EDGE * best.relative_rollouts_to_target:
        simplest = next((s.method for s in ranked if s.method.startswith("grpo")), best.method)
        return (f"no clear winner by optimizer steps: {best.method} and {second.method} within "
                f"{CLEAR_EDGE - 1:.0%} in predicted rollouts to target; keep the simpler {simplest}")
    return (f"use {best.method}: {second.relative_rollouts_to_target:.2f}x fewer predicted rollouts to "
            f"target than {second.method}; {per_step}")
