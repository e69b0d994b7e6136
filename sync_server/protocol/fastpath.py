"""The reconnect fast path (Vatra extension ``vatraHeads``, version 1): pure logic.

A device that returns with nothing new should not pay for its households' histories.
It offers ``vatraHeads: 1`` in ``join`` and sends, in the very next frame, one 16-byte
tag per household it holds (``vatra-heads``); the server compares each tag with the one
of its own heads and answers in one frame (``vatra-heads-reply``) which households are
the same, and which differ. Only those then run Automerge's sync protocol, and the
server speaks first for them. docs/protocol.md, "Reconnect fast path", is the reference.

Shared by the server and ``client_sdk``; depends only on PyNaCl.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import nacl.encoding
import nacl.hash

#: The extension's version, offered in ``join``'s metadata as ``"vatraHeads": 1``.
VERSION = 1
#: Bytes of one household's tag.
TAG_BYTES = 16
_PERSON = b"vatra-heads-v1"


def heads_tag(household_id: str, heads: Iterable[bytes]) -> bytes:
    """``BLAKE2b-128(person "vatra-heads-v1", household id (UTF-8) ‖ 0x00 ‖ heads,
    sorted, concatenated)``. Two copies of a household have the same tag exactly when
    they have the same heads, that is the same changes (up to a 2^-64 birthday bound)."""
    data = household_id.encode() + b"\0" + b"".join(sorted(heads))
    return nacl.hash.blake2b(data, digest_size=TAG_BYTES, person=_PERSON,
                             encoder=nacl.encoding.RawEncoder)


def split_tags(tags: bytes) -> list[bytes]:
    """``vatra-heads``'s ``tags`` field as its tags (its length is checked on decoding)."""
    return [tags[i:i + TAG_BYTES] for i in range(0, len(tags), TAG_BYTES)]


def bitmap(size: int, set_bits: Iterable[int]) -> bytes:
    """``size`` bits, least significant bit of byte 0 first; the given ones set."""
    out = bytearray((size + 7) // 8)
    for i in set_bits:
        out[i // 8] |= 1 << (i % 8)
    return bytes(out)


def bits(field: bytes, size: int) -> list[bool]:
    """The first ``size`` bits of ``field`` (missing bytes read as zeros)."""
    return [i // 8 < len(field) and bool(field[i // 8] >> (i % 8) & 1) for i in range(size)]


@dataclass(frozen=True)
class Comparison:
    """The server's side of one ``vatra-heads``."""

    same: bytes            #: the bitmap over ``tags`` then ``named``
    differ: list[str]      #: households the server holds other heads of, in id order
    matched: list[str]     #: households whose heads are the device's


def compare(tags: Sequence[bytes], named: Sequence[tuple[str, bytes]],
            caseload: Sequence[str], server_heads: dict[str, list[bytes]],
            may_open: Iterable[str]) -> Comparison:
    """Compare a device's tags with the server's heads.

    ``caseload``: the households the device's user keeps; ``server_heads``: the heads of
    those and of the named ones that exist; ``may_open``: the named ones the device may
    sync. An anonymous tag can only match a caseload household; a named one, the
    household it names."""
    index = {tag: i for i, tag in enumerate(tags)}
    same: set[int] = set()
    differ: set[str] = set()
    matched: list[str] = []
    for hid in caseload:
        heads = server_heads.get(hid)
        if heads is None:
            continue  # erased (or gone) since the caseload was read
        i = index.get(heads_tag(hid, heads))
        if i is None:
            differ.add(hid)
        else:
            same.add(i)
            matched.append(hid)
    allowed = set(may_open)
    for j, (hid, tag) in enumerate(named):
        heads = server_heads.get(hid)
        if heads is None or hid not in allowed:
            continue  # the device opens it itself and gets the usual answer
        if heads_tag(hid, heads) == tag:
            same.add(len(tags) + j)
            matched.append(hid)
        else:
            differ.add(hid)
    return Comparison(bitmap(len(tags) + len(named), same), sorted(differ), matched)
