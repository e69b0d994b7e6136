"""Three-way conflict detection on plain Automerge documents (pure logic, no server)."""

from __future__ import annotations

from automerge.core import ROOT, Document, ScalarType

from sync_server.sync import conflicts

SERVER, ANA, NURSE = bytes([1]) * 16, bytes([2]) * 16, bytes([3]) * 16


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
    the server's visible value is the one the device saw."""
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
    assert (found.server_value, found.device_value) == ("A2", "A6")
    assert found.server_change == t0.get_changes(origin.get_heads())[0].hash
