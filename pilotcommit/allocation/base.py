"""The allocation-policy state machine shared by GRPO, DAPO, Pilot-Commit, GRESO and SPEED-RL.

A policy decides which prompts get how many rollouts and which rollouts are
trained on. It never touches a model or an engine: the training loop asks it
for a plan, generates and scores the requested rollouts, and hands them back.

    batch = policy.ready_batch()            # a batch that needs no sampling, usually None
    while batch is None:
        requests = policy.plan()            # one sampling round
        results  = engine.generate(...)     # same order as requests, rewards set
        batch    = policy.observe(results)  # a full TrainBatch, or None: plan again

``ready_batch`` hands out a step built only from groups completed in earlier steps (SPEED-RL
carries its surplus of completed groups over, and trains on them without sampling, as the
reference does); for the other policies it is always None.

The base class owns the protocol checks (``plan`` and ``observe`` alternate;
results must answer the plan exactly), the epoch stream, the rollout
accounting and ``state_dict``/``load_state_dict``. Subclasses implement one
round of planning and observing.
"""

from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import numpy as np

from pilotcommit.allocation.stream import PromptStream
from pilotcommit.types import Group, RequestResult, RolloutKind, RolloutRequest, TrainBatch


class AllocationError(RuntimeError):
    """The policy cannot build a training batch (data exhausted, protocol misuse)."""


class RoundsExhaustedError(AllocationError):
    """A training step used up ``max_num_gen_batches`` sampling rounds with a short batch."""


@dataclass
class StepCounters:
    """Counters of the training step being built (reset when its batch is handed out)."""

    sampled: int = 0
    pilot: int = 0
    commit: int = 0
    uniform: int = 0
    rounds: int = 0
    informative: int = 0
    too_hard: int = 0
    too_easy: int = 0
    dropped_groups: int = 0  # zero-variance groups DAPO did not keep
    discarded_groups: int = 0  # kept groups thrown away (DAPO surplus, PC partial batch at epoch end)
    stale_flushed: int = 0
    epochs_ended: int = 0

    def add_rollouts(self, kind: RolloutKind, count: int) -> None:
        self.sampled += count
        if kind is RolloutKind.PILOT:
            self.pilot += count
        elif kind is RolloutKind.COMMIT:
            self.commit += count
        else:
            self.uniform += count


def pass_rate(correct: Sequence[float]) -> float:
    """Share of correct rollouts (``correct`` holds 0/1 accuracies)."""
    return float(np.mean(correct)) if len(correct) else float("nan")


def is_zero_variance(values: Sequence[float]) -> bool:
    return len(values) == 0 or max(values) == min(values)


class AllocationPolicy(ABC):
    """Base state machine; see the module docstring for the protocol."""

    name: ClassVar[str]

    def __init__(self, config: Any, prompt_ids: Sequence[str], *, seed: int) -> None:
        self.config = config
        self.seed = int(seed)
        self.stream = PromptStream(prompt_ids, seed=seed)
        self.rng = np.random.default_rng([self.seed, 0x5EED])
        self.step = 0  # training steps completed (= index of the step being built)
        self.cumulative_sampled = 0
        self.counters = StepCounters()
        self._pending: list[RolloutRequest] | None = None

    # ------------------------------------------------------------------ protocol
    def plan(self) -> list[RolloutRequest]:
        """Rollout requests of the next sampling round."""
        if self._pending is not None:
            raise AllocationError("plan() called twice: observe() the previous round's results first")
        requests = self._plan_round()
        if not requests:
            raise AllocationError(f"{self.name}: a sampling round planned no rollouts")
        self._pending = list(requests)
        return list(requests)

    def ready_batch(self) -> TrainBatch | None:
        """A full batch of groups completed earlier, needing no sampling round; else None."""
        if self._pending is not None:
            raise AllocationError("ready_batch() called between plan() and observe()")
        groups = self._ready_groups()
        return None if groups is None else self._finish_step(groups)

    def observe(self, results: Sequence[RequestResult]) -> TrainBatch | None:
        """Take the scored rollouts of the planned round; return a full batch when one is ready."""
        if self._pending is None:
            raise AllocationError("observe() called without a plan(): call plan() first")
        self._check_results(self._pending, results)
        self._pending = None
        self.counters.rounds += 1
        for result in results:
            self.counters.add_rollouts(result.request.kind, result.request.count)
            self.cumulative_sampled += result.request.count
        groups = self._observe_round(results)
        if groups is None:
            if self.counters.rounds >= self._max_rounds():
                raise RoundsExhaustedError(self._exhausted_message())
            return None
        return self._finish_step(groups)

    # ------------------------------------------------------------------ subclass hooks
    @abstractmethod
    def _plan_round(self) -> list[RolloutRequest]: ...

    @abstractmethod
    def _observe_round(self, results: Sequence[RequestResult]) -> list[Group] | None:
        """Consume one round; return the batch's groups once it is complete."""

    def _ready_groups(self) -> list[Group] | None:
        """A complete batch's groups that need no sampling (see ``ready_batch``)."""
        return None

    def _max_rounds(self) -> int:
        return math.inf  # type: ignore[return-value]

    def _exhausted_message(self) -> str:
        return f"{self.name}: sampling rounds exhausted"

    def _extra_metrics(self, groups: list[Group]) -> dict[str, float]:
        return {}

    def _on_step_finished(self) -> None:
        """Called after the step counter advanced (e.g. to flush stale buffer entries)."""

    def _on_epoch_end(self) -> None:
        """Called before the stream moves to the next epoch."""

    def _subclass_state(self) -> dict:
        return {}

    def _load_subclass_state(self, state: dict) -> None:
        pass

    # ------------------------------------------------------------------ helpers
    def _take_prompts(self, count: int) -> list[str]:
        """``count`` prompts of the current epoch, starting a new epoch when needed."""
        if count > self.stream.num_prompts:
            raise AllocationError(
                f"{self.name}: a round needs {count} prompts but the training set has only "
                f"{self.stream.num_prompts}; lower the batch size or use more data"
            )
        chunk = self.stream.take(count)
        if chunk is None:
            self._start_next_epoch()
            chunk = self.stream.take(count)
        if chunk is None:
            raise AllocationError(
                f"{self.name}: only {self.stream.num_active} of {self.stream.num_prompts} prompts "
                f"remain after {len(self.stream.evicted)} evictions, fewer than the {count} a round "
                "needs; lower gen_batch_size/train_batch_size, raise p_evict or use more data"
            )
        return chunk

    def _start_next_epoch(self) -> None:
        self._on_epoch_end()
        self.stream.next_epoch()
        self.counters.epochs_ended += 1

    def _finish_step(self, groups: list[Group]) -> TrainBatch:
        group_size = self.config.group_size
        for group_id, group in enumerate(groups):
            group.group_id = group_id
            if len(group.rollouts) != group_size:  # a broken invariant, not bad input
                raise AssertionError(f"group of {len(group.rollouts)} rollouts, expected {group_size}")
        rewards = [r.reward for g in groups for r in g.rollouts]
        correct = [r.correct for g in groups for r in g.rollouts]
        lengths = [len(r.completion_token_ids) for g in groups for r in g.rollouts]
        c = self.counters
        metrics: dict[str, float] = {
            "rollouts/sampled": c.sampled,
            "rollouts/pilot": c.pilot,
            "rollouts/commit": c.commit,
            "rollouts/uniform": c.uniform,
            "rollouts/trained": len(rewards),
            "rollouts/cumulative": self.cumulative_sampled,
            "alloc/rounds": c.rounds,
            "alloc/informative": c.informative,
            "alloc/too_hard": c.too_hard,
            "alloc/too_easy": c.too_easy,
            "alloc/dropped_groups": c.dropped_groups,
            "alloc/discarded_groups": c.discarded_groups,
            "alloc/stale_flushed": c.stale_flushed,
            "alloc/evicted_total": self.stream.evicted_total,
            "alloc/epoch": self.stream.epoch,
            "alloc/staleness_mean": float(np.mean([g.staleness for g in groups])),
            "reward/mean": float(np.mean(rewards)),  # shaped: what the learner trains on
            "reward/accuracy_mean": float(np.mean(correct)),
            "reward/zero_variance_groups": sum(is_zero_variance(g.rewards) for g in groups),
            # groups with a learning signal, the quantity pilotcommit probe predicts per rollout
            "reward/informative_groups": sum(not is_zero_variance(g.rewards) for g in groups),
            # the trained responses' lengths in tokens, under verl's names; clip_ratio: the share
            # cut at rollout.max_new_tokens (a real model's answers can be truncated)
            "response_length/mean": float(np.mean(lengths)),
            "response_length/max": float(max(lengths)),
            "response_length/clip_ratio": float(np.mean(
                [r.finish_reason == "length" for g in groups for r in g.rollouts])),
        }
        metrics.update(self._extra_metrics(groups))
        batch = TrainBatch(step=self.step, groups=groups, metrics=metrics)
        self.step += 1
        self.counters = StepCounters()
        self._on_step_finished()
        return batch

    @staticmethod
    def _check_results(planned: list[RolloutRequest], results: Sequence[RequestResult]) -> None:
        if len(results) != len(planned):
            raise ValueError(f"observe() got {len(results)} results for {len(planned)} planned requests")
        for i, (request, result) in enumerate(zip(planned, results)):
            if result.request != request:
                raise ValueError(f"result {i} answers {result.request}, but the plan asked for {request}")
            if len(result.rollouts) != request.count:
                raise ValueError(
                    f"result {i} (prompt {request.prompt_id!r}) has {len(result.rollouts)} rollouts, "
                    f"expected {request.count}"
                )
            for rollout in result.rollouts:
                if rollout.prompt_id != request.prompt_id:
                    raise ValueError(
                        f"result {i}: rollout of prompt {rollout.prompt_id!r} under request "
                        f"for {request.prompt_id!r}"
                    )
                if not math.isfinite(rollout.reward):
                    raise ValueError(
                        f"result {i} (prompt {request.prompt_id!r}): reward {rollout.reward} is not "
                        "finite; score every rollout before observe()"
                    )
                if rollout.correct not in (0.0, 1.0):
                    raise ValueError(
                        f"result {i} (prompt {request.prompt_id!r}): correct is {rollout.correct}, "
                        "not 0 or 1; score every rollout before observe() (the policies filter "
                        "on the 0/1 accuracy, not on the shaped reward)"
                    )

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """Everything needed to continue with identical future decisions (a deep copy)."""
        return copy.deepcopy(
            {
                "name": self.name,
                "seed": self.seed,
                "step": self.step,
                "cumulative_sampled": self.cumulative_sampled,
                "counters": asdict(self.counters),
                "pending": self._pending,
                "rng": self.rng.bit_generator.state,
                "stream": self.stream.state_dict(),
                "policy": self._subclass_state(),
            }
        )

    def load_state_dict(self, state: dict) -> None:
        if state["name"] != self.name:
            raise ValueError(f"state of policy {state['name']!r} cannot be loaded into {self.name!r}")
        if state["seed"] != self.seed:
            raise ValueError(f"state was saved with seed {state['seed']}, this policy uses {self.seed}")
        state = copy.deepcopy(state)
        self.step = int(state["step"])
        self.cumulative_sampled = int(state["cumulative_sampled"])
        known = {f.name for f in fields(StepCounters)}
        self.counters = StepCounters(**{k: v for k, v in state["counters"].items() if k in known})
        self._pending = state["pending"]
        self.rng.bit_generator.state = state["rng"]
        self.stream.load_state_dict(state["stream"])
        self._load_subclass_state(state["policy"])


# --------------------------------------------------------------------------- registry

POLICIES: dict[str, type[AllocationPolicy]] = {}


def register_policy(cls: type[AllocationPolicy]) -> type[AllocationPolicy]:
    if cls.name in POLICIES:
        raise ValueError(f"allocation policy {cls.name!r} registered twice")
    POLICIES[cls.name] = cls
    return cls


def make_policy(config: Any, prompt_ids: Sequence[str], *, seed: int) -> AllocationPolicy:
    """Build the policy named by ``config.name`` (a key of :data:`POLICIES`)."""
    try:
        cls = POLICIES[config.name]
    except KeyError:
        raise ValueError(
            f"unknown allocation method {config.name!r}; known: {sorted(POLICIES)}"
        ) from None
    return cls(config, prompt_ids, seed=seed)
