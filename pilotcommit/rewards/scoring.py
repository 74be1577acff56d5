"""Fill ``Rollout.correct`` and ``Rollout.reward`` from a reward function and the answers.

The glue between the engine's output and a pure reward function: it looks up
each rollout's ground truth by prompt id and writes, in place, the 0/1
accuracy (``correct``, what the allocation policies filter on) and the shaped
reward (``reward``, what the learner trains on: the accuracy plus the optional
overlong penalty of :func:`overlong_penalty`). It deliberately knows no answer
rule (those are pure functions in ``rewards.arith`` / ``rewards.math``) and
does not aggregate rewards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

from pilotcommit.types import RequestResult, Rollout

if TYPE_CHECKING:
    from pilotcommit.config import OverlongPenalty

# (completion text, ground truth) -> reward
RewardFn = Callable[[str, str], float]


def overlong_penalty(num_completion_tokens: int, *, start: int, length: int) -> float:
    """DAPO's soft overlong penalty: ``min(-(L - start) / length, 0)``.

    0 up to ``start`` response tokens, then falling linearly to -1 at
    ``start + length`` (and below, if responses may be longer still). The
    paper's 1.5B run uses ``start = length = 4096`` with an 8192-token cap.
    """
    if start < 1 or length < 1:
        raise ValueError(f"overlong_penalty: start ({start}) and length ({length}) must be >= 1")
    return min(-(num_completion_tokens - start) / length, 0.0)


def score_rollouts(
    rollouts: Iterable[RequestResult | Rollout],
    answers: Mapping[str, str],
    reward_fn: RewardFn,
    *,
    overlong: "OverlongPenalty | None" = None,
) -> None:
    """Set ``correct`` and ``reward`` of every rollout (given directly or in ``RequestResult``s).

    ``correct`` is ``reward_fn``'s 0/1 verdict; ``reward`` is the same plus
    ``overlong_penalty`` when ``overlong`` is given. Raises ``KeyError``
    naming a prompt id that has no answer, before any rollout is modified, so
    a failed call leaves no half-scored batch behind; ``ValueError`` if the
    reward function returns anything but 0 or 1 (filtering needs an accuracy).
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
        correct = float(reward_fn(rollout.text, answers[rollout.prompt_id]))
        if correct not in (0.0, 1.0):
            raise ValueError(
                f"score_rollouts: the reward function returned {correct} for a rollout of prompt "
                f"{rollout.prompt_id!r}; it must return 0.0 or 1.0 (the accuracy)"
            )
        reward = correct
        if overlong is not None:
            reward += overlong_penalty(
                rollout.num_completion_tokens, start=overlong.start, length=overlong.length
            )
        rollout.correct = correct
        rollout.reward = reward
