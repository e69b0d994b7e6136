"""Concurrent feed appends, field edits and resolutions never lose, invent or misplace an
edit (issue 12): a property test against a real server, with three enrolled tablets.

Each run draws a random program from a seed, in rounds: every tablet makes a few edits
offline (appends to the activity feed, sets the address or a member's first name,
resolves a conflict it knows of by choosing one of its values), then some of the tablets
sync, in a random order, some twice (so edits are concurrent in every shape the sync
orders allow). Every field write is logged with the change that made it and a
value no other write uses (a resolution reuses the value it chose). Then all converge,
and:

- every appended entry is in the feed exactly once, with its kind, text and author;
- every recorded conflict names a field two concurrent writes (neither in the other's
  history) set to the two values it lists;
- a resolution changes, on the tablet that makes it, only the field it names and the
  conflict's own ``resolved_by`` and ``resolution``.

It found one defect on its first runs: a conflict named the value a device had seen and
replaced, instead of the concurrent write that had lost a tie-break to it (see
``test_a_concurrent_write_that_lost_the_tie_break_still_makes_a_conflict`` in
``tests/test_conflict_detection.py``).

CI runs ``VATRA_FEED_RUNS`` (3) seeds of ``VATRA_FEED_ROUNDS`` (6) rounds; raise both
for a long run. A failure names its seed: ``VATRA_FEED_SEED=<seed>`` replays that one.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any

import pytest
from _scenes import active_household
from automerge.core import Document

from client_sdk import Replica, SyncClient
from sync_server.app import SYNCHRONIZER

pytestmark = pytest.mark.functional

RUNS = int(os.environ.get("VATRA_FEED_RUNS", "3"))
ROUNDS = int(os.environ.get("VATRA_FEED_ROUNDS", "6"))
SEEDS = ([int(os.environ["VATRA_FEED_SEED"])] if "VATRA_FEED_SEED" in os.environ
         else [1000 + i for i in range(RUNS)])


@dataclass(frozen=True)
class Write:
    path: tuple[Any, ...]
    value: Any
    change: bytes  # the hash of the change that wrote it
    tablet: str


def flatten(value: Any, prefix: tuple[Any, ...] = ()) -> dict[tuple[Any, ...], Any]:
    if isinstance(value, dict):
        out: dict[tuple[Any, ...], Any] = {}
        for k, v in value.items():
            out.update(flatten(v, (*prefix, k)))
        return out or {prefix: {}}
    if isinstance(value, list):
        out = {}
        for i, v in enumerate(value):
            out.update(flatten(v, (*prefix, i)))
        return out or {prefix: []}
    return {prefix: value}


def concurrent(doc: Document, a: bytes, b: bytes) -> bool:
    """Neither change is in the other's history (``get_changes([h])`` is what ``h`` lacks)."""
    return (a != b and b in {c.hash for c in doc.get_changes([a])}
            and a in {c.hash for c in doc.get_changes([b])})


class Run:
    def __init__(self, seed: int, server, hid: str, pid: str, tablets: list[Replica]) -> None:
        self.rng = random.Random(seed)
        self.seed, self.server, self.hid, self.pid = seed, server, hid, pid
        self.tablets = tablets
        self.writes: list[Write] = []
        self.appended: dict[str, tuple[str, str]] = {}  # text -> (kind, author)
        self.n = 0

    def name(self, t: Replica) -> str:
        assert t.credentials is not None
        return t.credentials.user_id

    def last_change(self, t: Replica) -> bytes:
        [head] = t.household(self.hid).doc.get_heads()  # a local edit is the only head
        return head

    def unique(self, what: str) -> str:
        self.n += 1
        return f"{what} {self.seed}-{self.n}"

    async def round(self) -> None:
        for t in self.rng.sample(self.tablets, len(self.tablets)):
            for _ in range(self.rng.randint(0, 3)):
                await self.edit(t, self.rng.choices(["append", "address", "name", "resolve"],
                                                    weights=[3, 2, 1, 3])[0])
        syncing = self.rng.sample(self.tablets, self.rng.randint(1, len(self.tablets)))
        for t in syncing + self.rng.sample(syncing, self.rng.randint(0, len(syncing))):
            summary = await SyncClient(t, self.server.url).sync()
            assert summary.rejected == [], (self.seed, summary.rejected)

    async def edit(self, t: Replica, action: str) -> None:
        if action == "append":
            kind, text = self.rng.choice(["visit", "call"]), self.unique("entry")
            with t.edit(self.hid) as h:
                h.append_activity(kind, text)
            self.appended[text] = (kind, self.name(t))
        elif action in ("address", "name"):
            path: tuple[Any, ...] = (("address",) if action == "address"
                                     else ("members", self.pid, "first_name"))
            value = self.unique("Str." if action == "address" else "Ana")
            with t.edit(self.hid) as h:
                if action == "address":
                    h.set_address(value)
                else:
                    h.set_member_field(self.pid, "first_name", value)
            self.writes.append(Write(path, value, self.last_change(t), self.name(t)))
        else:
            await self.resolve(t)

    async def resolve(self, t: Replica) -> None:
        """Choose a value for one open conflict on a field the tablets edit (a conflict
        on a resolution's own ``resolved_by`` is the record of two people resolving at
        once: choosing another person's name there would be forging it)."""
        h = t.household(self.hid)
        open_ = [c for c in h.conflicts(open_only=True) if c["path"][0] != "conflicts"]
        if not open_:
            return
        c = self.rng.choice(open_)
        value, cid, path = self.rng.choice(c["values"]), c["conflict_id"], tuple(c["path"])
        before = flatten(h.to_dict())
        with t.edit(self.hid) as e:
            e.resolve_conflict(cid, value)
        after = flatten(t.household(self.hid).to_dict())
        changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
        own = {("conflicts", cid, "resolved_by"), ("conflicts", cid, "resolution")}
        assert changed <= {path} | own, (self.seed, path, changed)
        assert after[path] == value
        change, who = self.last_change(t), self.name(t)
        self.writes += [Write(path, value, change, who),
                        Write(("conflicts", cid, "resolved_by"), who, change, who),
                        Write(("conflicts", cid, "resolution"), str(value), change, who)]

    async def converge(self) -> Document:
        for _ in range(4):
            for t in self.tablets:
                assert (await SyncClient(t, self.server.url).sync()).rejected == []
            heads = {tuple(sorted(t.household(self.hid).doc.get_heads()))
                     for t in self.tablets}
            server = self.server.app[SYNCHRONIZER].registry.resident(self.hid)
            if len(heads) == 1 and heads == {tuple(sorted(server.doc.get_heads()))}:
                return server.doc
        raise AssertionError(f"seed {self.seed}: the tablets did not converge")


@pytest.mark.parametrize("seed", SEEDS)
async def test_concurrent_appends_edits_and_resolutions_keep_every_edit(
        server, provision, seed) -> None:
    hid, pid, tablets = await active_household(server, provision, ("nurse", {}),
                                               ("counsellor", {}))
    run = Run(seed, server, hid, pid, tablets)
    for _ in range(ROUNDS):
        await run.round()
    doc = await run.converge()
    final = tablets[0].household(hid)

    feed = [e for e in final.activity() if e.get("text", "").startswith("entry ")]
    assert sorted(e["text"] for e in feed) == sorted(run.appended), seed  # each exactly once
    for e in feed:
        assert (e["kind"], e["by"]) == run.appended[e["text"]], (seed, e)

    for c in final.conflicts():
        path, values = tuple(c["path"]), c["values"]
        assert len(values) == 2 and values[0] != values[1], (seed, c)
        by_value = {v: [w for w in run.writes if w.path == path and w.value == v]
                    for v in values}
        assert all(by_value.values()), (seed, "a conflict value nobody wrote", c)
        assert any(concurrent(doc, a.change, b.change)
                   for a in by_value[values[0]] for b in by_value[values[1]]), (
            seed, "a conflict between writes that were not concurrent", c)
