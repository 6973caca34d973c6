"""The ingester's drop rule, "keep the newest, evenly thinned", on the queue alone (no threads, no model)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from potwatch.streaming.thinning_queue import ThinningQueue, thinning_victim


def gaps_ratio(arrivals: list[int]) -> float:
    """Largest over smallest gap between queued frames, the newest gap aside (1.0 when < 2 such gaps)."""
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])][:-1]
    return max(gaps) / min(gaps) if len(gaps) >= 2 else 1.0


def test_a_long_stall_leaves_the_backlog_evenly_thinned():
    queue = ThinningQueue(8)
    for arrival in range(41):
        queue.push(arrival)
    # the oldest (next to be fed) and the newest stay; the rest sit on strides 8 and 4
    assert queue.arrivals() == [0, 8, 16, 24, 28, 32, 36, 40]
    assert queue.dropped == 41 - 8 and queue.arrived == 41


def test_nothing_is_dropped_while_the_model_keeps_up():
    queue = ThinningQueue(4)
    for arrival in range(100):
        assert not queue.push(arrival)
        assert queue.pop() == arrival
    assert queue.dropped == 0 and len(queue) == 0


@pytest.mark.parametrize("arrivals, victim", [
    ([5], 0), ([5, 6], 0),  # no inner frame: the oldest goes, the newest stays
    ([0, 1, 2], 1),
    ([0, 4, 5, 6, 7], 2),  # 5 came 1 after 4; ties go to the oldest
    ([0, 2, 4, 6, 7], 1),  # the newest (7) is never the victim even though its gap is 1
])
def test_the_victim(arrivals, victim):
    assert thinning_victim(arrivals) == victim


def test_capacity_must_hold_a_frame():
    with pytest.raises(ValueError, match="at least one frame"):
        ThinningQueue(0)


@settings(max_examples=60, deadline=None)
@given(capacity=st.integers(1, 40), arrivals=st.integers(1, 1500))
def test_without_pops_gaps_stay_within_a_factor_of_two(capacity, arrivals):
    queue = ThinningQueue(capacity)
    for arrival in range(arrivals):
        queue.push(arrival)
        held = queue.arrivals()
        assert len(held) == min(arrival + 1, capacity)
        assert held[-1] == arrival  # the newest is always kept
        assert held[0] == (0 if capacity >= 2 else arrival)  # the oldest stays (unless only one fits)
        assert gaps_ratio(held) <= 2.0, held


@settings(max_examples=80, deadline=None)
@given(capacity=st.integers(1, 16), steps=st.lists(st.booleans(), max_size=400))
def test_bounded_counted_ordered_and_newest_kept_under_any_pace(capacity, steps):
    """True = a frame arrives, False = the model takes one: any interleaving of the two."""
    queue = ThinningQueue(capacity)
    taken = []
    for arrives in steps:
        if arrives:
            newest = queue.arrived
            queue.push(newest)
            assert queue.arrivals()[-1] == newest
        elif len(queue):
            taken.append(queue.pop())
        assert len(queue) <= capacity
        assert queue.arrived == len(taken) + queue.dropped + len(queue)  # every frame accounted for
    held = queue.arrivals()
    assert taken + held == sorted(taken + held) and len(set(taken + held)) == len(taken + held)
