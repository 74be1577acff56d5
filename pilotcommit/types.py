"""Typed records that cross module boundaries.

The allocation policies, the rollout engines, the rewards and the learner talk
to each other only through these dataclasses. They are plain Python (no torch)
so that ``pilotcommit.allocation`` stays importable and testable without a
model; token ids and log-probs are lists, converted to tensors by the learner.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from enum import Enum


class RolloutKind(str, Enum):
    """Why a rollout was generated: a pilot, a commit, or uniform (GRPO / DAPO)."""

    PILOT = "pilot"
    COMMIT = "commit"
    UNIFORM = "uniform"


@dataclass(frozen=True)
class RolloutRequest:
    """Ask the engine for ``count`` samples of one prompt."""

    prompt_id: str
    count: int
    kind: RolloutKind


@dataclass
class Rollout:
    """One sampled completion, with what the learner needs to train on it.

    ``correct`` (the 0/1 accuracy of the answer) and ``reward`` (what the
    learner trains on: the accuracy plus any shaping such as the overlong
    penalty) are filled after generation by
    :func:`pilotcommit.rewards.score_rollouts`. The allocation policies read
    only ``prompt_id``, ``kind`` and ``correct``: filtering is on accuracy
    (ALGORITHMS.md; the reference filters on ``acc``), so a correct but
    overlong rollout still counts as correct there.
    """

    prompt_id: str
    kind: RolloutKind
    prompt_token_ids: list[int]
    completion_token_ids: list[int]
    # log-probability of each completion token under the sampling policy (len == completion)
    sampler_logprobs: list[float]
    text: str
    finish_reason: str  # "stop" (EOS) or "length"
    reward: float = float("nan")
    correct: float = float("nan")  # 1.0 for a correct final answer, 0.0 otherwise
    # training step of the policy that sampled it (for staleness diagnostics)
    policy_step: int = 0

    @property
    def num_completion_tokens(self) -> int:
        return len(self.completion_token_ids)


@dataclass(frozen=True)
class RequestResult:
    """The rollouts the engine produced for one request (``len == request.count``)."""

    request: RolloutRequest
    rollouts: list[Rollout]


@dataclass
class Group:
    """All rollouts of one prompt that are trained on together (one advantage normalisation)."""

    group_id: int
    prompt_id: str
    rollouts: list[Rollout]
    # steps since the oldest rollout of the group was sampled (0 for fresh groups)
    staleness: int = 0

    @property
    def rewards(self) -> list[float]:
        return [r.reward for r in self.rollouts]

    @property
    def correct(self) -> list[float]:
        return [r.correct for r in self.rollouts]


@dataclass
class TrainBatch:
    """A complete training batch: ``train_batch_size`` groups of ``n`` rollouts each."""

    step: int
    groups: list[Group]
    # per-step allocation metrics (names of DESIGN.md: rollouts/*, alloc/*)
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def rollouts(self) -> list[Rollout]:
        return [r for g in self.groups for r in g.rollouts]


@dataclass
class EvalRecord:
    """The evaluation after ``step`` training steps, when ``cumulative_rollouts`` were spent."""

    step: int
    cumulative_rollouts: int
    metrics: dict[str, float]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> "EvalRecord":
        return cls(int(data["step"]), int(data["cumulative_rollouts"]), dict(data["metrics"]))


@dataclass
class LoopState:
    """Counters of the training loop itself (the policy and learner keep their own state); a
    checkpoint holds it (its record name there is ``_LoopState``, as runs from before it moved
    here wrote it)."""

    steps: int = 0
    generated_tokens: int = 0
    eval_history: list[EvalRecord] = field(default_factory=list)
    evaluations: int = 0
    # last observed pass rate of every training prompt sampled so far (for histograms)
    train_pass_rates: dict[str, tuple[float, int]] = field(default_factory=dict)
    timings: dict[str, list[float]] = field(default_factory=lambda: {"generate_s": [], "learn_s": []})
