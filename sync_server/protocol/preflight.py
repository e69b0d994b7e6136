"""What a device's sync message may cost, bounded before Automerge reads a byte of it.

The Automerge binding trusts the counts and lengths inside a sync message: it
reserves memory for a declared number of Bloom-filter probes, inflates a
compressed change with no bound, and materialises run-length-encoded columns
of any declared length. A device is not trusted (docs/security.md), so every
``sync`` and ``request`` payload is walked here first, in pure Python, at a
cost linear in its bytes, and refused before the binding sees it:

* ``limit-exceeded`` — a count or size over :class:`Limits` (documented in
  docs/security.md, "Abuse limits");
* ``malformed-sync-data`` — not the format below.

A sync message (Automerge 0.7, the binding's version; ``uLEB`` is unsigned
LEB128, ``hashes`` is a uLEB count then that many 32-byte change hashes)::

    0x42 or 0x43 | heads: hashes | need: hashes
    haves: uLEB count, each (last_sync: hashes | bloom: uLEB length, bytes)
    changes: uLEB count, each (uLEB length, bytes) | [flags: uLEB length, bytes]

    bloom:  [num_entries uLEB | bits_per_entry uLEB | probes uLEB | ceil(entries*bits/8) bytes]

The ``changes`` entries are concatenated and read as a sequence of chunks::

    magic 85 6f 4a 83 | checksum (4) | type (1) | uLEB length | body
    type 1 change:      deps: hashes | actor | seq | start_op | time | message
                        | other actors | columns | column data
    type 2 compressed:  a raw-deflated type-1 body
    type 0 document:    actors | heads: hashes | change columns | op columns
                        | change data | op data | head indexes

where ``columns`` is a uLEB count then (spec, length) pairs, and a spec is
``id << 4 | deflate << 3 | type``. Document columns may be deflated; they are
inflated here against the message's budget. Every column but raw values is
walked run by run (Automerge's RLE: a signed count n, then one value repeated
n times, -n literal values, or 0 and an unsigned count of nulls; booleans are
alternating run lengths), so its row count, the sum of a group column and the
value lengths a metadata column declares are known before anything is
allocated for them.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from dataclasses import dataclass

from sync_server.protocol.errors import DocumentError, ErrorCode, VatraError

MAGIC = bytes.fromhex("856f4a83")
_HASH = 32

# chunk types
_DOCUMENT, _CHANGE, _COMPRESSED = 0, 1, 2

# column types (the low three bits of a spec)
_GROUP, _ACTOR, _ULEB, _DELTA, _BOOL, _STRING, _VALUE_META, _VALUE = range(8)
_DEFLATE = 1 << 3
_PIECE = 1 << 20  # inflated a megabyte at a time
#: a change's action column: the binding reads one operation per row of it, and every
#: other column of the change in step with it (so only this one, the group columns and
#: the value lengths can make it do more than the bytes say)
_ACTION = 4 << 4 | _ULEB
_DELETE = 3  # the action of a delete operation
#: the columns of a document chunk Automerge 0.7 knows (it loads each with its own
#: length, so all are walked); a spec outside these, or out of order, is malformed
_DOC_CHANGE_COLUMNS = frozenset({0x01, 0x03, 0x13, 0x23, 0x35, 0x40, 0x43, 0x56, 0x57})
_DOC_OP_COLUMNS = frozenset({0x01, 0x02, 0x11, 0x13, 0x15, 0x21, 0x23, 0x34, 0x42, 0x56,
                             0x57, 0x80, 0x81, 0x83, 0x94, 0xA5})
_DOC_CHANGE_ACTOR = 0x01  # one row per change


@dataclass(frozen=True, slots=True)
class Limits:
    """What one sync message from a device may hold (settings: ``VATRA_MAX_*``)."""

    #: change chunks in a message, and changes inside a document chunk
    max_changes: int = 10_000
    #: operations in all chunks of a message (a column's rows, a group's members)
    max_ops: int = 250_000
    #: delete operations in the changes of a message (each costs the binding ~7 µs)
    max_deletes: int = 100_000
    #: steps of the walk itself (runs, and values read one by one), so that walking a
    #: message costs at most ~0.3 s of Python whatever its shape
    max_walk_steps: int = 400_000
    #: bytes of all chunks once inflated
    max_inflated_bytes: int = 32 * 1024 * 1024
    #: hashes in ``heads``, ``need``, one ``last_sync`` or one change's ``deps``
    max_hashes: int = 1024
    #: ``have`` entries (Automerge sends one)
    max_haves: int = 4
    #: Bloom filter probes per hash (Automerge uses 7) and bits per entry (10)
    max_bloom_probes: int = 32
    max_bloom_bits_per_entry: int = 64
    #: actors named in one chunk, and bytes of one actor id (Automerge's are 16)
    max_actors: int = 1024
    max_actor_bytes: int = 64
    #: columns in one column list
    max_columns: int = 64


DEFAULT_LIMITS = Limits()


@dataclass(slots=True)
class Cost:
    """What a message holds, as counted here (the binding does at most this much)."""

    changes: int = 0
    ops: int = 0
    deletes: int = 0
    inflated_bytes: int = 0
    steps: int = 0


class FormatError(DocumentError, ValueError):
    """Bytes that are not the format (also raised by :mod:`sync_server.sync.change_ops`)."""

    code = ErrorCode.MALFORMED_SYNC_DATA


class _Exceeded(VatraError):
    code = ErrorCode.LIMIT_EXCEEDED


@dataclass(frozen=True, slots=True)
class ChangeHeader:
    """What a change chunk says of itself, read without applying it."""

    hash: bytes
    actor: bytes
    seq: int
    deps: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Contents:
    """The changes a sync message carries (and how many whole-document chunks)."""

    changes: tuple[ChangeHeader, ...]
    documents: int


def read_sync_message(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Contents:
    """The changes ``data`` carries, bounded and read as :func:`check_sync_message` reads
    them, without Automerge: a refused batch can be reviewed whatever has happened to its
    household since (a tablet that recovered from a refusal reuses the refused changes'
    sequence numbers, so they no longer apply to the stored household)."""
    walk = _Walk(data, limits)
    try:
        walk.message()
    except _Exceeded as exc:
        raise DocumentError(f"sync message over a limit: {exc}",
                            code=ErrorCode.LIMIT_EXCEEDED) from None
    except FormatError as exc:
        raise DocumentError(f"sync data is not a valid Automerge sync message ({exc})",
                            code=ErrorCode.MALFORMED_SYNC_DATA) from None
    return Contents(tuple(walk.headers), walk.documents)


def _uleb_bytes(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def check_sync_message(data: bytes, limits: Limits = DEFAULT_LIMITS, *,
                       document_id: str | None = None) -> Cost:
    """Walk ``data`` (one Automerge sync message from a device) and return its cost, or
    raise :class:`DocumentError` with ``limit-exceeded`` or ``malformed-sync-data``. The
    message names the limit, never content."""
    try:
        return _Walk(data, limits).message()
    except _Exceeded as exc:
        raise DocumentError(f"sync message over a limit: {exc}",
                            code=ErrorCode.LIMIT_EXCEEDED, document_id=document_id) from None
    except FormatError as exc:
        raise DocumentError(f"sync data is not a valid Automerge sync message ({exc})",
                            code=ErrorCode.MALFORMED_SYNC_DATA,
                            document_id=document_id) from None


# --- reading ---------------------------------------------------------------------------

#: k unsigned or signed LEB128 values in a row (at most 10 bytes each), for skipping a
#: literal run in C rather than value by value
_VARINTS = {n: re.compile(rb"(?:[\x80-\xff]{0,9}[\x00-\x7f]){%d}" % n) for n in (256, 16, 1)}


class Reader:
    """LEB128 numbers and byte runs from ``data[pos:end]``; raises :class:`FormatError`."""

    __slots__ = ("data", "end", "pos")

    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data, self.pos = data, pos
        self.end = len(data) if end is None else end

    def more(self) -> bool:
        return self.pos < self.end

    def done(self) -> bool:
        return self.pos >= self.end

    def byte(self) -> int:
        if self.pos >= self.end:
            raise FormatError("truncated")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def uleb(self) -> int:
        pos = self.pos
        if pos < self.end and self.data[pos] < 0x80:  # the common one-byte number
            self.pos = pos + 1
            return self.data[pos]
        value = shift = 0
        while True:
            b = self.byte()
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value
            shift += 7
            if shift > 63:
                raise FormatError("LEB128 number too long")

    def sleb(self) -> int:
        value = shift = 0
        while True:
            b = self.byte()
            value |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return value - (1 << shift) if b & 0x40 else value
            if shift > 63:
                raise FormatError("LEB128 number too long")

    def take(self, n: int) -> bytes:
        start = self.skip(n)
        return bytes(self.data[start:self.pos])

    def skip(self, n: int) -> int:
        """Skip ``n`` bytes; return where they started."""
        if n < 0 or n > self.end - self.pos:
            raise FormatError("truncated")
        start = self.pos
        self.pos += n
        return start

    def skip_varints(self, k: int) -> None:
        for size in (256, 16, 1):
            pattern = _VARINTS[size]
            while k >= size:
                m = pattern.match(self.data, self.pos, self.end)
                if m is None:
                    raise FormatError("truncated")
                self.pos = m.end()
                k -= size

    def hashes(self, limits: Limits, what: str) -> int:
        n = self.uleb()
        if n > limits.max_hashes:
            raise _Exceeded(f"{what}: {n} hashes, at most {limits.max_hashes}")
        self.skip(_HASH * n)
        return n


@dataclass(slots=True)
class _Column:
    spec: int
    start: int
    end: int

    @property
    def kind(self) -> int:
        return self.spec & 7

    @property
    def id(self) -> int:
        return self.spec >> 4


class _Walk:
    def __init__(self, data: bytes, limits: Limits) -> None:
        self.data = data
        self.limits = limits
        self.cost = Cost()
        self.headers: list[ChangeHeader] = []
        self.documents = 0

    # -- the message --------------------------------------------------------------------

    def message(self) -> Cost:
        lim = self.limits
        r = Reader(self.data)
        if r.byte() not in (0x42, 0x43):
            raise FormatError("not a sync message")
        r.hashes(lim, "heads")
        r.hashes(lim, "need")
        haves = r.uleb()
        if haves > lim.max_haves:
            raise _Exceeded(f"{haves} 'have' entries, at most {lim.max_haves}")
        for _ in range(haves):
            r.hashes(lim, "last_sync")
            length = r.uleb()
            start = r.skip(length)
            self._bloom(Reader(self.data, start, start + length))
        count = r.uleb()
        if count > lim.max_changes:
            raise _Exceeded(f"{count} change chunks, at most {lim.max_changes}")
        parts = []
        for _ in range(count):
            length = r.uleb()
            start = r.skip(length)
            parts.append((start, start + length))
        if r.more():  # flags: a length-prefixed byte string
            r.skip(r.uleb())
        # The binding reads the entries as one concatenated sequence of chunks.
        joined = b"".join(self.data[s:e] for s, e in parts)
        self._chunks(Reader(joined))
        return self.cost

    def _bloom(self, r: Reader) -> None:
        if not r.more():
            return
        lim = self.limits
        entries, bits, probes = r.uleb(), r.uleb(), r.uleb()
        if entries >= 1 << 32 or bits >= 1 << 32 or probes >= 1 << 32:
            raise FormatError("Bloom filter parameter over 32 bits")
        if probes > lim.max_bloom_probes or bits > lim.max_bloom_bits_per_entry:
            raise _Exceeded(f"Bloom filter with {probes} probes and {bits} bits per entry, "
                            f"at most {lim.max_bloom_probes} and "
                            f"{lim.max_bloom_bits_per_entry}")
        size = -(-entries * bits // 8)
        if entries and (size == 0 or probes == 0):
            raise FormatError("Bloom filter without bits or probes")
        r.skip(size)

    # -- chunks -------------------------------------------------------------------------

    def _chunks(self, r: Reader) -> None:
        while r.more():
            if bytes(r.data[r.pos:r.pos + 4]) != MAGIC:
                raise FormatError("a chunk without Automerge's magic bytes")
            r.skip(8)  # magic, checksum (the binding verifies it)
            kind = r.byte()
            length = r.uleb()
            start = r.skip(length)
            if kind == _CHANGE:
                self._count_changes(1)
                body = bytes(r.data[start:start + length])
                self._change(Reader(body), body)
            elif kind == _COMPRESSED:
                self._count_changes(1)
                body = self._inflate(r.data[start:start + length])
                self._change(Reader(body), body)
            elif kind == _DOCUMENT:
                self.documents += 1
                self._document(Reader(r.data, start, start + length))
            else:
                raise FormatError(f"chunk type {kind} is not sent by devices")

    def _count_changes(self, n: int) -> None:
        self.cost.changes += n
        if self.cost.changes > self.limits.max_changes:
            raise _Exceeded(f"more than {self.limits.max_changes} changes")

    def _inflate(self, compressed: bytes) -> bytes:
        """Raw-deflated bytes, inflated once their size is known to fit the budget: the
        first pass measures, a megabyte at a time, and keeps nothing (a bomb costs one
        megabyte of memory, not the budget)."""
        room = self.limits.max_inflated_bytes - self.cost.inflated_bytes
        inflater, data, size = zlib.decompressobj(-15), compressed, 0
        try:
            while data:
                size += len(inflater.decompress(data, _PIECE))
                if size > room:
                    raise _Exceeded(f"more than {self.limits.max_inflated_bytes} bytes "
                                    f"once inflated")
                data = inflater.unconsumed_tail
            size += len(inflater.flush())
            if size > room:
                raise _Exceeded(f"more than {self.limits.max_inflated_bytes} bytes once inflated")
            if not inflater.eof:
                raise FormatError("compressed data is truncated")
            out = zlib.decompress(compressed, -15, max(size, 1))
        except zlib.error as exc:
            raise FormatError("compressed data does not inflate") from exc
        self.cost.inflated_bytes += len(out)
        return out

    def _actors(self, r: Reader, first: bool) -> int:
        lim = self.limits
        n = (1 if first else 0) + (0 if first else r.uleb())
        if n > lim.max_actors:
            raise _Exceeded(f"{n} actors in a chunk, at most {lim.max_actors}")
        for _ in range(n):
            size = r.uleb()
            if size > lim.max_actor_bytes:
                raise _Exceeded(f"an actor id of {size} bytes, at most {lim.max_actor_bytes}")
            r.skip(size)
        return n

    def _columns(self, r: Reader) -> list[tuple[int, int]]:
        n = r.uleb()
        if n > self.limits.max_columns:
            raise _Exceeded(f"{n} columns, at most {self.limits.max_columns}")
        out = []
        for _ in range(n):
            spec, length = r.uleb(), r.uleb()
            if spec >= 1 << 32:
                raise FormatError("column spec over 32 bits")
            out.append((spec, length))
        return out

    def _change(self, r: Reader, body: bytes) -> None:
        n = r.hashes(self.limits, "a change's deps")
        deps = tuple(body[at:at + _HASH] for at in range(r.pos - n * _HASH, r.pos, _HASH))
        at = Reader(body, r.pos)
        self._actors(r, first=True)
        size = at.uleb()
        actor = body[at.pos:at.pos + size]
        seq = r.uleb()
        # The hash is the SHA-256 of the uncompressed chunk from its type byte on.
        digest = hashlib.sha256(bytes([_CHANGE]) + _uleb_bytes(len(body)) + body).digest()
        self.headers.append(ChangeHeader(digest, actor, seq, deps))
        r.uleb()  # start_op
        r.sleb()  # time
        r.skip(r.uleb())  # message
        self._actors(r, first=False)
        count = r.uleb()
        if count > self.limits.max_columns:
            raise _Exceeded(f"{count} columns, at most {self.limits.max_columns}")
        wanted, offset = [], 0
        for _ in range(count):
            spec, length = r.uleb(), r.uleb()
            if spec & _DEFLATE:
                raise FormatError("a change with compressed columns")
            if spec == _ACTION or spec & 7 in (_GROUP, _VALUE_META, _VALUE):
                wanted.append((spec, offset, length))
            offset += length
        base = r.skip(offset)
        columns = [_Column(spec, base + at, base + at + length) for spec, at, length in wanted]
        rows = self._walk_columns(r.data, columns)
        self._count_ops(rows.get(_ACTION, 0))

    def _document(self, r: Reader) -> None:
        self._actors(r, first=False)
        r.hashes(self.limits, "a document's heads")
        change_specs = self._columns(r)
        op_specs = self._columns(r)
        for specs, known in ((change_specs, _DOC_CHANGE_COLUMNS), (op_specs, _DOC_OP_COLUMNS)):
            plain = [spec & ~_DEFLATE for spec, _ in specs]
            if any(spec not in known for spec in plain) or plain != sorted(set(plain)):
                raise FormatError("a document chunk with unknown, repeated or unordered columns")
        change_cols = self._lay_out(change_specs, r)
        op_cols = self._lay_out(op_specs, r)
        # head indexes follow; the binding checks them against the heads
        for cols, changes in ((change_cols, True), (op_cols, False)):
            data: bytes = r.data
            if any(c.spec & _DEFLATE for c in cols):
                data, cols = self._inflate_columns(r.data, cols)
            rows = self._walk_columns(data, cols)
            if changes:
                self._count_changes(rows.get(_DOC_CHANGE_ACTOR, 0))
            else:  # one row per operation in every column but the groups' members
                members = {c.spec for c in cols if c.id in {g.id for g in cols if g.kind == _GROUP}
                           and c.kind != _GROUP}
                self._count_ops(max((n for spec, n in rows.items() if spec not in members),
                                    default=0))

    def _count_ops(self, n: int) -> None:
        self.cost.ops += n
        if self.cost.ops > self.limits.max_ops:
            raise _Exceeded(f"more than {self.limits.max_ops} operations in a message")

    def _lay_out(self, specs: list[tuple[int, int]], r: Reader) -> list[_Column]:
        out = []
        for spec, length in specs:
            start = r.skip(length)
            out.append(_Column(spec, start, start + length))
        return out

    def _inflate_columns(self, data: bytes, cols: list[_Column]) -> tuple[bytes, list[_Column]]:
        parts, out, pos = [], [], 0
        for c in cols:
            body = (self._inflate(data[c.start:c.end]) if c.spec & _DEFLATE
                    else data[c.start:c.end])
            parts.append(body)
            out.append(_Column(c.spec & ~_DEFLATE, pos, pos + len(body)))
            pos += len(body)
        return b"".join(parts), out

    # -- columns ------------------------------------------------------------------------

    def _walk_columns(self, data: bytes, cols: list[_Column]) -> dict[int, int]:
        """Rows of every column (but raw values), within the budget; a group column's
        members and a metadata column's value bytes within what their columns hold.
        Returns the rows of each column by spec."""
        lim, cost = self.limits, self.cost
        raw = {c.id: c.end - c.start for c in cols if c.kind == _VALUE}
        groups: dict[int, int] = {}
        rows: dict[int, int] = {}
        for c in cols:
            kind = c.kind
            if kind == _VALUE:
                continue
            n, total, deletes, steps = _walk(Reader(data, c.start, c.end), kind,
                                             lim.max_ops - cost.ops,
                                             lim.max_walk_steps - cost.steps,
                                             c.spec == _ACTION)
            cost.steps += steps
            rows[c.spec] = n
            if kind == _GROUP:
                groups[c.id] = total
                if total > lim.max_ops - cost.ops:
                    raise _Exceeded(f"more than {lim.max_ops} operations in a message")
            elif kind == _VALUE_META and total > raw.get(c.id, 0):
                raise FormatError("values longer than their column")
            elif c.id in groups and n > groups[c.id]:
                raise FormatError("a group's column holds more values than the group")
            if deletes:
                cost.deletes += deletes
                if cost.deletes > lim.max_deletes:
                    raise _Exceeded(f"more than {lim.max_deletes} delete operations in a "
                                    f"message")
        return rows


def _walk(r: Reader, kind: int, room: int, steps_left: int,
          count_deletes: bool) -> tuple[int, int, int, int]:
    """One column, run by run: ``(rows, total, deletes, steps)``. ``total`` sums a group
    column's values, or a metadata column's value lengths (value >> 4); ``deletes``
    counts rows holding the delete action (on an action column). Over ``room`` rows or
    ``steps_left`` loop turns is refused before the run that would cross it is read;
    every run holds at least one row."""
    rows = total = deletes = steps = 0
    if kind == _BOOL:
        first = True
        while r.more():
            steps += 1
            n = r.uleb()
            if n == 0 and not first:
                raise FormatError("an empty boolean run")
            first = False
            rows += n
            if rows > room or steps > steps_left:
                raise _Exceeded(_TOO_COSTLY)
        return rows, 0, 0, steps
    summing = kind in (_GROUP, _VALUE_META)
    shift = 4 if kind == _VALUE_META else 0
    while r.more():
        n = r.sleb()
        count = n if n > 0 else -n if n < 0 else r.uleb()
        if count == 0:
            raise FormatError("an empty run")
        rows += count
        steps += 1 if n >= 0 else 1 + (count if summing or kind == _STRING else count // 64)
        if rows > room or steps > steps_left:
            raise _Exceeded(_TOO_COSTLY)
        if n > 0:
            value = _value(r, kind)
            if summing:
                total += count * (value >> shift)
            elif count_deletes and value == _DELETE:
                deletes += count
        elif n < 0:
            if summing:
                for _ in range(count):
                    total += r.uleb() >> shift
            elif kind == _STRING:
                for _ in range(count):
                    r.skip(r.uleb())
            else:
                start = r.pos
                r.skip_varints(count)
                if count_deletes:  # actions are one byte each (they are < 128)
                    deletes += r.data[start:r.pos].count(_DELETE)
    return rows, total, deletes, steps


_TOO_COSTLY = "more operations, runs or values in a message than it may hold"


def _value(r: Reader, kind: int) -> int:
    if kind == _STRING:
        r.skip(r.uleb())
        return 0
    if kind == _DELTA:
        r.sleb()
        return 0
    return r.uleb()
