"""Offset bookkeeping: what may be committed when records finish out of order.

A partition's commit position is the lowest offset still in flight, or one past the highest
offset seen when nothing is; so a finished record is never committed past an unfinished one.
"""

from __future__ import annotations

from collections import deque

TopicPartition = tuple[str, int]


class _Partition:
    __slots__ = ("committed", "done", "pending")

    def __init__(self) -> None:
        self.pending: deque[int] = deque()
        """Offsets handed out, in the order consumed (ascending within a partition)."""
        self.done: set[int] = set()
        self.committed: int | None = None


class OffsetTracker:
    """Per-partition watermarks over records that complete in any order."""

    def __init__(self) -> None:
        self._parts: dict[TopicPartition, _Partition] = {}
        self._next: dict[TopicPartition, int] = {}

    def track(self, tp: TopicPartition, offset: int) -> None:
        self._parts.setdefault(tp, _Partition()).pending.append(offset)

    def done(self, tp: TopicPartition, offset: int) -> None:
        part = self._parts.get(tp)
        if part is None:
            return  # the partition was revoked and forgotten meanwhile
        part.done.add(offset)
        while part.pending and part.pending[0] in part.done:
            first = part.pending.popleft()
            part.done.discard(first)
            self._next[tp] = first + 1

    def in_flight(self, tps: list[TopicPartition] | None = None) -> int:
        keys = self._parts if tps is None else [tp for tp in tps if tp in self._parts]
        return sum(len(self._parts[tp].pending) for tp in keys)

    def committable(self, tps: list[TopicPartition] | None = None) -> dict[TopicPartition, int]:
        """Positions that advanced since the last `committed` call (Kafka's 'next offset')."""
        out = {}
        for tp, nxt in self._next.items():
            if tps is not None and tp not in tps:
                continue
            part = self._parts[tp]
            if part.committed != nxt:
                out[tp] = nxt
        return out

    def position(self, tp: TopicPartition) -> int | None:
        """Last committed position of a partition, if this process committed one."""
        part = self._parts.get(tp)
        return part.committed if part else None

    def committed(self, positions: dict[TopicPartition, int]) -> None:
        for tp, pos in positions.items():
            if tp in self._parts:
                self._parts[tp].committed = pos

    def forget(self, tps: list[TopicPartition]) -> None:
        """Drop partitions this member lost; late completions for them are ignored."""
        for tp in tps:
            self._parts.pop(tp, None)
            self._next.pop(tp, None)
