"""Supervised warm start: turn the random tiny model into the initial RL policy.

The model reads ``<bos>problem`` and is trained (cross-entropy, AdamW) to emit
``answer<eos>``; the loss covers the answer and EOS tokens only. The budget is a
number of optimizer steps, never wall time, so the same seed gives the same
checkpoint on any machine. The result is saved with ``save_pretrained`` (model
and tokenizer in one directory) and is what every RL method starts from.

The warm start is deliberately short: the embedded demo needs an initial
policy that is right on easy levels, partly right on the middle levels (pass
rates strictly between 0 and 1 at temperature 1) and wrong on the hardest, so
that RL has something to learn and the allocation methods have something to
choose between (docs/embedded_task.md).

``measure_pass_rates`` is a small sampler for measuring that spread. It is not
the project's rollout engine (``pilotcommit.rollout``) and it does not score
anything but an exact integer answer.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from pilotcommit.config import TinyModelConfig, WarmStartConfig
from pilotcommit.models.tiny import build_tiny_model, count_parameters


@dataclass(frozen=True)
class SFTBatch:
    """A right-padded supervised batch; ``labels_BT`` is -100 outside answer + EOS tokens."""

    input_ids_BT: torch.Tensor
    attention_mask_BT: torch.Tensor
    labels_BT: torch.Tensor


@dataclass(frozen=True)
class WarmStartResult:
    """Where the initial policy went and how training went."""

    checkpoint_dir: Path
    num_parameters: int
    loss_curve: list[float]  # mean answer loss per logging window
    final_loss: float


# --------------------------------------------------------------------------- pure helpers

IGNORE_INDEX = -100


def encode_examples(
    tokenizer: PreTrainedTokenizerBase, problems: list[str], answers: list[str]
) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids of ``<bos>problem`` and of ``answer<eos>`` for every example."""
    prompt_ids = tokenizer(list(problems), add_special_tokens=True)["input_ids"]
    answer_ids = tokenizer(list(answers), add_special_tokens=False)["input_ids"]
    for row, ids in enumerate(answer_ids):
        if tokenizer.unk_token_id in ids:
            raise ValueError(f"answer {answers[row]!r} (row {row}) has characters outside the vocabulary")
    return prompt_ids, [ids + [tokenizer.eos_token_id] for ids in answer_ids]


def corrupt_one_digit(answer_ids: list[int], digit_ids: list[int], rng: np.random.Generator) -> list[int]:
    """``answer_ids`` with one of its digit tokens replaced by a different digit (a wrong answer
    of the same length and sign); unchanged if it has no digit."""
    positions = [k for k, token in enumerate(answer_ids) if token in digit_ids]
    if not positions:
        return answer_ids
    k = positions[int(rng.integers(len(positions)))]
    choices = [d for d in digit_ids if d != answer_ids[k]]
    out = list(answer_ids)
    out[k] = choices[int(rng.integers(len(choices)))]
    return out


def build_sft_batch(
    prompt_ids: list[list[int]], answer_ids: list[list[int]], pad_id: int
) -> SFTBatch:
    """Concatenate prompt and answer, right-pad, and mask everything but the answer in labels."""
    lengths = [len(p) + len(a) for p, a in zip(prompt_ids, answer_ids)]
    width = max(lengths)
    input_ids_BT = torch.full((len(lengths), width), pad_id, dtype=torch.long)
    labels_BT = torch.full((len(lengths), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask_BT = torch.zeros((len(lengths), width), dtype=torch.long)
    for row, (prompt, answer) in enumerate(zip(prompt_ids, answer_ids)):
        sequence = prompt + answer
        input_ids_BT[row, : len(sequence)] = torch.tensor(sequence)
        labels_BT[row, len(prompt) : len(sequence)] = torch.tensor(answer)
        attention_mask_BT[row, : len(sequence)] = 1
    return SFTBatch(input_ids_BT, attention_mask_BT, labels_BT)


def answer_loss(
    model: PreTrainedModel, batch: SFTBatch, label_smoothing: float | torch.Tensor = 0.0
) -> torch.Tensor:
    """Mean cross-entropy over the answer and EOS tokens of the batch.

    ``label_smoothing``: one amount for every example, or one per example (a ``[B]`` tensor):
    ``(1 - e) * nll + e * mean over the vocabulary of -log p``, as torch's ``label_smoothing``.
    """
    logits_BTV = model(
        input_ids=batch.input_ids_BT, attention_mask=batch.attention_mask_BT
    ).logits
    # position t predicts token t+1
    logits_BTV = logits_BTV[:, :-1].float()
    targets_BT = batch.labels_BT[:, 1:]
    if not isinstance(label_smoothing, torch.Tensor):
        return torch.nn.functional.cross_entropy(
            logits_BTV.reshape(-1, logits_BTV.shape[-1]),
            targets_BT.reshape(-1),
            ignore_index=IGNORE_INDEX,
            label_smoothing=float(label_smoothing),
        )
    mask_BT = targets_BT != IGNORE_INDEX
    logp_BTV = torch.log_softmax(logits_BTV, dim=-1)
    nll_BT = -logp_BTV.gather(-1, targets_BT.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    uniform_BT = -logp_BTV.mean(dim=-1)
    eps_B1 = label_smoothing.to(logits_BTV.dtype).unsqueeze(1)
    per_token_BT = (1.0 - eps_B1) * nll_BT + eps_B1 * uniform_BT
    return (per_token_BT * mask_BT).sum() / mask_BT.sum().clamp(min=1)


def lr_at(step: int, config: WarmStartConfig) -> float:
    """Linear warm-up to the peak, then cosine decay to ``final_lr_fraction`` of it."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    span = max(config.steps - config.warmup_steps, 1)
    progress = min((step - config.warmup_steps) / span, 1.0)
    floor = config.final_lr_fraction
    return config.lr * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def level_sampling_probabilities(levels_N: np.ndarray, weights: dict[int, float] | None) -> np.ndarray:
    """Per-example probability such that each level gets its weight's share of the draws."""
    present = sorted(int(x) for x in np.unique(levels_N))
    if weights is None:
        weights = {level: 1.0 for level in present}
    unknown = sorted(set(weights) - set(present))
    if unknown:
        raise ValueError(f"level_weights names levels {unknown} that have no training rows")
    counts = {level: int((levels_N == level).sum()) for level in present}
    probs_N = np.array([weights.get(int(level), 0.0) / counts[int(level)] for level in levels_N])
    if probs_N.sum() <= 0:
        raise ValueError("level_weights gives every training row weight 0")
    return probs_N / probs_N.sum()


# --------------------------------------------------------------------------- training


def train_warm_start(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    train_df: pd.DataFrame,
    config: WarmStartConfig,
    log_every: int = 50,
) -> list[float]:
    """Train ``model`` in place for ``config.steps`` steps; return the windowed mean losses."""
    for column in ("problem", "answer", "level"):
        if column not in train_df.columns:
            raise ValueError(f"warm-start data: missing column {column!r}")
    prompt_ids, answer_ids = encode_examples(
        tokenizer, train_df["problem"].tolist(), train_df["answer"].tolist()
    )
    levels_N = train_df["level"].to_numpy()
    probs_N = level_sampling_probabilities(levels_N, config.level_weights)
    noise_N = np.array([(config.answer_noise or {}).get(int(level), 0.0) for level in levels_N])
    per_level_smoothing = isinstance(config.label_smoothing, dict)
    smoothing_N = torch.tensor([config.smoothing_of(level) for level in levels_N])
    digit_ids = tokenizer.convert_tokens_to_ids(list("0123456789"))
    rng = np.random.default_rng([config.seed, 1])
    noise_rng = np.random.default_rng([config.seed, 2])  # its own stream: no noise = the same batches
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.98)
    )
    model.train()
    losses: list[float] = []
    window: list[float] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        for step in range(config.steps):
            rows = rng.choice(len(prompt_ids), size=config.batch_size, p=probs_N)
            answers = [answer_ids[i] for i in rows]
            if config.answer_noise:
                answers = [
                    corrupt_one_digit(ids, digit_ids, noise_rng) if noise_rng.random() < noise_N[i] else ids
                    for i, ids in zip(rows, answers)
                ]
            batch = build_sft_batch(
                [prompt_ids[i] for i in rows], answers, tokenizer.pad_token_id
            )
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, config)
            smoothing = smoothing_N[torch.from_numpy(rows)] if per_level_smoothing else config.label_smoothing
            loss = answer_loss(model, batch, smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            window.append(float(loss.detach()))
            if len(window) == log_every or step == config.steps - 1:
                losses.append(float(np.mean(window)))
                window = []
    model.eval()
    return losses


def run_warm_start(
    train_df: pd.DataFrame,
    out_dir: str | Path,
    tokenizer: PreTrainedTokenizerBase,
    config: WarmStartConfig = WarmStartConfig(),
    model_spec: TinyModelConfig = TinyModelConfig(),
) -> WarmStartResult:
    """Build the tiny model, warm-start it on ``train_df`` and save model + tokenizer to ``out_dir``."""
    model = build_tiny_model(model_spec, tokenizer, seed=config.seed)
    losses = train_warm_start(model, tokenizer, train_df, config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    record = {
        "config": config.model_dump(mode="json"),
        "model_spec": model_spec.model_dump(mode="json"),
        "num_parameters": count_parameters(model),
        "loss_curve": losses,
    }
    (out / "warm_start.json").write_text(json.dumps(record, indent=2))
    return WarmStartResult(out, count_parameters(model), losses, losses[-1])


# --------------------------------------------------------------------------- measurement


@torch.no_grad()
def sample_answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    problems: list[str],
    k: int,
    seed: int,
    max_new_tokens: int = 8,
    prompts_per_batch: int = 64,
    temperature: float = 1.0,
) -> list[list[str]]:
    """``k`` sampled completions per problem (text up to EOS; no EOS -> ``None``-free "<noeos>")."""
    model.eval()
    eos = tokenizer.eos_token_id
    samples: list[list[str]] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for start in range(0, len(problems), prompts_per_batch):
            chunk = problems[start : start + prompts_per_batch]
            enc = tokenizer(chunk, padding=True, return_tensors="pt")
            out_BT = model.generate(
                input_ids=enc["input_ids"].repeat_interleave(k, dim=0),
                attention_mask=enc["attention_mask"].repeat_interleave(k, dim=0),
                do_sample=True,
                temperature=temperature,
                top_k=0,
                top_p=1.0,
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=eos,
            )
            completions_BT = out_BT[:, enc["input_ids"].shape[1] :].tolist()
            for p in range(len(chunk)):
                texts = []
                for ids in completions_BT[p * k : (p + 1) * k]:
                    if eos in ids:
                        texts.append(tokenizer.decode(ids[: ids.index(eos)]))
                    else:
                        texts.append("<noeos>")
                samples.append(texts)
    return samples


def measure_pass_rates(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    problems: list[str],
    answers: list[str],
    k: int = 16,
    seed: int = 0,
    **sampling,
) -> np.ndarray:
    """Fraction of ``k`` temperature-1 samples per problem whose answer matches exactly."""
    samples = sample_answers(model, tokenizer, problems, k, seed, **sampling)
    return np.array(
        [np.mean([s == answer for s in group]) for group, answer in zip(samples, answers)]
    )


def pass_rate_spread(pass_rates_N: np.ndarray) -> dict[str, float]:
    """Share of prompts at exactly 0, strictly between, exactly 1, and the mean pass rate."""
    return {
        "zero": float(np.mean(pass_rates_N == 0.0)),
        "between": float(np.mean((pass_rates_N > 0.0) & (pass_rates_N < 1.0))),
        "one": float(np.mean(pass_rates_N == 1.0)),
        "mean": float(np.mean(pass_rates_N)),
    }
