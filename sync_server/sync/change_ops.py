"""What a batch touched, read from its own change bytes (not from a document diff).

Schema validation checks only the parts of a household a batch touched
(:mod:`sync_server.sync.touched`). Finding them with ``Document.diff(before,
after)`` costs time in proportion to the household's whole history (0.8 ms
per batch at 700 changes, docs/performance.md), whatever the batch's size.
This module reads the batch's operations from its changes instead, in
Automerge's columnar change format, and maps each operation's object to the
part of the household it lives in with a per-household :class:`ObjectIndex`.
The cost then follows the batch.

Only what the prefixes need is decoded: each operation's object, key, insert
flag and action (values and predecessors are skipped). A change chunk is::

    magic (4) | checksum (4) | type (1 = change) | length (uLEB)
    deps (uLEB count, 32-byte hashes) | actor (uLEB length, bytes) | seq (uLEB)
    start_op (uLEB) | time (sLEB) | message (uLEB length, UTF-8)
    other actors (uLEB count; each uLEB length, bytes)
    columns (uLEB count; each spec uLEB, length uLEB) | column data | extra bytes

where a column spec is ``id << 4 | deflate << 3 | type``. Operation ``i`` of
the change has the id ``(actor, start_op + i)``; an object is named by the id
of the operation that made it. Anything unexpected (a compressed column, an
object the index does not know, a key that is neither a string nor an
element) makes :meth:`ObjectIndex.touched` return ``None``, and the caller
falls back to the diff: this path may only ever skip work, never a check.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from automerge.core import ROOT, Document, ObjType

from conflict.paths import exid_op
from sync_server.protocol.preflight import MAGIC, FormatError, Reader

Prefix = tuple[str | int, ...]
#: where an object lives: a prefix, or ``(section, None)`` inside a list section's entry
Where = tuple[str | int | None, ...]
OpId = tuple[bytes, int]  # (actor, counter)

_CHANGE_CHUNK = 1

# column specs (id << 4 | type) of the columns read here
_OBJ_ACTOR, _OBJ_CTR = 0 << 4 | 1, 0 << 4 | 2
_KEY_ACTOR, _KEY_CTR, _KEY_STR = 1 << 4 | 1, 1 << 4 | 3, 1 << 4 | 5
_INSERT, _ACTION = 3 << 4 | 4, 4 << 4 | 2
_DEFLATE = 1 << 3

#: actions that make an object: map, list, text, table
_MAKE = frozenset({0, 2, 4, 6})
_DELETE = 3


#: Bytes this decoder does not understand (the caller falls back to the diff).
Unreadable = FormatError
_Reader = Reader


@dataclass(frozen=True, slots=True)
class Op:
    obj: OpId | None          # None: the root map
    key: str | OpId | None    # a map key, a list element's id, or None (the list's head)
    insert: bool
    action: int


@dataclass(frozen=True, slots=True)
class DecodedChange:
    actor: bytes
    start_op: int
    ops: list[Op]


# --- decoding --------------------------------------------------------------------------


def _rle(reader: _Reader, read_value: Callable[[_Reader], Any], limit: int) -> Iterator[Any]:
    """Automerge's run-length encoding: a signed count n, then one value repeated n times
    (n > 0), -n literal values (n < 0), or (n == 0) an unsigned count of nulls. More
    than ``limit`` values in all is refused (a run length is not trusted)."""
    total = 0
    while not reader.done():
        n = reader.sleb()
        count = abs(n) if n else reader.uleb()
        total += count
        if total > limit:
            raise Unreadable("a column holds more values than the change has operations")
        if n > 0:
            value = read_value(reader)
            for _ in range(n):
                yield value
        elif n < 0:
            for _ in range(-n):
                yield read_value(reader)
        else:
            for _ in range(count):
                yield None


def _string(reader: _Reader) -> str:
    try:
        return reader.take(reader.uleb()).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Unreadable("bad UTF-8") from exc


def _booleans(reader: _Reader, limit: int) -> Iterator[bool]:
    """Alternating run lengths, starting with a run of false."""
    value, total = False, 0
    while not reader.done():
        count = reader.uleb()
        total += count
        if total > limit:
            raise Unreadable("a column holds more values than the change has operations")
        for _ in range(count):
            yield value
        value = not value


def _deltas(reader: _Reader, limit: int) -> Iterator[int | None]:
    total = 0
    for delta in _rle(reader, _Reader.sleb, limit):
        if delta is None:
            yield None
        else:
            total += delta
            yield total


def decode_ops(raw: bytes, max_ops: int = 1 << 20) -> DecodedChange:
    """The operations of one uncompressed change chunk (``Change.raw_bytes``); a column
    with more than ``max_ops`` values (the change's operation count, when known) is
    refused."""
    r = _Reader(raw)
    if r.take(4) != MAGIC:
        raise Unreadable("not an Automerge chunk")
    r.take(4)  # checksum (Automerge verified the change when it applied it)
    if r.byte() != _CHANGE_CHUNK:
        raise Unreadable("not an uncompressed change chunk")
    body_end = r.uleb()
    body_end += r.pos
    r.end = min(body_end, len(raw))
    for _ in range(r.uleb()):
        r.take(32)  # deps
    actor = r.take(r.uleb())
    r.uleb()  # seq
    start_op = r.uleb()
    r.sleb()  # time
    r.take(r.uleb())  # message
    actors = [actor] + [r.take(r.uleb()) for _ in range(r.uleb())]
    columns = [(r.uleb(), r.uleb()) for _ in range(r.uleb())]
    ranges: dict[int, tuple[int, int]] = {}
    pos = r.pos
    for spec, length in columns:
        if spec & _DEFLATE:
            raise Unreadable("compressed column")
        ranges[spec] = (pos, pos + length)
        pos += length
    if pos > r.end:
        raise Unreadable("columns overrun the chunk")

    def column(spec: int) -> _Reader:
        start, end = ranges.get(spec, (0, 0))
        return _Reader(raw, start, end)

    def actor_at(index: int | None) -> bytes | None:
        if index is None:
            return None
        if index >= len(actors):
            raise Unreadable("actor index out of range")
        return actors[index]

    actions = list(_rle(column(_ACTION), _Reader.uleb, max_ops))
    n = len(actions)

    def padded(values: Iterator[Any]) -> list[Any]:
        out = list(values)
        if len(out) > n:
            raise Unreadable("column longer than the actions")
        return out + [None] * (n - len(out))

    obj_actor = padded(_rle(column(_OBJ_ACTOR), _Reader.uleb, n))
    obj_ctr = padded(_rle(column(_OBJ_CTR), _Reader.uleb, n))
    key_actor = padded(_rle(column(_KEY_ACTOR), _Reader.uleb, n))
    key_ctr = padded(_deltas(column(_KEY_CTR), n))
    key_str = padded(_rle(column(_KEY_STR), _string, n))
    insert = padded(_booleans(column(_INSERT), n))
    ops = []
    for i in range(n):
        if actions[i] is None:
            raise Unreadable("an operation without an action")
        a = actor_at(obj_actor[i])
        obj = None if a is None or obj_ctr[i] is None else (a, obj_ctr[i])
        key: str | OpId | None
        if key_str[i] is not None:
            key = key_str[i]
        elif key_ctr[i] == 0:
            key = None  # the head of a list
        elif key_ctr[i] is not None and key_actor[i] is not None:
            key = (actor_at(key_actor[i]), key_ctr[i])  # type: ignore[assignment]
        else:
            raise Unreadable("an operation without a key")
        ops.append(Op(obj, key, bool(insert[i]), actions[i]))
    return DecodedChange(actor, start_op, ops)


# --- the object index ------------------------------------------------------------------


class ObjectIndex:
    """Object id -> the household part it lives in: ``(section,)`` for a section itself,
    ``(section, key)`` for an entry of a map section and everything inside it, and
    ``(section, None)`` for anything inside an entry of a list section (the activity
    feed: indexes shift, so an edit there checks the whole section).

    Built by one walk of the document; kept up to date from the operations of every
    change the server accepts (:meth:`add`). An object it does not know sends the
    batch to the diff, never to a narrower check."""

    def __init__(self) -> None:
        self._where: dict[OpId, Where] = {}
        self.built = False
        self.wanted = False  # the caller's note that the index is worth building

    def build(self, doc: Document) -> None:
        self._where.clear()
        for section in doc.keys(ROOT):
            got = doc.get(ROOT, section)
            if got is None or not isinstance(got[0], ObjType):
                continue
            self._note(got[1], (section,))
            kind = got[0]
            children = (enumerate(doc.values(got[1])) if kind == ObjType.List
                        else zip(doc.keys(got[1]), doc.values(got[1]), strict=True)
                        if kind == ObjType.Map else ())
            for key, entry in children:
                if isinstance(entry[0], ObjType):
                    prefix = (section, None) if kind == ObjType.List else (section, key)
                    self._walk(doc, entry[1], entry[0], prefix)
        self.built = True

    def _walk(self, doc: Document, obj: Any, kind: ObjType, prefix: Where) -> None:
        self._note(obj, prefix)
        if kind in (ObjType.Map, ObjType.List):
            for entry in doc.values(obj):
                if isinstance(entry[0], ObjType):
                    self._walk(doc, entry[1], entry[0], prefix)

    def _note(self, exid: bytes, prefix: Where) -> None:
        op = exid_op(exid)
        if op is not None:
            self._where[op] = prefix

    def touched(self, doc: Document, changes: Sequence[Any], *,
                before: Document | None = None
                ) -> tuple[set[Prefix], dict[OpId, Where]] | None:
        """The prefixes ``changes`` touched in ``doc`` (which holds them), in the form of
        :func:`sync_server.sync.touched.touched_prefixes`, and the objects they made; or
        None when something is not understood. An index not built yet is built from
        ``before`` (the document without ``changes``: objects the batch deletes are
        still there), else from ``doc``."""
        if not self.built:
            self.build(doc if before is None else before)
        made: dict[OpId, Where] = {}
        out: set[Prefix] = set()
        try:
            decoded = [decode_ops(c.raw_bytes, c.max_op - c.start_op + 1) for c in changes]
        except Unreadable:
            return None
        positions: dict[str | int, _Positions] = {}  # per list section, for this batch
        for change in decoded:
            for i, op in enumerate(change.ops):
                prefix = self._prefix_of(doc, op, (change.actor, change.start_op + i), made,
                                         positions)
                if prefix is None:
                    return None
                out.update(prefix)
        return out, made

    def _prefix_of(self, doc: Document, op: Op, op_id: OpId, made: dict[OpId, Where],
                   positions: dict[str | int, _Positions]) -> list[Prefix] | None:
        if op.obj is None:  # a root field
            if not isinstance(op.key, str):
                return None
            touched: Prefix = (op.key,)
            if op.action in _MAKE:
                made[op_id] = touched
            return [touched]
        where = made.get(op.obj) or self._where.get(op.obj)
        if where is None:
            return None
        if len(where) >= 2:  # inside an entry
            if op.action in _MAKE:
                made[op_id] = where
            return [_prefix(where if where[1] is not None else where[:1])]
        section = where[0]
        if section is None:
            return None
        got = doc.get(ROOT, section)
        kind = got[0] if got is not None else None
        if kind == ObjType.Map and isinstance(op.key, str):
            if op.action == _DELETE:  # an entry removed: its section, and what refers to it
                return ([(section,), ("service_plan",), ("assessments",)]
                        if section == "members" else [(section,)])
            entry: Prefix = (section, op.key)
            if op.action in _MAKE:
                made[op_id] = entry
            return [entry]
        if kind == ObjType.List and op.insert and got is not None:
            if section not in positions:
                positions[section] = _Positions(doc, got[1])
            index = positions[section].index(op_id)
            if op.action in _MAKE:  # this batch may fill it in: checked at its index
                made[op_id] = (section, index)
            return [(section,) if index is None else (section, index)]
        return [(section,)]  # list edits in place, deletions, text splices: the section

    def add(self, made: dict[OpId, Where]) -> None:
        """Objects made by a change the server accepted (an index into a list section
        holds for one batch only: kept as ``(section, None)``)."""
        for op_id, prefix in made.items():
            if len(prefix) >= 2 and not isinstance(prefix[1], str):  # a list entry
                prefix = (prefix[0], None)
            self._where[op_id] = prefix

    def absorb(self, doc: Document, changes: Sequence[Any]) -> None:
        """Note the objects ``changes`` made (a change not checked through
        :meth:`touched`, such as the server's own); rebuild if they cannot be read."""
        if not self.built:
            return  # built from the document on first use
        found = self.touched(doc, changes)
        if found is None:
            self.build(doc)
        else:
            self.add(found[1])


def _prefix(where: Where) -> Prefix:
    """A place known to the segment (no ``None`` in it) as a prefix."""
    return tuple(seg for seg in where if seg is not None)


class _Positions:
    """Where a batch's inserted elements sit in one list: one walk from the end, where
    appends land, shared by every element of the batch (each lookup continues where the
    last stopped). Before, each element searched from the end again: a batch of n
    appends cost n²/2 reads, 14 s for 2,000 (issue 13, fault 6); now at most the list's
    length per batch, and about n for appends."""

    def __init__(self, doc: Document, lst: Any) -> None:
        self._doc, self._lst = doc, lst
        self._next = doc.length(lst) - 1
        self._seen: dict[OpId, int] = {}

    def index(self, op_id: OpId) -> int | None:
        if op_id in self._seen:
            return self._seen[op_id]
        while self._next >= 0:
            i, self._next = self._next, self._next - 1
            got = self._doc.get(self._lst, i)
            found = exid_op(got[1]) if got is not None else None
            if found is not None:
                self._seen[found] = i
                if found == op_id:
                    return i
        return None
