"""Stage 3, apply on a fork: a device's sync message into a copy of the household.

Everything here stands between the device's bytes and the household: the id is checked
before the binding parses it, the binding's failures (a Rust panic included) refuse the
message, a change Automerge would re-encode under another hash is refused, and changes
waiting for a dependency the device has not sent are kept per peer, within a bound.
Nothing here touches the household's own copy: the caller drops the fork on failure.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from automerge._automerge import DocumentId  # type: ignore[attr-defined]  # not in the stub
from automerge.core import Document, Message, SyncState

from sync_server.protocol.errors import DocumentError, ErrorCode
from sync_server.store.contract import StoredChange
from sync_server.sync.households import HouseholdActor
from sync_server.sync.peer import PeerSync

log = logging.getLogger(__name__)

#: automerge-repo document ids: bs58check of 16 bytes and a 4-byte checksum (27-28
#: characters). Length and alphabet are checked before the binding parses an id (its
#: base58 decoding is quadratic in the length).
_DOCUMENT_ID_CHARS = frozenset("123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz")
MAX_DOCUMENT_ID_CHARS = 40

#: Exceptions a binding call must let through; anything else it raises on a device's bytes
#: (a Rust panic arrives as ``pyo3_runtime.PanicException``, a BaseException) refuses them.
_PASS_THROUGH = (KeyboardInterrupt, SystemExit, GeneratorExit, asyncio.CancelledError)

#: Bytes of a peer's messages that wait, per household, for a dependency it has not sent.
HELD_BYTES = 8 * 1024 * 1024


def check_document_id(document_id: str) -> None:
    if not (0 < len(document_id) <= MAX_DOCUMENT_ID_CHARS
            and _DOCUMENT_ID_CHARS.issuperset(document_id)):
        raise DocumentError("documentId is not an automerge-repo document id",
                            code=ErrorCode.INVALID_DOCUMENT_ID)
    # Canonical bs58check only: the UUID spellings DocumentId also parses would make one
    # document known under several ids (ids are compared as plain strings everywhere).
    try:
        canonical = DocumentId.from_string(document_id).to_string() == document_id
    except Exception as exc:  # the binding raises a bare Exception
        raise DocumentError("documentId is not an automerge-repo document id",
                            code=ErrorCode.INVALID_DOCUMENT_ID) from exc
    if not canonical:
        raise DocumentError("documentId must be a household id in canonical bs58check form",
                            code=ErrorCode.INVALID_DOCUMENT_ID)


def receive(doc: Document, state: SyncState, data: bytes, household_id: str) -> None:
    """Apply a device's sync message (already bounded by
    :mod:`sync_server.protocol.preflight`) to ``doc``, a fork or a new document the caller
    drops on failure. Whatever the binding raises on the bytes, a Rust panic included, is
    a refusal of this message only."""
    try:
        doc.receive_sync_message(state, Message.decode(data))
    except _PASS_THROUGH:
        raise
    except BaseException as exc:
        if type(exc).__name__ == "PanicException":
            log.warning("household %s: Automerge panicked on a device's sync message",
                        household_id)
        raise DocumentError("sync data is not a valid Automerge sync message",
                            code=ErrorCode.MALFORMED_SYNC_DATA,
                            document_id=household_id) from exc


def check_encoding(before: Sequence[bytes], new: Sequence[Any], doc: Document,
                   household_id: str) -> None:
    """Refuse changes whose bytes Automerge would not write back the same way.

    The binding accepts a change encoded in a valid but non-canonical form (a run written
    as literals, say) and keeps the hash of the bytes it received as a head, while it
    re-encodes the change canonically, with another hash, whenever it saves the document.
    Such a household can no longer be saved and loaded ("mismatching heads"): a fresh
    tablet, a snapshot, a restart all fail. ``get_changes`` returns the canonical forms,
    so the heads they imply differ from the document's exactly then."""
    implied = (set(before) | {c.hash for c in new}) - {d for c in new for d in c.deps}
    if set(doc.get_heads()) != implied:
        raise DocumentError("sync data holds a change Automerge would not save as it was sent "
                            "(a non-canonical encoding); nothing of it was merged",
                            code=ErrorCode.MALFORMED_SYNC_DATA, document_id=household_id)


def fork_for(peer: PeerSync, actor: HouseholdActor) -> Document:
    """The copy a peer's next message is received into: the household's current one, or
    the fork kept for this peer (its queued changes) brought up to date."""
    held = peer.held.pop(actor.id, None)
    if held is None:
        return actor.doc.fork()
    held.merge(actor.doc)
    return held


def hold(peer: PeerSync, household_id: str, fork: Document, message_bytes: int) -> None:
    """Nothing of the message applied, but the fork may hold changes queued for a missing
    dependency (a Bloom-filter false positive made the device hold that one back; dropping
    them left ~2% of syncs never converging). They are this peer's alone, so the fork is
    kept for its next message, not made the household's copy: a batch refused later must
    leave nothing behind. Bounded: past :data:`HELD_BYTES` they are dropped and the
    message refused (``limit-exceeded``)."""
    held = peer.held_bytes.get(household_id, 0) + message_bytes
    if held > HELD_BYTES:
        peer.reset(household_id)
        raise DocumentError(f"more than {HELD_BYTES} bytes of changes wait for a dependency "
                            f"that never came; nothing of them was kept",
                            code=ErrorCode.LIMIT_EXCEEDED, document_id=household_id)
    peer.held[household_id], peer.held_bytes[household_id] = fork, held


def stored(changes: Sequence[Any]) -> list[StoredChange]:
    """Automerge changes as the store logs them."""
    return [StoredChange(c.hash, tuple(c.deps), c.actor_id, c.bytes) for c in changes]
