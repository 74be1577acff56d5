"""Pilot-Commit (ALGORITHMS.md, "Pilot-Commit", rules 1-8).

One sampling round pilots ``gen_batch_size`` new prompts with ``n_pilot``
rollouts each and, in the same generation call, commits ``n_commit`` rollouts
to up to ``train_batch_size - groups in batch`` prompts taken out of the
replay buffer. Pilot pass rates classify the new prompts: informative ones
enter the buffer (never committed in the round that piloted them, because
commits are chosen when the round is planned); too-hard ones are deferred to
the next epoch; too-easy ones are skipped, and all-correct ones are evicted
from the next epoch on. Pass rates are of the rollouts' 0/1 accuracy
(``Rollout.correct``), never of the shaped reward: with the overlong penalty
on, a correct but long pilot still counts as correct, as in the reference
(which filters on ``acc``).

Where this departs from the reference code, deliberately:
- Staleness: the buffer is flushed right after the step counter advances, so
  an entry is committed at most ``max_off_steps`` steps after its pilots were
  sampled. The reference samples before flushing, which lets an entry through
  one step past the limit.
- Running out of rounds raises :class:`RoundsExhaustedError` with a message
  that says what to change, instead of crashing on an empty batch.

As in the reference, a partial batch discarded at an epoch's end also resets
the round count of the step being built (the reference resets its per-step
metrics, ``num_gen_batches`` included): ``max_num_gen_batches`` limits the
rounds that can still contribute to the batch. The rollouts of the discarded
rounds stay counted (``rollouts/sampled`` of the step, ``rollouts/cumulative``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pilotcommit.allocation.base import AllocationPolicy, pass_rate, register_policy
from pilotcommit.allocation.buffer import BufferEntry, ReplayBuffer, select_max_variance_pilots
from pilotcommit.config import PilotCommitConfig
from pilotcommit.types import Group, RequestResult, RolloutKind, RolloutRequest


@register_policy
class PilotCommitPolicy(AllocationPolicy):
    name = "pilot_commit"
    config: PilotCommitConfig

    def __init__(self, config: PilotCommitConfig, prompt_ids: Sequence[str], *, seed: int) -> None:
        super().__init__(config, prompt_ids, seed=seed)
        self.buffer = ReplayBuffer()
        self.batch: list[Group] = []
        self._committing: dict[str, BufferEntry] = {}  # taken from the buffer for the planned round
        self._agreement: list[tuple[float, float]] = []  # (pilot pass rate, commit pass rate)

    # ------------------------------------------------------------------ classification
    def classify(self, p: float) -> str:
        """``informative``, ``too_hard`` or ``too_easy`` for a pilot pass rate ``p``."""
        return self.config.verdict(p)

    # ------------------------------------------------------------------ rounds
    def _plan_round(self) -> list[RolloutRequest]:
        c = self.config
        new_prompts = self._take_prompts(c.gen_batch_size)  # may end the epoch (empties the buffer)
        to_commit = min(c.train_batch_size - len(self.batch), len(self.buffer))
        chosen = self.buffer.take(to_commit, c.buffer_sampling, self.rng)
        self._committing = {e.prompt_id: e for e in chosen}
        pilots = [RolloutRequest(p, c.n_pilot, RolloutKind.PILOT) for p in new_prompts]
        commits = [RolloutRequest(e.prompt_id, c.n_commit, RolloutKind.COMMIT) for e in chosen]
        return pilots + commits

    def _observe_round(self, results: Sequence[RequestResult]) -> list[Group] | None:
        c = self.config
        for result in results:
            prompt_id = result.request.prompt_id
            if result.request.kind is RolloutKind.COMMIT:
                entry = self._committing.pop(prompt_id)
                pilots = entry.pilots
                if c.n_pilot_effective is not None:
                    pilots = select_max_variance_pilots(pilots, c.n_pilot_effective)
                rollouts = list(pilots) + list(result.rollouts)
                staleness = self.step - entry.step
                self.batch.append(Group(0, prompt_id, rollouts, staleness=staleness))
                self._agreement.append(
                    (entry.pass_rate, pass_rate([r.correct for r in result.rollouts]))
                )
                continue
            p = pass_rate([r.correct for r in result.rollouts])
            verdict = self.classify(p)
            if verdict == "informative":
                self.counters.informative += 1
                self.buffer.add(prompt_id, result.rollouts, step=self.step)
            elif verdict == "too_hard":
                self.counters.too_hard += 1  # deferred: stays in the data for the next epoch
            else:
                self.counters.too_easy += 1
                if c.evicts(p):
                    self.stream.mark_evicted(prompt_id)
        if self._committing:  # the plan and the results were checked against each other
            raise AssertionError(f"commit results missing for {sorted(self._committing)}")
        if len(self.batch) < c.train_batch_size:
            return None
        groups, self.batch = self.batch, []
        return groups

    def _on_step_finished(self) -> None:
        self.counters.stale_flushed += self.buffer.flush_stale(
            current_step=self.step, max_off_steps=self.config.max_off_steps
        )

    def _on_epoch_end(self) -> None:
        self.buffer.clear()
        self.counters.discarded_groups += len(self.batch)
        self.batch = []
        # the discarded rounds can no longer contribute to the batch: they must not use up
        # max_num_gen_batches of the next epoch's rounds (their rollouts stay counted)
        self.counters.rounds = 0
        self._agreement = []

    def _max_rounds(self) -> int:
        return self.config.max_num_gen_batches

    def _exhausted_message(self) -> str:
        c = self.config
        return (
            f"pilot_commit: step {self.step} has only {len(self.batch)} of {c.train_batch_size} "
            f"groups after max_num_gen_batches={c.max_num_gen_batches} sampling rounds of "
            f"{c.gen_batch_size} pilot prompts ({self.counters.informative} informative, "
            f"{self.counters.too_hard} too hard, {self.counters.too_easy} too easy): too few prompts "
            f"have a pilot pass rate in [{c.p_low}, {1 - c.p_high}]. Raise max_num_gen_batches or "
            "gen_batch_size, widen the pass band (p_low, p_high), or use data matched to the model."
        )

    def _extra_metrics(self, groups: list[Group]) -> dict[str, float]:
        pairs = np.array(self._agreement, dtype=float).reshape(-1, 2)
        self._agreement = []
        metrics: dict[str, float] = {"alloc/buffer_size": len(self.buffer)}
        if len(pairs):
            gap = np.abs(pairs[:, 0] - pairs[:, 1])
            metrics["alloc/pilot_commit_agreement"] = float(1.0 - gap.mean())
            metrics["alloc/pilot_pass_rate_mean"] = float(pairs[:, 0].mean())
            metrics["alloc/commit_pass_rate_mean"] = float(pairs[:, 1].mean())
        return metrics

    # ------------------------------------------------------------------ state
    def _subclass_state(self) -> dict:
        return {
            "buffer": self.buffer.state_dict(),
            "batch": self.batch,
            "committing": list(self._committing.values()),
            "agreement": self._agreement,
        }

    def _load_subclass_state(self, state: dict) -> None:
        self.buffer.load_state_dict(state["buffer"])
        self.batch = state["batch"]
        self._committing = {e.prompt_id: e for e in state["committing"]}
        self._agreement = [tuple(x) for x in state["agreement"]]
