"""Three-way conflict detection on plain Automerge documents (pure logic, no server)."""

from __future__ import annotations

import pytest
from automerge.core import ROOT, Document, ScalarType

from conflict import Household, InvalidValueError, new_household_id
from conflict.paths import is_element_id
from sync_server.sync import conflicts

SERVER, ANA, NURSE = bytes([1]) * 16, bytes([2]) * 16, bytes([3]) * 16
HID = new_household_id()


def _put(doc: Document, key: str, value: str) -> None:
    with doc.transaction() as tx:
        tx.put(ROOT, key, ScalarType.Str, value)


def _scene() -> tuple[Document, list[bytes], list]:
    """A base with two fields; ana's change reaches the server first; the nurse's batch,
    made on the base, is merged after it. Returns (merged, server heads, the batch)."""
    base = Document(actor_id=SERVER)
    _put(base, "address", "Str. Lunga 3")
    _put(base, "notes_ref", "x")
    ana, nurse = base.fork(), base.fork()
    ana.set_actor(ANA)
    nurse.set_actor(NURSE)
    for _ in range(3):  # several changes: the op counter is not the change's first
        _put(ana, "notes_ref", "y")
    _put(ana, "address", "Str. Morii 12A")
    _put(nurse, "address", "Strada Morii nr. 12")
    server = base.fork()
    server.merge(ana)
    heads = server.get_heads()
    new = nurse.get_changes(base.get_heads())
    server.merge(nurse)
    return server, heads, new


def test_a_concurrent_different_value_is_a_conflict_with_the_writing_change() -> None:
    merged, heads, new = _scene()
    [found] = conflicts.detect(merged, heads, new)
    assert found.path == ("address",)
    assert (found.server_value, found.device_value) == ("Str. Morii 12A", "Strada Morii nr. 12")
    ana_changes = [c for c in merged.get_changes([]) if c.actor_id == ANA]
    assert found.server_change == ana_changes[-1].hash  # the change that wrote the address


def test_a_batch_that_saw_the_server_is_no_conflict() -> None:
    merged, _, _ = _scene()
    before = merged.get_heads()
    later = merged.fork()
    later.set_actor(NURSE)
    _put(later, "address", "Str. Morii 14")
    new = later.get_changes(before)
    merged.merge(later)
    assert conflicts.detect(merged, before, new) == []


def test_op_change_finds_nothing_for_an_unknown_or_short_id() -> None:
    merged, _, _ = _scene()
    assert conflicts.op_change(b"\x10\x10" + bytes(16) + b"\x00\x01", merged.get_changes([])) is None
    assert conflicts.op_change(b"\x10", merged.get_changes([])) is None


def test_a_concurrent_write_that_lost_the_tie_break_still_makes_a_conflict() -> None:
    """The server holds A2 (winner) and A3 (a concurrent write that lost to it); a device
    that saw only A2 writes A6. A3 and A6 were written concurrently: a conflict, although
    the server's visible value is the one the device saw.

    Before, that conflict named A2 against A6: the value the device had seen and
    deliberately replaced, written by someone who had not written concurrently with it,
    so a supervisor was shown a "conflict" between a worker and the edit she built on.
    Found by the feed property test (``tests/test_feed_property_functional.py``, seed
    1004: ana wrote 5, the nurse 8 concurrently and lost; the counsellor saw 5 and wrote
    19; "5 against 19" was recorded). Now the conflict names A3 and the change that
    wrote it."""
    origin = Document(actor_id=SERVER)
    _put(origin, "address", "A0")
    t0, t1 = origin.fork(), origin.fork()
    t0.set_actor(bytes([0x20]) * 16)
    t1.set_actor(bytes([0x10]) * 16)  # the smaller actor id loses the tie-break
    _put(t0, "address", "A2")
    _put(t1, "address", "A3")
    server = origin.fork()
    server.merge(t0)
    device = server.fork()  # the device syncs now: it has seen A2, not A3
    device.set_actor(bytes([0x05]) * 16)
    server.merge(t1)
    heads = server.get_heads()
    assert conflicts.scalar_at(server, ("address",), heads) == (True, "A2")
    before = device.get_heads()
    _put(device, "address", "A6")
    new = device.get_changes(before)
    server.merge(device)
    [found] = conflicts.detect(server, heads, new)
    assert (found.server_value, found.device_value) == ("A3", "A6")
    assert found.server_change == t1.get_changes(origin.get_heads())[0].hash


# -- lists are not fields (issue 12) ------------------------------------------------------


def _feed_scene():
    """A household with one activity entry; two workers append to the feed offline (a
    visit note, a phone call); the call reaches the server first."""
    h = Household.create(locality="54975", county="CJ", address="Str. Lunga 3",
                         author="ana", actor_id=SERVER, household_id=HID)
    h.as_author("ana").append_activity("visit", "first visit")
    base = h.doc.get_heads()
    ana, ion = h.doc.fork(), h.doc.fork()
    ana.set_actor(ANA)
    ion.set_actor(NURSE)
    Household(ana, h.household_id).as_author("ana").append_activity("visit", "visit note: the boy is ill")
    Household(ion, h.household_id).as_author("ion").append_activity("call", "phone call with the school")
    server = h.doc.fork()
    server.merge(ion)
    return server, ana, base


def test_concurrent_appends_to_the_feed_are_no_conflict() -> None:
    """Before: two workers appending to the activity feed offline made the server record
    conflicts on ``activity/N/by``, ``kind`` and ``text``: entry N was the visit note at
    one device's heads and the phone call at the server's. Reproduced with two forks
    appending one entry each. Now the fields are known by the element that holds them:
    the appended element did not exist at the server's heads, so nothing conflicts."""
    server, ana, base = _feed_scene()
    heads = server.get_heads()
    new = ana.get_changes(base)
    server.merge(ana)
    assert conflicts.detect(server, heads, new) == []
    texts = sorted(e["text"] for e in Household(server, HID).activity())
    assert texts == ["", "first visit", "phone call with the school",
                     "visit note: the boy is ill"]  # "" is the registration's entry


def test_a_conflict_inside_a_list_element_names_the_element_and_resolves_only_it() -> None:
    """Two devices rewrite the same entry's text concurrently while the other appends:
    one conflict, whose path names the entry by its id; resolving it writes that entry,
    wherever the merge has put it, and nothing else."""
    server, ana, base = _feed_scene()
    assert Household(ana, HID).activity()[1]["text"] == "first visit"
    for doc, text in ((ana, "first visit (edited by ana)"), (server, "first visit (ion)")):
        feed = doc.get(ROOT, "activity")[1]
        entry = doc.get(feed, 1)[1]
        with doc.transaction() as tx:
            tx.put(entry, "text", ScalarType.Str, text)
    heads = server.get_heads()
    new = ana.get_changes(base)
    server.merge(ana)
    [found] = conflicts.detect(server, heads, new)
    assert found.path[0] == "activity" and is_element_id(found.path[1])
    assert found.path[2:] == ("text",)
    assert {found.server_value, found.device_value} == {"first visit (edited by ana)",
                                                        "first visit (ion)"}
    h = Household(server, HID)
    cid = h.record_conflict(found.path, [found.server_value, found.device_value])
    before = {i: dict(e) for i, e in enumerate(h.activity())}
    h.as_author("ana").resolve_conflict(cid, "first visit (ion)")
    after = {i: dict(e) for i, e in enumerate(h.activity())}
    changed = [i for i in before if before[i] != after[i]]
    assert [after[i]["text"] for i in changed] in ([], ["first visit (ion)"])
    assert sum(e["text"] == "first visit (ion)" for e in after.values()) == 1
    assert len(after) == 4  # the two appended entries are both there, untouched
    assert {e["text"] for e in after.values()} >= {"phone call with the school",
                                                    "visit note: the boy is ill"}


def test_a_conflict_recorded_by_position_is_not_resolved_by_writing_there() -> None:
    """A conflict recorded by an older server names a feed entry by position; that
    position may hold another entry by now, so resolving it refuses (``list-position``)
    instead of overwriting whichever entry is there."""
    server, _, _ = _feed_scene()
    h = Household(server, HID)
    cid = h.record_conflict(("activity", 1, "text"), ["a", "b"])
    with pytest.raises(InvalidValueError) as err:
        h.as_author("ana").resolve_conflict(cid, "a")
    assert err.value.rule == "list-position"
