"""The wire vocabulary: automerge-repo messages, CBOR-encoded, one per frame.

This module is shared by the server and the reference client (``client_sdk``)
and depends only on ``cbor2``. Each message type is one class with
``to_wire()`` / ``from_wire()``; :func:`decode` and :func:`encode` turn frames
into messages and back. Field names and meanings follow automerge-repo's
``packages/automerge-repo/src/network/messages.ts`` so that any automerge-repo
peer (samod in the Python ``automerge`` package, JS ``automerge-repo``) can
sync with Vatra.

A ``sync`` frame, as CBOR diagnostic notation::

    {"type": "sync", "senderId": "peer-1", "targetId": "vatra-server",
     "documentId": "2fiH6LVoDnXEUsYNHowu3UTBwJqk", "data": h'42 01 ac7a…'}

Vatra additions are marked in their docstrings; an automerge-repo peer that
does not know them ignores the extra fields (``code`` on ``error``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import cbor2

from sync_server.protocol.errors import ErrorCode, ProtocolError

PROTOCOL_VERSION = "1"

#: Longest peer id or document id a message may carry (automerge-repo's are 20-40
#: characters). Checked before anything parses an id: a longer one is ``limit-exceeded``.
MAX_ID_CHARS = 128
#: Longest free text (an ``error`` message) a message may carry.
MAX_TEXT_CHARS = 4096


@dataclass(frozen=True, slots=True)
class Join:
    """Client → server, first message: ``{"type": "join", "senderId", "supportedProtocolVersions"}``."""

    type: ClassVar[str] = "join"
    sender_id: str
    supported_protocol_versions: tuple[str, ...] = (PROTOCOL_VERSION,)
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.type, "senderId": self.sender_id,
                "supportedProtocolVersions": list(self.supported_protocol_versions),
                "metadata": self.metadata}

    @classmethod
    def from_wire(cls, m: dict[str, Any]) -> Join:
        versions = m.get("supportedProtocolVersions", [])
        if not isinstance(versions, list) or not all(isinstance(v, str) for v in versions):
            raise _bad("join.supportedProtocolVersions must be a list of strings")
        return cls(_str(m, "senderId"), tuple(versions), _metadata(m))


@dataclass(frozen=True, slots=True)
class Peer:
    """Server → client answer to ``join``.

    ``{"type": "peer", "senderId", "targetId", "selectedProtocolVersion"}``"""

    type: ClassVar[str] = "peer"
    sender_id: str
    target_id: str
    selected_protocol_version: str = PROTOCOL_VERSION
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.type, "senderId": self.sender_id, "targetId": self.target_id,
                "selectedProtocolVersion": self.selected_protocol_version,
                "metadata": self.metadata, "peerMetadata": self.metadata}

    @classmethod
    def from_wire(cls, m: dict[str, Any]) -> Peer:
        return cls(_str(m, "senderId"), _str(m, "targetId"),
                   _str(m, "selectedProtocolVersion"), _metadata(m))


@dataclass(frozen=True, slots=True)
class Sync:
    """Either direction: one Automerge sync message for one document."""

    type: ClassVar[str] = "sync"
    sender_id: str
    target_id: str
    document_id: str
    data: bytes

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.type, "senderId": self.sender_id, "targetId": self.target_id,
                "documentId": self.document_id, "data": self.data}

    @classmethod
    def from_wire(cls, m: dict[str, Any]) -> Sync:
        return cls(_str(m, "senderId"), _str(m, "targetId"), _str(m, "documentId"),
                   _bytes(m, "data"))


@dataclass(frozen=True, slots=True)
class Request(Sync):
    """Like ``sync``, but the sender does not have the document and asks for it."""

    type: ClassVar[str] = "request"


@dataclass(frozen=True, slots=True)
class DocUnavailable:
    """Server → client: no such document (or none this peer may see; the answer is the same)."""

    type: ClassVar[str] = "doc-unavailable"
    sender_id: str
    target_id: str
    document_id: str

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.type, "senderId": self.sender_id, "targetId": self.target_id,
                "documentId": self.document_id}

    @classmethod
    def from_wire(cls, m: dict[str, Any]) -> DocUnavailable:
        return cls(_str(m, "senderId"), _str(m, "targetId"), _str(m, "documentId"))


@dataclass(frozen=True, slots=True)
class Error:
    """``{"type": "error", "senderId", "message"}``; Vatra adds ``code`` (an :class:`ErrorCode`)
    and, when one household is concerned, ``documentId``."""

    type: ClassVar[str] = "error"
    sender_id: str
    message: str
    code: str = ""
    document_id: str | None = None

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"type": self.type, "senderId": self.sender_id,
                                "message": self.message, "code": self.code}
        if self.document_id is not None:
            wire["documentId"] = self.document_id
        return wire

    @classmethod
    def from_wire(cls, m: dict[str, Any]) -> Error:
        doc = m.get("documentId")
        return cls(_str(m, "senderId"), _str(m, "message", MAX_TEXT_CHARS),
                   _str(m, "code", MAX_ID_CHARS) if "code" in m else "",
                   doc if isinstance(doc, str) and len(doc) <= MAX_ID_CHARS else None)


@dataclass(frozen=True, slots=True)
class Ephemeral:
    """Ephemeral (presence-like) data. Accepted and not relayed: Vatra keeps no ephemeral state."""

    type: ClassVar[str] = "ephemeral"
    sender_id: str
    document_id: str
    data: bytes

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.type, "senderId": self.sender_id, "documentId": self.document_id,
                "data": self.data}

    @classmethod
    def from_wire(cls, m: dict[str, Any]) -> Ephemeral:
        return cls(_str(m, "senderId"), _str(m, "documentId"), _bytes(m, "data"))


@dataclass(frozen=True, slots=True)
class Caseload:
    """Vatra extension, server → client, right after ``peer``: the households this device's
    user may hold. Sent only to clients whose ``join`` metadata has ``"vatraCaseload": true``
    (other automerge-repo peers never see it). The client downloads the ones it lacks and
    deletes local copies of households it synced before that are no longer listed.
    ``vatraErased`` (optional, absent when empty) lists erased households the user's
    tablets may still hold: the client deletes them and reports the unsynced changes lost."""

    type: ClassVar[str] = "vatra-caseload"
    sender_id: str
    target_id: str
    document_ids: tuple[str, ...]
    erased: tuple[str, ...] = ()

    def to_wire(self) -> dict[str, Any]:
        m: dict[str, Any] = {"type": self.type, "senderId": self.sender_id,
                             "targetId": self.target_id, "documentIds": list(self.document_ids)}
        if self.erased:
            m["vatraErased"] = list(self.erased)
        return m

    @classmethod
    def from_wire(cls, m: dict[str, Any]) -> Caseload:
        def ids(key: str, default: list[str] | None = None) -> tuple[str, ...]:
            value = m.get(key, default)
            if not isinstance(value, list) or not all(
                    isinstance(i, str) and len(i) <= MAX_ID_CHARS for i in value):
                raise _bad(f"vatra-caseload.{key} must be a list of document ids")
            return tuple(value)
        return cls(_str(m, "senderId"), _str(m, "targetId"), ids("documentIds"),
                   ids("vatraErased", []))


#: Bytes of one tag in ``vatra-heads`` (sync_server/protocol/fastpath.py).
HEADS_TAG_BYTES = 16
#: Households one ``vatra-heads`` may list (a session syncs at most this many).
MAX_HEADS_ENTRIES = 10_000


@dataclass(frozen=True, slots=True)
class Heads:
    """Vatra extension (reconnect fast path, version 1), client → server, the frame right
    after a ``join`` whose metadata offers ``"vatraHeads": 1``: one 16-byte tag per
    household the device keeps as part of its caseload (``tags``, concatenated), and
    ``[household id, tag]`` pairs for households it holds outside it (``named``)."""

    type: ClassVar[str] = "vatra-heads"
    sender_id: str
    tags: bytes
    named: tuple[tuple[str, bytes], ...] = ()

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.type, "senderId": self.sender_id, "tags": self.tags,
                "named": [[hid, tag] for hid, tag in self.named]}

    @classmethod
    def from_wire(cls, m: dict[str, Any]) -> Heads:
        tags = _bytes(m, "tags")
        if len(tags) % HEADS_TAG_BYTES:
            raise _bad(f"vatra-heads.tags must be {HEADS_TAG_BYTES}-byte tags")
        named = m.get("named", [])
        if not isinstance(named, list) or not all(
                isinstance(e, list) and len(e) == 2 and isinstance(e[0], str)
                and len(e[0]) <= MAX_ID_CHARS and isinstance(e[1], bytes)
                and len(e[1]) == HEADS_TAG_BYTES for e in named):
            raise _bad("vatra-heads.named must be a list of [document id, tag] pairs")
        if len(tags) // HEADS_TAG_BYTES + len(named) > MAX_HEADS_ENTRIES:
            raise ProtocolError(f"vatra-heads may list at most {MAX_HEADS_ENTRIES} households",
                                code=ErrorCode.LIMIT_EXCEEDED)
        return cls(_str(m, "senderId"), tags, tuple((e[0], e[1]) for e in named))


@dataclass(frozen=True, slots=True)
class HeadsReply:
    """Vatra extension (reconnect fast path, version 1), server → client, the answer to
    ``vatra-heads``, right after ``peer`` (in place of ``vatra-caseload``). ``same``: one
    bit per entry of ``tags`` then of ``named`` (bit i is bit i % 8 of byte i // 8), set
    when the server's heads are the device's. ``differ``: households the server holds
    other heads of; for each, the server sends the first ``sync`` message. ``erased``:
    as ``vatra-caseload``'s ``vatraErased``."""

    type: ClassVar[str] = "vatra-heads-reply"
    sender_id: str
    target_id: str
    same: bytes
    differ: tuple[str, ...] = ()
    erased: tuple[str, ...] = ()

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.type, "senderId": self.sender_id, "targetId": self.target_id,
                "same": self.same, "differ": list(self.differ), "erased": list(self.erased)}

    @classmethod
    def from_wire(cls, m: dict[str, Any]) -> HeadsReply:
        return cls(_str(m, "senderId"), _str(m, "targetId"), _bytes(m, "same"),
                   _ids(m, "vatra-heads-reply", "differ"),
                   _ids(m, "vatra-heads-reply", "erased"))


Message = (Join | Peer | Sync | Request | DocUnavailable | Error | Ephemeral | Caseload
           | Heads | HeadsReply)

MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.type: cls
    for cls in (Join, Peer, Sync, Request, DocUnavailable, Error, Ephemeral, Caseload,
                Heads, HeadsReply)
}


def encode(message: Message) -> bytes:
    """One frame's bytes for ``message``."""
    return cbor2.dumps(message.to_wire())


def decode(frame: bytes) -> Message:
    """Parse one frame; raise :class:`ProtocolError` naming what is wrong."""
    try:
        raw = cbor2.loads(frame)
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise ProtocolError("frame is not valid CBOR", code=ErrorCode.MALFORMED_MESSAGE) from exc
    if not isinstance(raw, dict):
        raise _bad("a message must be a CBOR map")
    kind = raw.get("type")
    if not isinstance(kind, str):
        raise _bad("a message needs a string 'type'")
    cls = MESSAGE_TYPES.get(kind)
    if cls is None:
        raise ProtocolError(f"unknown message type {kind[:40]!r}",
                            code=ErrorCode.UNKNOWN_MESSAGE_TYPE)
    return cls.from_wire(raw)


def sync_message_heads(data: bytes) -> list[bytes]:
    """The heads an Automerge sync message advertises (its first field).

    The binary sync message starts with a type byte (0x42, or 0x43 for the
    version with capabilities), then a LEB128 count and that many 32-byte
    change hashes. The Python binding does not expose them, and the client needs
    them to know what the server holds ("saved to server").
    """
    if len(data) < 2 or data[0] not in (0x42, 0x43):
        raise ValueError("not an Automerge sync message")
    count, pos, shift = 0, 1, 0
    while True:
        if pos >= len(data) or shift > 28:
            raise ValueError("truncated head count")
        byte = data[pos]
        pos += 1
        count |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    end = pos + 32 * count
    if end > len(data):
        raise ValueError("truncated heads")
    return [data[i:i + 32] for i in range(pos, end, 32)]


def _bad(what: str) -> ProtocolError:
    return ProtocolError(what, code=ErrorCode.MALFORMED_MESSAGE)


def _str(m: dict[str, Any], key: str, limit: int = MAX_ID_CHARS) -> str:
    value = m.get(key)
    if not isinstance(value, str):
        raise _bad(f"field {key!r} must be a string")
    if len(value) > limit:
        raise ProtocolError(f"field {key!r} is longer than {limit} characters",
                            code=ErrorCode.LIMIT_EXCEEDED)
    return value


def _ids(m: dict[str, Any], what: str, key: str) -> tuple[str, ...]:
    value = m.get(key, [])
    if not isinstance(value, list) or not all(
            isinstance(i, str) and len(i) <= MAX_ID_CHARS for i in value):
        raise _bad(f"{what}.{key} must be a list of document ids")
    return tuple(value)


def _bytes(m: dict[str, Any], key: str) -> bytes:
    value = m.get(key)
    if not isinstance(value, bytes):
        raise _bad(f"field {key!r} must be a byte string")
    return value


def _metadata(m: dict[str, Any]) -> dict[str, Any]:
    """A ``join``'s or ``peer``'s metadata: automerge-repo's WebSocket adapter names it
    ``peerMetadata``; Vatra's first clients named it ``metadata``. Both are read (a key
    in both: ``metadata``'s value)."""
    merged: dict[str, Any] = {}
    for key in ("peerMetadata", "metadata"):
        value = m.get(key, {})
        if isinstance(value, dict):
            merged.update(value)
    return merged
