"""Validating only what a batch touched finds exactly what validating everything finds
(on a household that was valid before the batch), whether the touched parts are read
from a document diff or from the batch's own operations: property-based, pure logic."""

from __future__ import annotations

from datetime import UTC, datetime

from automerge.core import ROOT, ObjType, ScalarType
from hypothesis import given, settings
from hypothesis import strategies as st

from conflict import Household, validate
from conflict.policy import attribution_violations
from sync_server.sync.change_ops import ObjectIndex, Unreadable, _Reader, _rle, decode_ops
from sync_server.sync.checks import schema_violations
from sync_server.sync.touched import touched_prefixes


def base() -> tuple[Household, str, str, str]:
    h = Household.create(locality="54975", county="CJ", address="Str. Lunga 3",
                         author="sw")
    pid = h.add_member("Ana", "Pop", "2015-04-01", "F", "child")
    aid = h.as_author("sw").start_assessment()
    sid = h.plan_service("counselling", pid, "school_absenteeism", "2026-12-20")
    for i in range(5):
        h.as_author("sw").append_activity("visit", f"visit {i}")
    return h, pid, aid, sid


def edit(h: Household, pid: str, aid: str, sid: str, kind: int, n: int) -> None:
    d = h.doc
    members = d.get(ROOT, "members")[1]
    got = d.get(members, pid)
    if got is None and kind in (1, 2, 5):
        return  # the member was deleted by an earlier edit of this batch
    member = got[1] if got is not None else None
    plan = d.get(ROOT, "service_plan")[1]
    service = d.get(plan, sid)[1]
    with d.transaction() as tx:
        if kind == 0:
            h_addr = f"Str. {n}"
            tx.put(ROOT, "address", ScalarType.Str, h_addr)
        elif kind == 1:
            tx.put(member, "presence", ScalarType.Str, "somewhere")     # bad enum
        elif kind == 2:
            tx.put(member, "birth_date", ScalarType.Int, n)             # bad type
        elif kind == 3:
            tx.put(service, "person_id", ScalarType.Str, "00000000-0000-4000-8000-000000000000")
        elif kind == 4:
            entry = tx.insert_object(d.get(ROOT, "activity")[1], 0, ObjType.Map)
            tx.put(entry, "at", ScalarType.Str, "yesterday")            # bad format
        elif kind == 5:
            tx.delete(members, pid)                                     # dangling references
        elif kind == 6:
            tx.put(ROOT, "status", ScalarType.Str, "active")
        elif kind == 7:
            tx.put(d.get(d.get(ROOT, "assessments")[1], aid)[1], "by", ScalarType.Int, n)
        elif kind == 8:
            tx.put(ROOT, "county", ScalarType.Str, "cluj")              # bad format
        else:
            text = d.get(ROOT, "notes")[1]
            tx.splice_text(text, 0, 0, f"note {n} ")


@settings(max_examples=120, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 9), st.integers(0, 999)), min_size=1, max_size=4))
def test_touched_validation_equals_full_validation(edits) -> None:
    h, pid, aid, sid = base()
    assert validate(h.doc) == []
    before = h.doc.get_heads()
    for kind, n in edits:
        edit(h, pid, aid, sid, kind, n)
    assert touched_prefixes(h.doc, before) is not None  # the fast path was taken
    full = {(v.path, v.rule) for v in validate(h.doc)}
    touched = {(v.path, v.rule) for v in schema_violations(h.doc, before)}
    assert touched == full


def test_an_unreadable_key_widens_the_check_to_its_whole_section() -> None:
    h, *_ = base()
    before = h.doc.get_heads()
    with h.doc.transaction() as tx:  # a client-chosen key with a quote in it
        tx.put_object(h.doc.get(ROOT, "members")[1], 'Ana "the" Pop', ObjType.Map)
    assert touched_prefixes(h.doc, before) in (None, {("members",)})  # never narrower
    assert {(v.path, v.rule) for v in schema_violations(h.doc, before)} == \
        {(v.path, v.rule) for v in validate(h.doc)} != set()


@settings(max_examples=120, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 9), st.integers(0, 999)), min_size=1, max_size=4),
       st.booleans())
def test_the_batchs_operations_give_the_same_validation(edits, build_first) -> None:
    """The object index (built before the batch, or on first use) reads
    prefixes from the batch's operations; validating them equals validating everything,
    and they never leave out a prefix the diff finds."""
    h, pid, aid, sid = base()
    index = ObjectIndex()
    if build_first:
        index.build(h.doc)
    original = h.doc.fork()
    before = h.doc.get_heads()
    for kind, n in edits:
        edit(h, pid, aid, sid, kind, n)
    read = index.touched(h.doc, h.doc.get_changes(before), before=original)
    assert read is not None  # every object of this household is known
    prefixes, _ = read
    diff = touched_prefixes(h.doc, before)
    assert diff is not None
    # each prefix the diff finds is covered by one read from the operations
    assert all(any(p[:len(q)] == q for q in prefixes) for p in diff)
    full = {(v.path, v.rule) for v in validate(h.doc)}
    touched = {(v.path, v.rule) for v in schema_violations(h.doc, touched=prefixes)}
    assert touched == full


def test_objects_made_by_an_accepted_batch_are_known_to_the_next() -> None:
    h, *_ = base()
    index = ObjectIndex()
    index.build(h.doc)
    before = h.doc.get_heads()
    h.as_author("sw").append_activity("visit", "one more")  # a new map in the feed
    read = index.touched(h.doc, h.doc.get_changes(before))
    assert read is not None
    prefixes, made = read
    n = len(h.to_dict()["activity"]) - 1
    assert prefixes == {("activity", n)}  # only the new entry is checked
    index.add(made)
    before = h.doc.get_heads()
    pid2 = h.add_member("Ion", "Pop", "2012-02-02", "M", "child")
    read = index.touched(h.doc, h.doc.get_changes(before))
    assert read is not None and read[0] == {("members", pid2)}


class CountingDoc:
    """A document that counts element reads (``get`` with an index)."""

    def __init__(self, doc) -> None:
        self._doc, self.reads = doc, 0

    def get(self, obj, key, *heads):
        if isinstance(key, int):
            self.reads += 1
        return self._doc.get(obj, key, *heads)

    def __getattr__(self, name):
        return getattr(self._doc, name)


def test_a_batch_of_appends_costs_reads_in_proportion_to_the_batch() -> None:
    """Before (issue 13, fault 6): a household growing by batches of 2,000 feed entries
    took 12-19 s a batch and stalled the server: finding where each appended entry sat
    searched the feed from its end again, n²/2 reads for n appends (500 -> 0.8 s,
    2,000 -> 14 s). Reproduced by counting the element reads of one batch of 600
    appends to a feed of 600. Now one walk serves the whole batch."""
    h, *_ = base()
    author = h.as_author("sw")
    for i in range(600):
        author.append_activity("visit", f"old {i}")
    index = ObjectIndex()
    index.build(h.doc)
    before = h.doc.get_heads()
    for i in range(600):
        author.append_activity("visit", f"new {i}")
    counting = CountingDoc(h.doc)
    read = index.touched(counting, h.doc.get_changes(before))  # type: ignore[arg-type]
    assert read is not None
    n = len(h.to_dict()["activity"])
    assert read[0] == {("activity", i) for i in range(n - 600, n)}
    assert counting.reads <= 2 * 600  # was 180,300


def test_unreadable_bytes_are_refused_not_guessed() -> None:
    h, *_ = base()
    raw = h.doc.get_changes([])[0].raw_bytes
    for broken in (raw[:20], b"\x00" * 12, raw[:8] + b"\x02" + raw[9:]):
        try:
            decode_ops(broken)
        except ValueError:
            continue
        raise AssertionError("decoded bytes it should not understand")


def test_a_run_length_is_not_trusted_beyond_the_operation_count() -> None:
    """A null run claiming 2**40 values is refused at once, not expanded."""
    huge_nulls = bytes([0x00]) + bytes([0x80, 0x80, 0x80, 0x80, 0x80, 0x20])  # 0, then 2**40
    try:
        list(_rle(_Reader(huge_nulls), _Reader.uleb, limit=10))
    except Unreadable:
        pass
    else:
        raise AssertionError("expanded an oversized run")
    assert list(_rle(_Reader(bytes([0x00, 0x03])), _Reader.uleb, limit=3)) == [None] * 3
    h, *_ = base()
    c = h.doc.get_changes([])[0]
    assert len(decode_ops(c.raw_bytes, c.max_op - c.start_op + 1).ops) == c.max_op - c.start_op + 1


def forge(h: Household, aid: str, kind: int, n: int) -> None:
    """One edit of a batch by "ana" that does (or does not) break the attribution rule."""
    d = h.doc
    feed = d.get(ROOT, "activity")[1]
    old = d.get(feed, n % d.length(feed))[1]
    with d.transaction() as tx:
        if kind in (0, 1):  # an entry appended (or put first) naming someone else
            entry = tx.insert_object(feed, d.length(feed) if kind == 0 else 0, ObjType.Map)
            for key, value in (("at", "2026-01-01T00:00:00Z"), ("by", "ion"),
                               ("kind", "visit"), ("text", f"forged {n}")):
                tx.put(entry, key, ScalarType.Str, value)
        elif kind == 2:  # someone else's entry re-attributed
            tx.put(old, "by", ScalarType.Str, "ion")
        elif kind == 3:  # an entry's time moved into the future
            tx.put(old, "at", ScalarType.Str, "2099-01-01T00:00:00Z")
        elif kind == 4:  # an assessment re-attributed
            tx.put(d.get(d.get(ROOT, "assessments")[1], aid)[1], "by", ScalarType.Str, "ion")
    if kind == 5:  # ana's own entry: no violation
        h.as_author("ana").append_activity("visit", f"own {n}")


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 99)), min_size=1, max_size=4))
def test_attribution_of_the_touched_entries_equals_attribution_of_all(edits) -> None:
    """The attribution rule reads only the entries a batch touched (issue 13, fault 6:
    comparing every feed entry before and after cost 0.65 s per batch on a 20,000-entry
    feed, on the event loop); it finds exactly what comparing every entry finds."""
    h, _, aid, _ = base()
    index = ObjectIndex()
    index.build(h.doc)
    original = h.doc.fork()
    before = h.doc.get_heads()
    for kind, n in edits:
        forge(h, aid, kind, n)
    read = index.touched(h.doc, h.doc.get_changes(before), before=original)
    assert read is not None
    prefixes = read[0]
    now = datetime.now(UTC)
    sections = {str(p[0]) for p in prefixes}
    full = {(v.path, v.rule) for v in attribution_violations(original, h.doc, "ana", now)}
    touched = {(v.path, v.rule) for v in attribution_violations(
        original, h.doc, "ana", now, sections, prefixes)}
    assert touched == full


class ReadCountingDoc:
    """A document that counts the values it hands out (``get``, and each item of
    ``values`` and ``keys``)."""

    def __init__(self, doc) -> None:
        self._doc, self.reads = doc, 0

    def get(self, *args):
        self.reads += 1
        return self._doc.get(*args)

    def values(self, *args):
        got = self._doc.values(*args)
        self.reads += len(got)
        return got

    def keys(self, *args):
        got = self._doc.keys(*args)
        self.reads += len(got)
        return got

    def __getattr__(self, name):
        return getattr(self._doc, name)


def test_the_attribution_check_costs_reads_in_proportion_to_the_batch() -> None:
    """Before (issue 13, fault 6): checking a batch's attributions compared every entry
    of the feed before and after the batch; on a 20,000-entry feed that was 0.65 s a
    batch, on the event loop. Reproduced by counting the values read for a batch of 3
    appends (one forged) to a feed of 600: now a few dozen, and the forgery is found."""
    h, *_ = base()
    for i in range(600):
        h.as_author("sw").append_activity("visit", f"old {i}")
    index = ObjectIndex()
    index.build(h.doc)
    original = h.doc.fork()
    before = h.doc.get_heads()
    h.as_author("ana").append_activity("visit", "mine")
    forge(h, "", 0, 0)
    h.as_author("ana").append_activity("visit", "mine too")
    prefixes, _ = index.touched(h.doc, h.doc.get_changes(before), before=original)
    after, was = ReadCountingDoc(h.doc), ReadCountingDoc(original)
    [v] = attribution_violations(was, after, "ana", datetime.now(UTC),  # type: ignore[arg-type]
                                 {"activity"}, prefixes)
    assert v.path[0] == "activity" and v.path[2] == "by"
    assert after.reads + was.reads <= 60
    every = ReadCountingDoc(h.doc)
    attribution_violations(original, every, "ana", datetime.now(UTC),  # type: ignore[arg-type]
                           {"activity"})
    assert every.reads > 1200  # the old way: every entry, in both documents
