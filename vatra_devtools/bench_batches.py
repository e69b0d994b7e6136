"""How long the server takes to find what one big batch touched, against the old way.

    python -m vatra_devtools.bench_batches [FEED_ENTRIES]

A household's feed holds ``FEED_ENTRIES`` entries (default 5,000); batches of 500, 1,000
and 2,000 appends follow, and :meth:`ObjectIndex.touched` reads each batch twice: with
the one walk it uses now, and with the per-element search from the end it used before
(kept here only as the baseline of the same run). Issue 13, fault 6: a household growing
by batches of 2,000 took 12-19 s a batch and stalled every tablet. Results in
docs/performance.md ("Big batches").
"""

from __future__ import annotations

import sys
import time
from typing import Any

from automerge.core import ROOT, Document

from conflict import Household
from conflict.paths import exid_op
from sync_server.sync import change_ops
from sync_server.sync.change_ops import ObjectIndex, OpId


class SearchFromTheEnd:
    """The old way: every inserted element searched for from the list's end again."""

    def __init__(self, doc: Document, lst: Any) -> None:
        self._doc, self._lst = doc, lst

    def index(self, op_id: OpId) -> int | None:
        for i in range(self._doc.length(self._lst) - 1, -1, -1):
            got = self._doc.get(self._lst, i)
            if got is not None and exid_op(got[1]) == op_id:
                return i
        return None


def _timed(doc: Document, changes: list[Any], positions: Any) -> float:
    saved = change_ops._Positions
    change_ops._Positions = positions  # type: ignore[misc]  # the baseline, for this run
    try:
        index = ObjectIndex()
        index.build(doc)
        started = time.perf_counter()
        assert index.touched(doc, changes) is not None
        return time.perf_counter() - started
    finally:
        change_ops._Positions = saved  # type: ignore[misc]


def main(argv: list[str]) -> int:
    entries = int(argv[0]) if argv else 5000
    h = Household.create(locality="54975", county="CJ", address="Str. Lunga 3", author="sw")
    for i in range(entries):
        h.append_activity("visit", f"entry {i}")
    print(f"{'feed':>6} {'batch':>6} {'now ms':>8} {'before ms':>10} {'ratio':>7}")
    for n in (500, 1000, 2000):
        heads = h.doc.get_heads()
        for i in range(n):
            h.append_activity("visit", f"batch {n} entry {i}")
        changes = h.doc.get_changes(heads)
        now = _timed(h.doc, changes, change_ops._Positions)
        before = _timed(h.doc, changes, SearchFromTheEnd)
        feed = h.doc.length(h.doc.get(ROOT, "activity")[1])  # type: ignore[index]
        print(f"{feed:>6} {n:>6} {now * 1000:>8.0f} {before * 1000:>10.0f} "
              f"{before / now:>6.0f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
