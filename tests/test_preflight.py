"""The preflight walk of a device's sync message (sync_server/protocol/preflight.py), as pure logic.

Every message the binding itself produces must pass; every bomb must be refused with the
limit it breaks, and before anything of it is inflated or allocated."""

from __future__ import annotations

import zlib

import pytest
from _automerge_bytes import chunk, sleb, sync_message, uleb, with_column
from automerge.core import ROOT, Document, Message, ObjType, ScalarType, SyncState
from hypothesis import given, settings
from hypothesis import strategies as st

from sync_server.protocol.errors import DocumentError, ErrorCode
from sync_server.protocol.preflight import Limits, Reader, check_sync_message


def message(*, heads: int = 0, haves: tuple[bytes, ...] = (),
            changes: tuple[bytes, ...] | list[bytes] = ()) -> bytes:
    return sync_message(heads=heads, haves=haves, changes=tuple(changes))


DEFAULT = Limits()


def refused(data: bytes, limits: Limits = DEFAULT) -> DocumentError:
    with pytest.raises(DocumentError) as info:
        check_sync_message(data, limits, document_id="h")
    assert info.value.document_id == "h"
    return info.value


def exchange(src: Document, dst: Document) -> list[bytes]:
    """Every message of a full sync from ``src`` to ``dst`` and back."""
    out, s1, s2 = [], SyncState(), SyncState()
    for _ in range(10):
        m = src.generate_sync_message(s1)
        if m is None:
            break
        out.append(m.encode())
        dst.receive_sync_message(s2, Message.decode(out[-1]))
        r = dst.generate_sync_message(s2)
        if r is None:
            break
        out.append(r.encode())
        src.receive_sync_message(s1, Message.decode(out[-1]))
    return out


edits = st.lists(st.tuples(st.sampled_from(["put", "insert", "text", "delete", "counter"]),
                           st.integers(0, 30), st.text(max_size=80)), min_size=1, max_size=40)


@settings(max_examples=60, deadline=None)
@given(batches=st.lists(edits, min_size=1, max_size=6), fork=st.booleans())
def test_every_message_the_binding_makes_passes(batches, fork: bool) -> None:
    doc = Document()
    with doc.transaction() as tx:
        m = tx.put_object(ROOT, "m", ObjType.Map)
        lst = tx.put_object(ROOT, "l", ObjType.List)
        text = tx.put_object(ROOT, "t", ObjType.Text)
    other = doc.fork() if fork else Document()
    for batch in batches:
        with doc.transaction() as tx:
            for op, n, s in batch:
                if op == "put":
                    tx.put(m, f"k{n}", ScalarType.Str, s)
                elif op == "insert":
                    tx.insert(lst, 0, ScalarType.Int, n)
                elif op == "text":
                    tx.splice_text(text, 0, 0, s)
                elif op == "delete" and tx.length(lst):
                    tx.delete(lst, 0)
                else:
                    tx.put(m, "n", ScalarType.F64, n / 7)
    for data in exchange(doc, other):
        cost = check_sync_message(data)
        assert cost.ops <= Limits().max_ops


def test_a_compressed_chunk_of_zeros_is_refused_without_inflating_it() -> None:
    import tracemalloc

    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    bomb = deflate.compress(bytes(64 * 1024 * 1024)) + deflate.flush()
    data = message(changes=[chunk(2, bomb)])
    tracemalloc.start()
    try:
        err = refused(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert err.code == ErrorCode.LIMIT_EXCEEDED and "inflated" in err.message
    assert peak < 4 * 1024 * 1024  # measured a megabyte at a time, never kept


def test_a_document_chunk_merging_thousands_of_times_passes() -> None:
    """Found in review: the changes of a document chunk were counted from its busiest
    change column, the dependencies, so two replicas that merged 2,600 times (5,200
    changes, 10,396 dependencies) made a message the binding sends, refused as "more
    than 10000 changes"."""
    a = Document()
    b = a.fork()
    for i in range(2600):
        with a.transaction() as tx:
            tx.put(ROOT, "a", ScalarType.Int, i)
        with b.transaction() as tx:
            tx.put(ROOT, "b", ScalarType.Int, i)
        a.merge(b)
        b.merge(a)
    cost = check_sync_message(message(changes=[a.save()]))
    assert cost.changes == 5200
    for data in exchange(a, Document()):
        check_sync_message(data)


def test_reading_a_message_is_bounded_too() -> None:
    """Found in review: the walk itself ran one Python loop turn per run, with the row
    limit per column, so a 4 MB chunk of one-row runs cost 1.4 s to refuse. Now the
    walk's turns are counted against ``max_walk_steps`` for the whole message."""
    doc = Document()
    with doc.transaction() as tx:
        tx.put(ROOT, "a", ScalarType.Int, 1)
    raw = doc.get_changes([])[0].raw_bytes
    # the pred group column (0x70) as 450,000 literal values, each read one by one
    err = refused(message(changes=[with_column(raw, 0x70, sleb(-450_000) + bytes(450_000))]))
    assert err.code == ErrorCode.LIMIT_EXCEEDED and "runs or values" in err.message


def test_unknown_or_unordered_document_columns_are_malformed() -> None:
    doc = Document()
    with doc.transaction() as tx:
        tx.put(ROOT, "a", ScalarType.Int, 1)
    saved = doc.save()
    assert check_sync_message(message(changes=[saved])).ops == 1
    # the first op column's spec rewritten to one Automerge does not know (id 15)
    r = Reader(saved, 9)
    r.uleb()
    for _ in range(r.uleb()):
        r.skip(r.uleb())
    r.skip(32 * r.uleb())
    for _ in range(r.uleb()):  # change columns
        r.uleb(), r.uleb()
    r.uleb()  # op column count
    at = r.pos
    bad = saved[:at] + bytes([0x7F]) + saved[at + 1:]
    assert refused(message(changes=[bad])).code == ErrorCode.MALFORMED_SYNC_DATA


def test_bloom_filters_are_bounded() -> None:
    probes = uleb(1) + uleb(10) + uleb(2**31 - 1) + b"\xff\xff"
    assert refused(message(haves=(probes,))).code == ErrorCode.LIMIT_EXCEEDED
    no_bits = uleb(5) + uleb(0) + uleb(7)  # the binding divides by the bit count
    assert refused(message(haves=(no_bits,))).code == ErrorCode.MALFORMED_SYNC_DATA
    # five empty filters: over the four a message may hold
    assert refused(message(haves=(b"",) * 5)).code == ErrorCode.LIMIT_EXCEEDED


def test_counts_are_bounded_before_they_are_read() -> None:
    assert refused(message(heads=1025)).code == ErrorCode.LIMIT_EXCEEDED
    assert refused(b"\x42" + uleb(2**62)).code == ErrorCode.LIMIT_EXCEEDED


def run_length_bomb(rows: int, action: int = 1) -> bytes:
    """A one-operation change whose action column (spec ``0x42``) is rewritten as one run
    of ``rows`` operations: a few bytes that declare any number of them."""
    doc = Document()
    with doc.transaction() as tx:
        tx.put(ROOT, "a", ScalarType.Int, 1)
    return with_column(doc.get_changes([])[0].raw_bytes, 0x42, sleb(rows) + bytes([action]))


def test_a_run_length_bomb_of_operations_is_refused() -> None:
    err = refused(message(changes=[run_length_bomb(10**9)]))
    assert err.code == ErrorCode.LIMIT_EXCEEDED and "operations" in err.message
    assert check_sync_message(message(changes=[run_length_bomb(50)])).ops == 50


def test_deletions_are_counted_apart() -> None:
    """A run of deletions costs the binding ~7 µs each and more as the text grows, so
    they have their own, lower limit."""
    err = refused(message(changes=[run_length_bomb(150_000, action=3)]))
    assert err.code == ErrorCode.LIMIT_EXCEEDED and "delete" in err.message
    assert check_sync_message(message(changes=[run_length_bomb(150_000)])).ops == 150_000


def test_unknown_chunk_types_and_bad_magic_are_malformed() -> None:
    assert refused(message(changes=[chunk(3, b"")])).code == ErrorCode.MALFORMED_SYNC_DATA
    assert refused(message(changes=[b"\x00" * 20])).code == ErrorCode.MALFORMED_SYNC_DATA
    assert refused(b"\x41").code == ErrorCode.MALFORMED_SYNC_DATA


def test_limits_are_settings() -> None:
    doc = Document()
    with doc.transaction() as tx:
        for i in range(20):
            tx.put(ROOT, f"k{i}", ScalarType.Int, i)
    changes = [c.raw_bytes for c in doc.get_changes([])]
    assert check_sync_message(message(changes=changes)).ops == 20
    assert refused(message(changes=changes), Limits(max_ops=19)).code == ErrorCode.LIMIT_EXCEEDED
    assert refused(message(changes=changes * 2), Limits(max_changes=1)).code \
        == ErrorCode.LIMIT_EXCEEDED
