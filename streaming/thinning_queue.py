"""The ingester's bounded frame queue and its drop rule: keep the newest, evenly thinned.

When a frame arrives at a full queue, the frame is queued and one queued frame is dropped: of the
frames between the oldest and the newest, the one that arrived soonest after the frame queued before
it (ties: the oldest such). The oldest stays, because it is the next the model takes and continues
what the model has seen; the newest stays, because it is what is happening now.

What this gives: while the model keeps up, nothing is dropped. When it falls behind (a slow block, an
answer being generated), the backlog thins out evenly over the whole time it was behind instead of
losing one contiguous stretch: the queue behaves like a stride that doubles from the old end (frames
1, 2, 4, ... arrivals apart), and while the model takes nothing, the gaps between queued frames (in
arrival order, the newest gap aside) never differ by more than a factor of two. Memory stays at
`capacity` frames. The price is latency: a queued frame waits at most `capacity` turns of the model.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")


def thinning_victim(arrivals: Sequence[int]) -> int:
    """Index of the frame to drop from a queue holding frames with these arrival numbers (ascending).

    With three or more frames: the inner frame with the smallest gap to the frame before it, the oldest
    of equals. With one or two (no inner frame): the oldest, so the newest is still kept."""
    if len(arrivals) < 3:
        return 0
    best, best_gap = 1, arrivals[1] - arrivals[0]
    for index in range(2, len(arrivals) - 1):
        gap = arrivals[index] - arrivals[index - 1]
        if gap < best_gap:
            best, best_gap = index, gap
    return best


class ThinningQueue(Generic[Item]):
    """At most `capacity` items in arrival order; a push to a full queue drops one by `thinning_victim`."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"a frame queue needs room for at least one frame (got {capacity})")
        self.capacity = capacity
        self.arrived = 0  # frames pushed so far
        self.dropped = 0  # frames dropped so far
        self._items: deque[tuple[int, Item]] = deque()

    def push(self, item: Item) -> bool:
        """Queue `item`; True when another queued frame had to be dropped to make room."""
        self._items.append((self.arrived, item))
        self.arrived += 1
        if len(self._items) <= self.capacity:
            return False
        del self._items[thinning_victim(self.arrivals())]
        self.dropped += 1
        return True

    def pop(self) -> Item:
        """The oldest queued item (IndexError when empty)."""
        return self._items.popleft()[1]

    def arrivals(self) -> list[int]:
        """Arrival numbers (0-based) of the queued items, oldest first."""
        return [number for number, _ in self._items]

    def __len__(self) -> int:
        return len(self._items)
