"""Automerge's binary formats by hand, for tests that must send what no honest client
would: LEB128 numbers, chunks, sync messages, and a change taken apart into its columns
and put back together (sync_server/protocol/preflight.py documents the formats)."""

from __future__ import annotations

import hashlib

from sync_server.protocol.preflight import MAGIC, Reader


def uleb(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def sleb(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        if (n == 0 and not b & 0x40) or (n == -1 and b & 0x40):
            out.append(b)
            return bytes(out)
        out.append(b | 0x80)


def chunk(kind: int, body: bytes) -> bytes:
    """A chunk with a correct checksum (the first 4 bytes of its SHA-256)."""
    head = bytes([kind]) + uleb(len(body)) + body
    return MAGIC + hashlib.sha256(head).digest()[:4] + head


def rechecksum(raw: bytes) -> bytes:
    """The chunk ``raw`` with its checksum made right again (what a tampering client does)."""
    r = Reader(raw, 9)
    length = r.uleb()
    return chunk(raw[8], raw[r.pos:r.pos + length])


def sync_message(*, heads: int = 0, haves: tuple[bytes, ...] = (),
                 changes: tuple[bytes, ...] = ()) -> bytes:
    """An Automerge sync message (type 0x42): ``heads`` zero hashes, no need, one
    ``have`` per Bloom filter given, then the change chunks."""
    out = b"\x42" + uleb(heads) + bytes(32 * heads) + uleb(0) + uleb(len(haves))
    for bloom in haves:
        out += uleb(0) + uleb(len(bloom)) + bloom
    out += uleb(len(changes))
    for c in changes:
        out += uleb(len(c)) + c
    return out


def with_column(raw: bytes, spec: int, data: bytes) -> bytes:
    """The change chunk ``raw`` with the data of its column ``spec`` replaced (header,
    other columns and extra bytes kept; the checksum made right)."""
    r = Reader(raw, 9)
    length = r.uleb()
    body_at = r.pos
    r.skip(32 * r.uleb())  # deps
    r.skip(r.uleb())  # actor
    r.uleb(), r.uleb(), r.sleb()  # seq, start op, time
    r.skip(r.uleb())  # message
    for _ in range(r.uleb()):  # other actors
        r.skip(r.uleb())
    header_end = r.pos
    cols = [(r.uleb(), r.uleb()) for _ in range(r.uleb())]
    parts, pos = [], r.pos
    for s, n in cols:
        parts.append((s, data if s == spec else raw[pos:pos + n]))
        pos += n
    body = (raw[body_at:header_end] + uleb(len(parts))
            + b"".join(uleb(s) + uleb(len(col)) for s, col in parts)
            + b"".join(col for _, col in parts) + raw[pos:body_at + length])
    return chunk(1, body)


def column(raw: bytes, spec: int) -> bytes:
    """The data of column ``spec`` of the change chunk ``raw``."""
    r = Reader(raw, 9)
    r.uleb()
    r.skip(32 * r.uleb())
    r.skip(r.uleb())
    r.uleb(), r.uleb(), r.sleb()
    r.skip(r.uleb())
    for _ in range(r.uleb()):
        r.skip(r.uleb())
    cols = [(r.uleb(), r.uleb()) for _ in range(r.uleb())]
    pos = r.pos
    for s, n in cols:
        if s == spec:
            return raw[pos:pos + n]
        pos += n
    raise KeyError(spec)
