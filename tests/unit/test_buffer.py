"""Pilot-Commit's replay buffer and the max-variance pilot selection (allocation/buffer.py)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from pilotcommit.allocation import ReplayBuffer, select_max_variance_pilots
from pilotcommit.types import RolloutKind, RolloutRequest
from tests.unit.allocation_sim import make_rollout


def pilots(rewards: list[float], prompt_id: str = "p") -> list:
    request = RolloutRequest(prompt_id, len(rewards), RolloutKind.PILOT)
    rollouts = [make_rollout(request, r) for r in rewards]
    for i, rollout in enumerate(rollouts):
        rollout.text = f"{prompt_id}#{i}"  # identity, to check which pilots were kept
    return rollouts


def rng() -> np.random.Generator:
    return np.random.default_rng(0)


# --------------------------------------------------------------------------- take


def test_max_variance_takes_highest_pilot_std_first():
    buffer = ReplayBuffer()
    buffer.add("p_quarter", pilots([1, 0, 0, 0]), step=0)  # std 0.433
    buffer.add("p_half", pilots([1, 1, 0, 0]), step=0)  # std 0.5
    buffer.add("p_3quarter", pilots([1, 1, 1, 0]), step=0)  # std 0.433
    chosen = buffer.take(1, "max_variance", rng())
    assert [e.prompt_id for e in chosen] == ["p_half"]
    assert "p_half" not in buffer and len(buffer) == 2


def test_max_variance_ties_go_to_the_most_recent():
    buffer = ReplayBuffer()
    buffer.add("old_step", pilots([1, 1, 0, 0]), step=0)
    buffer.add("new_step_first", pilots([1, 0, 1, 0]), step=2)
    buffer.add("new_step_second", pilots([0, 1, 0, 1]), step=2)
    buffer.add("lower_std", pilots([1, 0, 0, 0]), step=3)
    chosen = buffer.take(3, "max_variance", rng())
    # equal std 0.5: newest step first, then the latest inserted within a step
    assert [e.prompt_id for e in chosen] == ["new_step_second", "new_step_first", "old_step"]
    assert [e.prompt_id for e in buffer.entries] == ["lower_std"]


def test_most_recent_ignores_variance():
    buffer = ReplayBuffer()
    buffer.add("a", pilots([1, 1, 0, 0]), step=0)
    buffer.add("b", pilots([1, 0, 0, 0]), step=1)
    buffer.add("c", pilots([1, 0, 0, 0]), step=1)
    assert [e.prompt_id for e in buffer.take(2, "most_recent", rng())] == ["c", "b"]


def test_random_is_seeded_and_covers_the_buffer():
    def fill() -> ReplayBuffer:
        buffer = ReplayBuffer()
        for i in range(10):
            buffer.add(f"p{i}", pilots([1, 0, 0, 0]), step=i)
        return buffer

    first = [e.prompt_id for e in fill().take(4, "random", np.random.default_rng(7))]
    again = [e.prompt_id for e in fill().take(4, "random", np.random.default_rng(7))]
    assert first == again and len(set(first)) == 4
    seen = set()
    for seed in range(30):
        seen |= {e.prompt_id for e in fill().take(2, "random", np.random.default_rng(seed))}
    assert seen == {f"p{i}" for i in range(10)}  # not just the most recent or the first


def test_take_more_than_available_and_zero():
    buffer = ReplayBuffer()
    buffer.add("a", pilots([1, 0]), step=0)
    assert buffer.take(0, "max_variance", rng()) == []
    assert [e.prompt_id for e in buffer.take(5, "max_variance", rng())] == ["a"]
    assert len(buffer) == 0 and buffer.take(3, "random", rng()) == []


def test_unknown_strategy_and_duplicate_prompt():
    buffer = ReplayBuffer()
    buffer.add("a", pilots([1, 0]), step=0)
    with pytest.raises(ValueError, match="already in the replay buffer"):
        buffer.add("a", pilots([1, 0]), step=1)
    with pytest.raises(ValueError, match="unknown buffer sampling strategy 'fifo'"):
        buffer.take(1, "fifo", rng())  # type: ignore[arg-type]


# --------------------------------------------------------------------------- staleness, state


@pytest.mark.parametrize("max_off_steps", [0, 2, 4])
def test_flush_stale_keeps_entries_up_to_max_off_steps_old(max_off_steps):
    buffer = ReplayBuffer()
    for step in range(8):
        buffer.add(f"s{step}", pilots([1, 0]), step=step)
    flushed = buffer.flush_stale(current_step=7, max_off_steps=max_off_steps)
    kept = sorted(e.step for e in buffer.entries)
    assert kept == list(range(7 - max_off_steps, 8))
    assert flushed == 8 - len(kept)


def test_clear_and_state_round_trip():
    buffer = ReplayBuffer()
    buffer.add("a", pilots([1, 0]), step=0)
    buffer.add("b", pilots([1, 1, 0, 0]), step=1)
    restored = ReplayBuffer()
    restored.load_state_dict(pickle.loads(pickle.dumps(buffer.state_dict())))
    restored.add("c", pilots([1, 0, 0, 1]), step=1)
    buffer.add("c", pilots([1, 0, 0, 1]), step=1)
    assert [e.order for e in restored.entries] == [e.order for e in buffer.entries]
    assert [e.prompt_id for e in restored.take(3, "max_variance", rng())] == [
        e.prompt_id for e in buffer.take(3, "max_variance", rng())
    ]
    buffer.add("d", pilots([1, 0]), step=2)
    assert buffer.clear() == 1 and len(buffer) == 0


def test_entry_statistics():
    buffer = ReplayBuffer()
    buffer.add("a", pilots([1, 0, 0, 0]), step=0)
    (entry,) = buffer.entries
    assert entry.pass_rate == 0.25
    assert entry.correct_std == pytest.approx(np.sqrt(0.25 * 0.75))  # population std of the pilots


# --------------------------------------------------------------------------- pilot selection


def kept_rewards(rewards: list[float], count: int) -> list[float]:
    return [r.reward for r in select_max_variance_pilots(pilots(rewards), count)]


@pytest.mark.parametrize(
    "rewards, count, correct, wrong",
    [
        ([1, 1, 1, 0], 2, 1, 1),  # 3 correct / 1 wrong, keep 2 -> 1 + 1
        ([1, 1, 1, 1], 2, 2, 0),  # 4 correct / 0 wrong, keep 2 -> 2 correct
        ([0, 0, 0, 0], 3, 0, 3),
        ([1, 0, 1, 0, 1, 0], 3, 1, 2),  # odd count: the odd one goes to the wrong side
        ([1, 1, 1, 1, 1, 0], 3, 2, 1),  # only one wrong: fill with correct
        ([1, 0, 0, 0, 0, 0], 3, 1, 2),  # only one correct: fill with wrong
        ([1, 1, 0, 0, 0, 0, 0, 0], 6, 2, 4),
        ([1, 1, 1, 0, 0], 5, 3, 2),  # keep all
        ([1, 0], 1, 0, 1),
    ],
)
def test_select_max_variance_pilots_balances_correct_and_wrong(rewards, count, correct, wrong):
    kept = kept_rewards(rewards, count)
    assert len(kept) == count
    assert (sum(r == 1 for r in kept), sum(r == 0 for r in kept)) == (correct, wrong)


def test_select_max_variance_pilots_keeps_the_earliest_in_original_order():
    rollouts = pilots([0, 1, 1, 0, 1, 0])
    kept = select_max_variance_pilots(rollouts, 4)
    assert [r.text for r in kept] == ["p#0", "p#1", "p#2", "p#3"]
    with pytest.raises(ValueError, match="cannot keep 7 of 6"):
        select_max_variance_pilots(rollouts, 7)


def test_select_max_variance_pilots_maximises_variance_exhaustively():
    from itertools import combinations

    for rewards in ([1, 1, 1, 0, 0], [1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0, 0]):
        for count in range(1, len(rewards) + 1):
            best = max(np.var(c) for c in combinations(rewards, count))
            assert np.var(kept_rewards(rewards, count)) == pytest.approx(best), (rewards, count)


# --------------------------------------------------------------------------- accuracy, not shaped reward


def penalised_pilots(correct: list[float], penalty: list[float], prompt_id: str = "p") -> list:
    """Pilots with 0/1 accuracy ``correct`` and shaped reward ``correct + penalty``."""
    rollouts = pilots(correct, prompt_id)
    for rollout, p in zip(rollouts, penalty):
        rollout.reward = rollout.correct + p
    return rollouts


def test_max_variance_ranks_by_the_spread_of_accuracy_not_of_the_penalised_reward():
    """``half`` (2 of 4 correct: accuracy std 0.5) comes before ``one`` (1 of 4: std 0.43),
    although overlong penalties give ``one`` the larger spread of shaped rewards (0.71)."""
    buffer = ReplayBuffer()
    buffer.add("half", penalised_pilots([1, 1, 0, 0], [0, 0, 0, 0], "half"), step=0)
    buffer.add("one", penalised_pilots([1, 0, 0, 0], [0, -1, 0, 0], "one"), step=0)
    assert [e.prompt_id for e in buffer.take(1, "max_variance", rng())] == ["half"]


def test_select_max_variance_pilots_counts_a_correct_overlong_pilot_as_correct():
    """Two correct pilots penalised to reward 0.3 are still the correct half of the choice."""
    rollouts = penalised_pilots([1, 1, 0, 0], [-0.7, -0.7, 0, 0])
    kept = select_max_variance_pilots(rollouts, 2)
    assert [r.correct for r in kept] == [1.0, 0.0] and [r.text for r in kept] == ["p#0", "p#2"]
