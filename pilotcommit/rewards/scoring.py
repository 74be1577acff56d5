"""Fill ``Rollout.reward`` from a reward function and the prompts' answers.

The glue between the engine's output and a pure reward function: it looks up
each rollout's ground truth by prompt id and writes the float reward in place.
It deliberately knows no reward rule (those are pure functions in
``rewards.arith`` / ``rewards.math``) and does not aggregate rewards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from pilotcommit.types import RequestResult, Rollout

# (completion text, ground truth) -> reward
RewardFn = Callable[[str, str], float]


def score_rollouts(
    rollouts: Iterable[RequestResult | Rollout],
    answers: Mapping[str, str],
    reward_fn: RewardFn,
) -> None:
    """Set ``reward`` of every rollout (given directly or inside ``RequestResult``s).

    Raises ``KeyError`` naming a prompt id that has no answer, before any
    rollout is modified, so a failed call leaves no half-scored batch behind.
    """
    flat: list[Rollout] = []
    for item in rollouts:
        if isinstance(item, RequestResult):
            flat.extend(item.rollouts)
        elif isinstance(item, Rollout):
            flat.append(item)
        else:
            raise TypeError(
                f"score_rollouts: expected RequestResult or Rollout, got {type(item).__name__}"
            )
    missing = sorted({r.prompt_id for r in flat if r.prompt_id not in answers})
    if missing:
        shown = ", ".join(repr(p) for p in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise KeyError(f"score_rollouts: no answer for prompt id(s) {shown}{more}")
    for rollout in flat:
        rollout.reward = float(reward_fn(rollout.text, answers[rollout.prompt_id]))
