"""A compact set of ids, for what every session keeps while it is idle.

A connected tablet's session holds its user's caseload and the households it watches
(the reconnect fast path). As Python sets of 50 household ids these take 4.3 KB each;
as one sorted tuple, 0.5 KB. Most sessions are idle (docs/performance.md, "Idle
devices"), and these sets change rarely (a team change, a fan-out), so a change may
copy the tuple.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator


class CompactIds:
    """A set of strings kept as one sorted tuple: membership by bisection, changes by copy."""

    __slots__ = ("_ids",)

    def __init__(self, ids: Iterable[str] = ()) -> None:
        self._ids: tuple[str, ...] = tuple(sorted(set(ids)))

    def __contains__(self, item: object) -> bool:
        if not isinstance(item, str):
            return False
        i = bisect_left(self._ids, item)
        return i < len(self._ids) and self._ids[i] == item

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def __bool__(self) -> bool:
        return bool(self._ids)

    def add(self, item: str) -> None:
        if item not in self:
            i = bisect_left(self._ids, item)
            self._ids = (*self._ids[:i], item, *self._ids[i:])

    def discard(self, item: str) -> None:
        if item in self:
            i = bisect_left(self._ids, item)
            self._ids = self._ids[:i] + self._ids[i + 1:]

    def update(self, items: Iterable[str]) -> None:
        self._ids = tuple(sorted(set(self._ids).union(items)))

    def difference_update(self, items: Iterable[str]) -> None:
        gone = set(items)
        self._ids = tuple(i for i in self._ids if i not in gone)

    def sorted(self) -> list[str]:
        return list(self._ids)
