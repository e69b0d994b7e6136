"""The wire codec: round trips, rejections with the right code, the documented test vectors."""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path

import cbor2
import pytest
from automerge.core import ROOT, Document, ScalarType, SyncState
from hypothesis import given
from hypothesis import strategies as st

from sync_server.protocol import wire
from sync_server.protocol.errors import ErrorCode, ProtocolError

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
HID = "2fiH6LVoDnXEUsYNHowu3UTBwJqk"

SAMPLES = [
    wire.Join("device-1", metadata={"isEphemeral": False}),
    wire.Peer("vatra-1", "device-1"),
    wire.Sync("device-1", "vatra-1", HID, b"\x42\x00"),
    wire.Request("device-1", "vatra-1", HID, b"\x42\x00"),
    wire.DocUnavailable("vatra-1", "device-1", HID),
    wire.Error("vatra-1", "frame too large", "frame-too-large", HID),
    wire.Ephemeral("device-1", HID, b"\x01"),
    wire.Caseload("vatra-1", "device-1", (HID,)),
    wire.Caseload("vatra-1", "device-1", (), erased=(HID,)),
    wire.Heads("device-1", bytes(32), ((HID, bytes(16)),)),
    wire.HeadsReply("vatra-1", "device-1", b"\x01", (HID,), (HID,)),
]


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: m.type)
def test_every_message_round_trips(message: wire.Message) -> None:
    assert wire.decode(wire.encode(message)) == message


def test_request_and_sync_are_distinguished() -> None:
    req = wire.decode(wire.encode(wire.Request("d", "s", HID, b"x")))
    assert type(req) is wire.Request and isinstance(req, wire.Sync)


def test_a_caseload_without_erased_households_says_nothing_of_them() -> None:
    """``vatraErased`` is optional: absent when empty (older clients never see it), and a
    caseload without it decodes as one with none erased."""
    frame = wire.encode(wire.Caseload("vatra-1", "device-1", (HID,)))
    assert "vatraErased" not in cbor2.loads(frame)
    assert wire.decode(frame).erased == ()


@pytest.mark.parametrize(("frame", "code"), [
    (b"\xff\x00garbage", ErrorCode.MALFORMED_MESSAGE),
    (cbor2.dumps([1, 2, 3]), ErrorCode.MALFORMED_MESSAGE),
    (cbor2.dumps({"senderId": "x"}), ErrorCode.MALFORMED_MESSAGE),
    (cbor2.dumps({"type": "leave", "senderId": "x"}), ErrorCode.UNKNOWN_MESSAGE_TYPE),
    (cbor2.dumps({"type": "sync", "senderId": "x", "targetId": "y", "documentId": HID,
                  "data": "not bytes"}), ErrorCode.MALFORMED_MESSAGE),
    (cbor2.dumps({"type": "join", "senderId": 7}), ErrorCode.MALFORMED_MESSAGE),
    (cbor2.dumps({"type": "vatra-caseload", "senderId": "x", "targetId": "y",
                  "documentIds": [], "vatraErased": HID}), ErrorCode.MALFORMED_MESSAGE),
])
def test_bad_frames_are_rejected_with_a_code(frame: bytes, code: ErrorCode) -> None:
    with pytest.raises(ProtocolError) as info:
        wire.decode(frame)
    assert info.value.code == code


@given(st.binary(max_size=200))
def test_decode_never_fails_with_anything_but_a_protocol_error(frame: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        wire.decode(frame)


def test_sync_message_heads_reads_the_advertised_heads() -> None:
    doc = Document()
    for i in range(3):
        with doc.transaction() as tx:
            tx.put(ROOT, "n", ScalarType.Int, i)
    other = doc.fork()
    with other.transaction() as tx:
        tx.put(ROOT, "m", ScalarType.Int, 1)
    with doc.transaction() as tx:
        tx.put(ROOT, "k", ScalarType.Int, 1)
    doc.merge(other)
    assert len(doc.get_heads()) == 2
    data = doc.generate_sync_message(SyncState()).encode()
    assert sorted(wire.sync_message_heads(data)) == sorted(doc.get_heads())
    with pytest.raises(ValueError):
        wire.sync_message_heads(data[:20])
    with pytest.raises(ValueError):
        wire.sync_message_heads(b"\x00\x01")


def test_protocol_doc_vectors_decode_to_what_the_doc_says() -> None:
    text = DOC.read_text()
    vectors = re.findall(r"^`([a-z-]+)` — `(\{.*\})`\n\n((?:    [0-9a-f]+\n)+)", text, re.M)
    assert len(vectors) >= 2
    for name, meaning, hexlines in vectors:
        frame = bytes.fromhex("".join(hexlines.split()))
        assert cbor2.loads(frame) == json.loads(meaning)
        assert wire.decode(frame).type == name
