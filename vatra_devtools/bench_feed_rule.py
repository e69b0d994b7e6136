"""What the append-only rule of the activity feed (``activity-record``, decision 93) costs
the attribution check of one batch on a long feed, against validating the feed's schema,
which a batch that touches the whole feed pays as well (the baseline, measured in the
same run).

    python -m vatra_devtools.bench_feed_rule [--entries 50000] [--appends 2000] [--runs 5]

A household with ``--entries`` activity entries is built in memory; then the attribution
check (:func:`conflict.policy.attribution_violations`, as the server runs it) judges:

* ``appends``: ``--appends`` new entries, with what the batch touched known (the common
  path: only the new entries are read);
* ``appends, nothing known``: the same, when the batch could not be read (every old entry
  is compared once);
* ``one rewritten``: one old entry's text written again, touching the whole feed;
* ``one removed``: one old entry deleted.

The best of ``--runs`` is printed for each, with its ratio to the schema baseline.
Results: docs/decisions.md, decision 93.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any

from automerge.core import ROOT, Document, ObjType, ScalarType

from conflict import Household, policy
from conflict.validate import validate_paths
from sync_server.sync.touched import touched_prefixes


def _child(doc: Document, obj: Any, key: str | int) -> Any:
    got = doc.get(obj, key)
    assert got is not None, key
    return got[1]


def _household(entries: int) -> Household:
    h = Household.create(locality="54975", county="CJ", address="Str. Lunga 3", author="w-1",
                         team={"social_worker": "w-1"}, actor_id=b"\x01" * 16)
    feed = _child(h.doc, ROOT, "activity")
    with h.doc.transaction() as tx:
        for i in range(entries):
            entry = tx.insert_object(feed, i + 1, ObjType.Map)
            tx.put(entry, "at", ScalarType.Str, "2026-11-30T10:00:00Z")
            tx.put(entry, "by", ScalarType.Str, "w-1")
            tx.put(entry, "kind", ScalarType.Str, "note")
            tx.put(entry, "text", ScalarType.Str, "a visit, recorded in forty characters..")
    return h


def _best(runs: int, work: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vatra_devtools.bench_feed_rule")
    parser.add_argument("--entries", type=int, default=50_000)
    parser.add_argument("--appends", type=int, default=2_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    for name, least in (("entries", 2), ("appends", 1), ("runs", 1)):
        if getattr(args, name) < least:
            parser.error(f"--{name} must be at least {least}")

    h = _household(args.entries)
    before = h.doc.fork()
    feed = _child(before, ROOT, "activity")
    now = datetime.now(UTC)

    appended = Household(before.fork(), h.household_id, author="w-1")
    for _ in range(args.appends):
        appended.append_activity("note", "a call")
    rewritten = before.fork()
    with rewritten.transaction() as tx:
        tx.put(_child(rewritten, feed, 1), "text", ScalarType.Str, "another text")
    removed = before.fork()
    with removed.transaction() as tx:
        tx.delete(feed, 1)

    baseline = _best(args.runs, lambda: validate_paths(before, [("activity",)]))
    print(f"{args.entries} entries; schema of the whole feed (baseline): "
          f"{baseline * 1000:.1f} ms")
    cases: list[tuple[str, Document, set[tuple[str | int, ...]] | None, int]] = [
        ("appends", appended.doc, touched_prefixes(appended.doc, before.get_heads()), 0),
        ("appends, nothing known", appended.doc, None, 0),
        ("one rewritten", rewritten, {("activity",)}, 1),
        ("one removed", removed, {("activity",)}, 1),
    ]
    for name, doc, touched, refused in cases:
        took = _best(args.runs, partial(policy.attribution_violations, before, doc, "w-1",
                                        now, None, touched))
        found = policy.attribution_violations(before, doc, "w-1", now, None, touched)
        rules = sorted({v.rule for v in found})
        if len(found) != refused:
            raise SystemExit(f"{name}: expected {refused} violation(s), got {rules}")
        print(f"{name:>24}: {took * 1000:8.1f} ms  {took / baseline:5.2f}x the baseline  "
              f"refused: {', '.join(rules) or '-'}")


if __name__ == "__main__":
    main()
