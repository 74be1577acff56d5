"""Pilot-Commit's replay buffer of informative prompts and their pilot rollouts.

Entries are keyed by prompt and tagged with the training step whose sampling
rounds piloted them. The buffer is epoch-scoped (emptied at each epoch end by
the policy) and staleness-limited (entries more than ``max_off_steps`` steps
old are flushed). Entries are ranked by the spread of their pilots' 0/1
accuracy (``Rollout.correct``), never of the shaped reward. It has no size
limit: in the reference code the limit is never enforced, and the staleness
flush already bounds the size to about ``(max_off_steps + 1) * informative
prompts per step``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from pilotcommit.types import Rollout

BufferSampling = Literal["max_variance", "random", "most_recent"]


@dataclass
class BufferEntry:
    prompt_id: str
    pilots: list[Rollout]
    step: int  # index of the training step being built when the pilots were sampled
    order: int  # insertion counter: the recency tie-break within a step

    @property
    def correct(self) -> list[float]:
        """The pilots' 0/1 accuracy (not their shaped rewards)."""
        return [r.correct for r in self.pilots]

    @property
    def correct_std(self) -> float:
        """Std of the pilots' accuracy: ``sqrt(p (1 - p))``, largest at pass rate 0.5."""
        return float(np.std(self.correct))

    @property
    def pass_rate(self) -> float:
        return float(np.mean(self.correct))


class ReplayBuffer:
    def __init__(self) -> None:
        self._entries: dict[str, BufferEntry] = {}
        self._next_order = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, prompt_id: str) -> bool:
        return prompt_id in self._entries

    @property
    def entries(self) -> list[BufferEntry]:
        return list(self._entries.values())

    def add(self, prompt_id: str, pilots: Sequence[Rollout], *, step: int) -> None:
        if prompt_id in self._entries:
            raise ValueError(f"prompt {prompt_id!r} is already in the replay buffer")
        self._entries[prompt_id] = BufferEntry(prompt_id, list(pilots), step, self._next_order)
        self._next_order += 1

    def take(self, count: int, strategy: BufferSampling, rng: np.random.Generator) -> list[BufferEntry]:
        """Remove and return ``count`` entries chosen by ``strategy``."""
        count = min(count, len(self._entries))
        if count <= 0:
            return []
        entries = self.entries  # insertion order: deterministic input for every strategy
        if strategy == "max_variance":
            chosen = sorted(entries, key=lambda e: (-e.correct_std, -e.step, -e.order))[:count]
        elif strategy == "most_recent":
            chosen = sorted(entries, key=lambda e: (-e.step, -e.order))[:count]
        elif strategy == "random":
            picks = rng.choice(len(entries), size=count, replace=False)
            chosen = [entries[i] for i in picks]
        else:
            raise ValueError(f"unknown buffer sampling strategy {strategy!r}")
        for entry in chosen:
            del self._entries[entry.prompt_id]
        return chosen

    def flush_stale(self, *, current_step: int, max_off_steps: int) -> int:
        """Drop entries piloted more than ``max_off_steps`` steps before ``current_step``."""
        stale = [p for p, e in self._entries.items() if current_step - e.step > max_off_steps]
        for prompt_id in stale:
            del self._entries[prompt_id]
        return len(stale)

    def clear(self) -> int:
        dropped = len(self._entries)
        self._entries.clear()
        return dropped

    def state_dict(self) -> dict:
        return {"entries": list(self._entries.values()), "next_order": self._next_order}

    def load_state_dict(self, state: dict) -> None:
        self._entries = {e.prompt_id: e for e in state["entries"]}
        self._next_order = int(state["next_order"])


def select_max_variance_pilots(pilots: Sequence[Rollout], count: int) -> list[Rollout]:
    """``count`` of the pilots with the largest accuracy variance: half correct, half wrong.

    With ``c`` correct and ``w`` wrong pilots available, take ``k`` correct and
    ``count - k`` wrong with ``k`` as close to ``count / 2`` as the supply allows
    (rounding down for odd counts). Within each class the earliest sampled are
    kept, so the choice is deterministic. Order of the result: original order.
    """
    if count > len(pilots):
        raise ValueError(f"cannot keep {count} of {len(pilots)} pilot rollouts")
    correct = [i for i, r in enumerate(pilots) if r.correct == 1.0]
    wrong = [i for i, r in enumerate(pilots) if r.correct != 1.0]
    k = min(max(count // 2, count - len(wrong)), len(correct))
    keep = set(correct[:k]) | set(wrong[: count - k])
    return [r for i, r in enumerate(pilots) if i in keep]

