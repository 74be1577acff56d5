"""The epoch-wise prompt stream (allocation/stream.py): seeded orders, drop_last, evictions."""

from __future__ import annotations

import pickle

import pytest

from pilotcommit.allocation import PromptStream
from tests.unit.allocation_sim import prompt_ids


def drain(stream: PromptStream, count: int) -> list[str]:
    taken = []
    while (chunk := stream.take(count)) is not None:
        taken += chunk
    return taken


def test_each_epoch_visits_every_prompt_once_in_a_seeded_order():
    ids = prompt_ids(20)
    stream = PromptStream(ids, seed=3)
    epoch0 = drain(stream, 5)
    stream.next_epoch()
    epoch1 = drain(stream, 5)
    assert sorted(epoch0) == sorted(epoch1) == ids
    assert epoch0 != epoch1 and epoch0 != ids  # shuffled, and differently per epoch
    again = PromptStream(ids, seed=3)
    assert drain(again, 5) == epoch0
    assert drain(PromptStream(ids, seed=4), 5) != epoch0


def test_drop_last_when_fewer_than_a_round_remain():
    stream = PromptStream(prompt_ids(10), seed=0)
    assert len(stream.take(4)) == 4 and len(stream.take(4)) == 4
    assert stream.remaining_in_epoch == 2
    assert stream.take(4) is None
    assert stream.remaining_in_epoch == 2  # a refused take does not consume


def test_evictions_apply_from_the_next_epoch_only():
    ids = prompt_ids(12)
    stream = PromptStream(ids, seed=1)
    reference = PromptStream(ids, seed=1)
    first = stream.take(4)
    reference.take(4)
    stream.mark_evicted(first[0])
    stream.mark_evicted(first[1])
    assert stream.evicted_total == 2 and stream.num_active == 12
    # the rest of this epoch is exactly what it would have been without evictions
    assert drain(stream, 4) == drain(reference, 4)
    stream.next_epoch()
    assert stream.num_active == 10
    epoch1 = drain(stream, 2)
    assert set(epoch1) == set(ids) - {first[0], first[1]}
    assert stream.evicted_total == 2
    stream.mark_evicted(first[0])  # already evicted: no double count
    assert stream.evicted_total == 2 and not stream.pending_evictions


def test_state_round_trip_mid_epoch_with_pending_evictions():
    ids = prompt_ids(15)
    stream = PromptStream(ids, seed=9)
    stream.take(4)
    stream.next_epoch()
    chunk = stream.take(3)
    stream.mark_evicted(chunk[2])
    state = pickle.loads(pickle.dumps(stream.state_dict()))
    restored = PromptStream(ids, seed=9)
    restored.load_state_dict(state)
    assert drain(restored, 3) == drain(stream, 3)
    restored.next_epoch()
    stream.next_epoch()
    assert drain(restored, 3) == drain(stream, 3)
    assert chunk[2] not in restored._order


def test_bad_inputs_and_mismatched_state():
    with pytest.raises(ValueError, match="no prompts"):
        PromptStream([], seed=0)
    with pytest.raises(ValueError, match=r"duplicate prompt ids.*'b'"):
        PromptStream(["a", "b", "b"], seed=0)
    state = PromptStream(["a", "b"], seed=0).state_dict()
    with pytest.raises(ValueError, match="seed 0, this run uses 1"):
        PromptStream(["a", "b"], seed=1).load_state_dict(state)
    state["evicted"] = ["zz"]
    with pytest.raises(ValueError, match="absent from the data.*zz"):
        PromptStream(["a", "b"], seed=0).load_state_dict(state)
