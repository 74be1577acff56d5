"""The policy-gradient update shared by GRPO, DAPO and Pilot-Commit.

:class:`Learner` holds the state of learning (the model, AdamW, the warm-up
schedule) and turns one :class:`~pilotcommit.types.TrainBatch` into optimizer
steps. It does not know which allocation policy built the batch: it sees
groups and their rewards only.

What one training step does (ALGORITHMS.md, "Shared learner"):

1. Pack every rollout as ``prompt + completion`` (right-padded) with a mask
   over the completion tokens. Only those positions are scored: their hidden
   states go through the output layer in chunks (``learner.logprob_chunk_size``,
   pilotcommit/learner/logprobs.py), so no ``[B, T, vocab]`` tensor exists.
   Micro-batches are either ``micro_batch_size`` padded rows (the default), or,
   with ``learner.max_tokens_per_micro_batch`` set, packed: consecutive rows of
   the seeded order up to that many tokens, concatenated into one row without
   padding (pilotcommit/learner/packing.py). Either way the loss, old log-probs
   and metrics are computed in the padded ``[B, T-1]`` layout, so the two paths
   differ only inside the model's forward; the update is the same up to float
   rounding (tests/unit/test_packing.py). A rollout longer than the token
   budget is refused by name (the config check makes it unreachable from a run).
2. Advantages: one scalar per rollout from its group's rewards.
3. Old log-probs are the current weights' log-probs just before the update,
   for every mini-batch (so the first mini-batch's ratio is exactly 1 and the
   later mini-batches' ratios measure how far the earlier optimizer steps moved
   the policy: that is what the clipping acts on); the sampler's own log-probs
   are only a diagnostic. The first mini-batch takes them from its gradient
   forward pass itself (detached): no optimizer step happens in between, so
   they are the same numbers (bitwise on CPU), and a separate pass would cost
   about a quarter of the learner's time with one mini-batch. The later
   mini-batches get a no-grad pass before the first optimizer step.
4. The batch is split into ``optimizer_steps_per_batch`` equal mini-batches
   (default 1; a batch that does not divide is a config error) in a seeded
   order (``minibatch_rule: equal``; ``reference`` cuts verl's mini-batches
   instead: :func:`reference_minibatches`); each mini-batch is one AdamW step after gradient accumulation over
   micro-batches, with the token-mean normaliser of the whole mini-batch so
   accumulation equals the full-batch gradient. A mini-batch whose rows all
   have zero advantage still takes its AdamW step, with zero gradients (as
   verl): the moments decay and weight decay applies.
5. Log-probs are of ``logits / temperature`` with the rollouts' sampling
   temperature (as verl, and as vLLM's processed log-probs), so the ratio
   compares the same distributions at any temperature.
6. The learning rate follows verl's constant schedule with linear warm-up:
   0 in the first training step, the full lr from step ``warmup_steps`` on.

Deliberate departure from the reference code, by default: the number of
optimizer steps per training step is the same for every method (the reference
scales the mini-batch by ``n_commit``, giving Pilot-Commit 6 steps versus
GRPO's 4). ``learner.minibatch_rule: reference`` reproduces the reference's
rule, opt-in, so the difference can be measured (docs/regimes.md).

Rollouts whose advantage is exactly zero (groups with equal rewards) carry no
gradient; they still count in the token-mean denominator, as in the paper, but
their forward and backward passes are skipped: that is the same gradient for
less compute.

Not here: rollout generation, rewards, sharding across processes (see
``pilotcommit.learner.distributed``), checkpoint files (``pilotcommit.checkpoint``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from pilotcommit.config import LearnerConfig
from pilotcommit.learner.advantages import group_advantages
from pilotcommit.learner.logprobs import completion_logprobs_from_model
from pilotcommit.learner.loss import policy_loss
from pilotcommit.learner.packing import enable_packed_attention, token_budget_micro_batches
from pilotcommit.types import RolloutKind, TrainBatch


class NonFiniteLossError(FloatingPointError):
    """The loss or the gradient norm of a training step was NaN or infinite."""


@dataclass
class PackedBatch:
    """Rollouts packed as right-padded ``prompt + completion`` sequences."""

    input_ids_BT: Tensor
    attention_mask_BT: Tensor
    # completion_mask_BT[b, t] = 1 where token t+1 of row b is a completion token: aligned with
    # the logits at position t, which predict token t+1
    completion_mask_BT: Tensor
    advantages_B: Tensor
    sampler_logp_BT: Tensor  # sampler log-probs at the same positions as completion_mask_BT

    @property
    def num_completion_tokens(self) -> int:
        return int(self.completion_mask_BT.sum())


def pack_batch(batch: TrainBatch, pad_id: int, config: LearnerConfig) -> PackedBatch:
    rollouts = batch.rollouts
    if not rollouts:
        raise ValueError(f"training step {batch.step}: empty batch")
    rewards_N = torch.tensor([r.reward for r in rollouts], dtype=torch.float32)
    group_ids_N = torch.tensor([g.group_id for g in batch.groups for _ in g.rollouts])
    advantages_N = group_advantages(
        rewards_N, group_ids_N, std_normalize=config.advantage_std_normalize, eps=config.advantage_eps
    )
    width = max(len(r.prompt_token_ids) + len(r.completion_token_ids) for r in rollouts)
    n = len(rollouts)
    input_ids_BT = torch.full((n, width), pad_id, dtype=torch.long)
    attention_mask_BT = torch.zeros((n, width), dtype=torch.long)
    completion_mask_BT = torch.zeros((n, width - 1), dtype=torch.float32)
    sampler_logp_BT = torch.zeros((n, width - 1), dtype=torch.float32)
    for row, r in enumerate(rollouts):
        prompt_len, comp_len = len(r.prompt_token_ids), len(r.completion_token_ids)
        if comp_len == 0:
            continue
        input_ids_BT[row, : prompt_len + comp_len] = torch.tensor(
            r.prompt_token_ids + r.completion_token_ids
        )
        attention_mask_BT[row, : prompt_len + comp_len] = 1
        completion_mask_BT[row, prompt_len - 1 : prompt_len - 1 + comp_len] = 1.0
        sampler_logp_BT[row, prompt_len - 1 : prompt_len - 1 + comp_len] = torch.tensor(
            r.sampler_logprobs, dtype=torch.float32
        )
    return PackedBatch(input_ids_BT, attention_mask_BT, completion_mask_BT, advantages_N, sampler_logp_BT)


def _check_sequence_lengths(batch: TrainBatch, budget: int) -> None:
    """A rollout longer than the micro-batch token budget is refused, by name (a budget is a
    memory bound; the config check makes this unreachable for sequences the rollout settings
    can produce: prompt limit + max_new_tokens <= budget)."""
    for r in batch.rollouts:
        tokens = len(r.prompt_token_ids) + len(r.completion_token_ids)
        if tokens > budget:
            raise ValueError(
                f"training step {batch.step}: a rollout of prompt {r.prompt_id!r} has {tokens} tokens "
                f"({len(r.prompt_token_ids)} prompt + {len(r.completion_token_ids)} completion), more "
                f"than learner.max_tokens_per_micro_batch={budget}"
            )


def reference_minibatches(kinds: list[RolloutKind], size: int) -> list[tuple[Tensor, float]]:
    """verl's mini-batches of a batch whose rows have rollout kinds ``kinds``: ``(rows, scale)``.

    The reference trainer concatenates the pilots of every trained group before the other
    rollouts (its batch is the pilot batch, then the commit batch), and cuts that order into
    consecutive mini-batches of ``size`` sequences (``ppo_mini_batch_size x rollout.n``),
    without shuffling. The last one may be partial: verl keeps it, and its loss is scaled by
    ``rows / size`` (its gradient-accumulation factor counts the configured mini-batch), so
    ``scale`` is 1 for full mini-batches and ``rows / size`` for a partial last one. With 128
    groups of 16 pilots + 48 commits and 32 prompts per mini-batch (1,536 sequences): five full
    mini-batches and one of 512 at scale 1/3, six optimizer steps.
    """
    if size < 1:
        raise ValueError(f"reference_minibatches: the mini-batch size must be >= 1, got {size}")
    pilots = [i for i, kind in enumerate(kinds) if kind == RolloutKind.PILOT]
    others = [i for i, kind in enumerate(kinds) if kind != RolloutKind.PILOT]
    order_N = torch.tensor(pilots + others, dtype=torch.long)
    return [(rows, len(rows) / size) for rows in order_N.split(size)]


def warmup_constant_lr(step: int, warmup_steps: int) -> float:
    """Multiplier of the peak lr in training step ``step`` (0-based): linear warm-up, then constant.

    verl's ``get_constant_schedule_with_warmup``, which the reference uses: ``step / warmup``
    while ``step < warmup`` (so the first training step runs at lr 0 and only fills AdamW's
    moments), the full lr from step ``warmup`` on. The schedule advances once per training step,
    not per optimizer step, as verl's.
    """
    if step < warmup_steps:
        return step / warmup_steps
    return 1.0


class Learner:
    """AdamW policy-gradient learner over a causal LM (a ``transformers`` model)."""

    def __init__(
        self, model: torch.nn.Module, config: LearnerConfig, *, pad_id: int, temperature: float = 1.0,
        minibatch_sequences: int | None = None,
    ) -> None:
        if not temperature > 0:
            raise ValueError(
                f"Learner: the training temperature must be > 0 (rollout.temperature), got {temperature}"
            )
        if (config.minibatch_rule == "reference") != (minibatch_sequences is not None):
            raise ValueError(
                "Learner: minibatch_sequences (minibatch_prompts x the method's rollout.n, "
                "ExperimentConfig.minibatch_sequences) is required by minibatch_rule: reference "
                f"and only by it; got rule {config.minibatch_rule!r} with {minibatch_sequences}"
            )
        # the reference rule's mini-batch in sequences; None under the equal rule
        self.minibatch_sequences = minibatch_sequences
        self.model = model
        self.config = config
        self.pad_id = pad_id
        # the sampling temperature of the training rollouts: the learner's log-probs are of the
        # distribution the engine sampled from (logits / T), as verl's actor and vLLM's
        # processed log-probs; otherwise the PPO ratio is off whenever T != 1
        self.temperature = float(temperature)
        self.optimizer = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad],
            lr=config.lr,
            betas=config.betas,
            weight_decay=config.weight_decay,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: warmup_constant_lr(s, config.warmup_steps)
        )
        self.device = next(model.parameters()).device
        # packed micro-batches (one row, no padding) formed by a token budget; None: padded
        # micro-batches of micro_batch_size rows (module docstring, point 1)
        self.packing = config.max_tokens_per_micro_batch is not None
        if self.packing:
            enable_packed_attention(model)
        if config.gradient_checkpointing and hasattr(model, "gradient_checkpointing_enable"):
            model.gradient_checkpointing_enable()

    # ------------------------------------------------------------------ pieces
    def _autocast(self):
        if self.config.dtype == "bfloat16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return torch.autocast(device_type=self.device.type, enabled=False)

    def _logprobs(self, input_ids_BT: Tensor, attention_mask_BT: Tensor, mask_BT: Tensor) -> Tensor:
        """Float32 log-probs ``[B, T-1]`` of the tokens where ``mask_BT`` is set (0 elsewhere):
        only completion positions are projected onto the vocabulary, in chunks of
        ``config.logprob_chunk_size`` (pilotcommit/learner/logprobs.py)."""
        with self._autocast():
            return completion_logprobs_from_model(
                self.model, input_ids_BT, attention_mask_BT, mask_BT,
                chunk_size=self.config.logprob_chunk_size, temperature=self.temperature,
                packed=self.packing,
            )

    def _rows_to_device(self, packed: PackedBatch, rows: Tensor):
        def take(x: Tensor) -> Tensor:
            return x[rows].to(self.device)

        # trim right padding shared by the selected rows
        width = int(packed.attention_mask_BT[rows].sum(dim=1).max())
        ids, att = take(packed.input_ids_BT)[:, :width], take(packed.attention_mask_BT)[:, :width]
        mask = take(packed.completion_mask_BT)[:, : width - 1]
        return ids, att, mask

    @torch.no_grad()
    def _old_logprobs(self, packed: PackedBatch, micro: list[Tensor]) -> list[Tensor]:
        """The current weights' log-probs of each micro-batch's rows (no gradient)."""
        old = []
        for rows in micro:
            ids, att, mask = self._rows_to_device(packed, rows)
            old.append(self._logprobs(ids, att, mask))
        return old

    # ------------------------------------------------------------------ hooks for sharding
    # A single process trains on every row of a mini-batch. DistributedLearner overrides these
    # three hooks to train on its own slice, sum the normaliser and metrics over ranks and pad
    # micro-batch counts; the update itself (below) is written once.
    def _plan_minibatch(
        self, packed: PackedBatch, mini_rows: Tensor, step: int
    ) -> tuple[float, list[Tensor], int]:
        """``(normaliser, micro-batches, padding)`` for one mini-batch.

        The normaliser is the token count (or sequence count) of the WHOLE mini-batch, so
        accumulating micro-batch gradients gives the full-batch gradient. Rows with zero
        advantage have zero gradient: their compute is skipped, but they stay in the normaliser
        (the loss is the token mean over the whole mini-batch, as in the paper). The last
        ``padding`` micro-batches are placeholders that must run (collectives) but count for
        nothing; a single process has none.
        """
        mask = packed.completion_mask_BT[mini_rows]
        if self.config.loss_aggregation == "token_mean":
            normalizer = float(mask.sum())
        else:
            normalizer = float((mask.sum(dim=1) > 0).sum())
        active = mini_rows[packed.advantages_B[mini_rows] != 0]
        return normalizer, self._micro_batches(packed, active), 0

    def _micro_batches(self, packed: PackedBatch, rows: Tensor) -> list[Tensor]:
        """``rows`` (in order) as micro-batches: ``micro_batch_size`` rows each when padded,
        at most ``max_tokens_per_micro_batch`` tokens each when packed."""
        if not len(rows):
            return []
        if not self.packing:
            return list(rows.split(self.config.micro_batch_size))
        return token_budget_micro_batches(
            rows, packed.attention_mask_BT[rows].sum(dim=1), self.config.max_tokens_per_micro_batch
        )

    def _any_rank(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any process (here: this one)."""
        return flag

    def _sum_over_ranks(self, values: list[float]) -> list[float]:
        """``values`` summed over processes (here: unchanged)."""
        return values

    # ------------------------------------------------------------------ the update
    def update(self, batch: TrainBatch, *, seed: int) -> dict[str, float]:
        """One training step on ``batch``; returns the ``loss/*``, ``grad/*`` and ``learner/*`` metrics."""
        config = self.config
        packed = pack_batch(batch, self.pad_id, config)
        n = packed.input_ids_BT.shape[0]
        if self.packing:
            _check_sequence_lengths(batch, config.max_tokens_per_micro_batch)
        if self.minibatch_sequences is not None:  # verl's rule: pilots first, positional cuts
            cut = reference_minibatches([r.kind for r in batch.rollouts], self.minibatch_sequences)
            minibatches, scales = [rows for rows, _ in cut], [scale for _, scale in cut]
        else:
            # a seeded order (the same on every rank, so every rank sees the same mini-batches)
            order_N = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
            k = config.optimizer_steps_per_batch
            if n % k:  # the config check (ExperimentConfig) makes this unreachable from a run
                raise ValueError(
                    f"training step {batch.step}: {n} rollouts cannot be split into "
                    f"optimizer_steps_per_batch={k} equal mini-batches"
                )
            minibatches = list(order_N.tensor_split(k))  # k mini-batches of n / k rows each
            scales = [1.0] * k
        # a partial last mini-batch of the reference rule weighs rows / size: its token mean is
        # taken over size / rows times its own tokens (verl's normaliser, docs/algorithms.md)
        plans = [
            (normalizer / scale, micro, padding)
            for (normalizer, micro, padding), scale in zip(
                (self._plan_minibatch(packed, rows, batch.step) for rows in minibatches), scales, strict=True
            )
        ]
        self.model.train()
        # Old log-probs are the weights of the start of the step for EVERY mini-batch: the
        # first mini-batch takes them from its own gradient pass (module docstring, point 3);
        # the later ones need a no-grad pass now, before the first optimizer step moves the
        # weights (taking them later would make every ratio 1 and the clipping inert).
        old_later = [self._old_logprobs(packed, micro) for _, micro, _ in plans[1:]]
        old_per_minibatch: list[list[Tensor] | None] = [None, *old_later]
        # loss, clip*tokens, kl*tokens, ratio*tokens, tokens, trained rows, |old - sampler| logp sum,
        # dual-clip*tokens, -logp sum (the entropy estimate)
        totals = [0.0] * 9
        grad_norms = []
        for (normalizer, micro, padding), old in zip(plans, old_per_minibatch, strict=True):
            self.optimizer.zero_grad(set_to_none=True)
            nonfinite_loss: float | None = None
            for i, rows in enumerate(micro):
                is_padding = i >= len(micro) - padding
                ids, att, mask = self._rows_to_device(packed, rows)
                if is_padding:  # one real row with an empty mask: zero loss, same collectives
                    mask = torch.zeros_like(mask)
                logp_BT = self._logprobs(ids, att, mask)
                old_BT = logp_BT.detach() if old is None else old[i]
                out = policy_loss(
                    logp_BT,
                    old_BT,
                    packed.advantages_B[rows].to(self.device),
                    mask,
                    eps_low=config.eps_low,
                    eps_high=config.eps_high,
                    clip_ratio_c=config.clip_ratio_c,
                    aggregation=config.loss_aggregation,
                    normalizer=max(normalizer, 1.0),
                )
                if not torch.isfinite(out.loss) and nonfinite_loss is None:
                    nonfinite_loss = float(out.loss)
                # backward even on a non-finite loss: sharded ranks must all run the same
                # collectives; the step is refused below, before the optimizer moves
                out.loss.backward()
                if is_padding:
                    continue
                # engine vs learner disagreement (a different kernel, dtype or stale weights)
                sampler_BT = packed.sampler_logp_BT[rows].to(self.device)[:, : mask.shape[1]]
                totals[6] += float(((old_BT - sampler_BT).abs() * mask).sum())
                tokens = float(out.num_tokens)
                totals[0] += float(out.loss.detach())
                totals[1] += float(out.clip_fraction) * tokens
                totals[2] += float(out.approx_kl) * tokens
                totals[3] += float(out.ratio_mean) * tokens
                totals[4] += tokens
                totals[5] += len(rows)
                totals[7] += float(out.dual_clip_fraction) * tokens
                totals[8] += float((-old_BT * mask).sum())
            # A mini-batch of zero-advantage rows only (or parameters the loss never reached)
            # leaves gradients None, and AdamW would skip those parameters: no moment update, no
            # weight decay. verl steps with zero gradients there; so do we.
            for param in self.model.parameters():
                if param.requires_grad and param.grad is None:
                    param.grad = torch.zeros_like(param)
            if self._any_rank(nonfinite_loss is not None):
                self.optimizer.zero_grad(set_to_none=True)
                value = "not finite on another rank" if nonfinite_loss is None else nonfinite_loss
                raise NonFiniteLossError(f"training step {batch.step}: loss is {value}")
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
            if hasattr(grad_norm, "full_tensor"):  # a DTensor: the global norm over all shards
                grad_norm = grad_norm.full_tensor()
            if not torch.isfinite(grad_norm):
                self.optimizer.zero_grad(set_to_none=True)
                raise NonFiniteLossError(f"training step {batch.step}: gradient norm is {float(grad_norm)}")
            grad_norms.append(float(grad_norm))
            self.optimizer.step()
        lr = self.optimizer.param_groups[0]["lr"]  # the lr this step used (logged as verl does)
        self.scheduler.step()
        self.model.eval()
        loss, clip, kl, ratio, tokens_trained, trained_rows, sampler_gap, dual_clip, neg_logp = (
            self._sum_over_ranks(totals)
        )
        tokens = max(tokens_trained, 1.0)
        # the policy's per-token entropy (verl's name), estimated as the mean -log pi of the
        # sampled tokens it trains on at the step's start (E[-log p(x)] = H for x ~ p; verl
        # computes it exactly from the logits, which would cost a vocabulary-wide pass here);
        # absent from a step that trained no token (every group without an advantage)
        entropy = {"actor/entropy": neg_logp / tokens} if tokens_trained else {}
        return entropy | {
            "loss/policy": loss / max(len(minibatches), 1),
            "loss/clip_fraction": clip / tokens,
            "loss/dual_clip_fraction": dual_clip / tokens,
            "loss/approx_kl": kl / tokens,
            "loss/ratio_mean": ratio / tokens if tokens_trained else 1.0,
            "loss/sampler_logp_gap": sampler_gap / tokens,
            "grad/norm": float(max(grad_norms)) if grad_norms else 0.0,
            "learner/lr": lr,
            "learner/optimizer_steps": float(len(minibatches)),
            "learner/trained_sequences": float(trained_rows),
            "learner/skipped_zero_advantage": float(n - trained_rows),
            "learner/completion_tokens": float(packed.num_completion_tokens),
        }

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
