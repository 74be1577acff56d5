"""The epoch-wise stream of training prompts that every allocation policy draws from.

Each epoch visits the active prompts once in a seeded random order. Evictions
(Pilot-Commit's all-correct prompts) are recorded during an epoch and applied
at the next epoch boundary, so they never change the order of the epoch in
progress. Rounds take a fixed number of prompts; when fewer remain, the epoch
ends and the remainder is skipped (``drop_last``, as in the reference code's
data loader), so every round and every method sees full batches.

The order of epoch ``e`` is a pure function of ``(seed, e, active prompts)``;
the stream's state is therefore just counters and the eviction sets.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class PromptStream:
    def __init__(self, prompt_ids: Sequence[str], *, seed: int) -> None:
        ids = list(prompt_ids)
        if not ids:
            raise ValueError("the training set has no prompts")
        seen: set[str] = set()
        duplicates = sorted({p for p in ids if p in seen or seen.add(p)})  # type: ignore[func-returns-value]
        if duplicates:
            raise ValueError(f"duplicate prompt ids in the training set: {duplicates[:10]}")
        self._ids = ids
        self._seed = int(seed)
        self.epoch = 0
        self.position = 0
        self.evicted: set[str] = set()
        self.pending_evictions: set[str] = set()
        self._order = self._epoch_order()

    # ------------------------------------------------------------------ queries
    @property
    def num_prompts(self) -> int:
        return len(self._ids)

    @property
    def num_active(self) -> int:
        return len(self._order)

    @property
    def remaining_in_epoch(self) -> int:
        return len(self._order) - self.position

    @property
    def evicted_total(self) -> int:
        """Prompts marked for eviction so far, applied or waiting for the epoch boundary."""
        return len(self.evicted) + len(self.pending_evictions)

    # ------------------------------------------------------------------ actions
    def take(self, count: int) -> list[str] | None:
        """The next ``count`` prompts of this epoch, or None if fewer remain."""
        if count > self.remaining_in_epoch:
            return None
        chunk = self._order[self.position : self.position + count]
        self.position += count
        return chunk

    def mark_evicted(self, prompt_id: str) -> None:
        if prompt_id not in self.evicted:
            self.pending_evictions.add(prompt_id)

    def next_epoch(self) -> None:
        self.evicted |= self.pending_evictions
        self.pending_evictions = set()
        self.epoch += 1
        self.position = 0
        self._order = self._epoch_order()

    def _epoch_order(self) -> list[str]:
        active = [p for p in self._ids if p not in self.evicted]
        rng = np.random.default_rng([self._seed, self.epoch])
        return [active[i] for i in rng.permutation(len(active))]

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {
            "seed": self._seed,
            "epoch": self.epoch,
            "position": self.position,
            "evicted": sorted(self.evicted),
            "pending_evictions": sorted(self.pending_evictions),
        }

    def load_state_dict(self, state: dict) -> None:
        if state["seed"] != self._seed:
            raise ValueError(
                f"prompt stream state was saved with seed {state['seed']}, this run uses {self._seed}"
            )
        unknown = (set(state["evicted"]) | set(state["pending_evictions"])) - set(self._ids)
        if unknown:
            raise ValueError(
                f"prompt stream state names prompts absent from the data: {sorted(unknown)[:10]}"
            )
        self.epoch = int(state["epoch"])
        self.evicted = set(state["evicted"])
        self.pending_evictions = set(state["pending_evictions"])
        self._order = self._epoch_order()
        self.position = int(state["position"])
