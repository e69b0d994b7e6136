"""The reconnect fast path's pure logic (sync_server/protocol/fastpath.py): the tag, the
bitmap, and the server's comparison; with the vectors docs/protocol.md gives."""

from __future__ import annotations

import pytest

from sync_server.protocol import fastpath, wire
from sync_server.protocol.errors import ProtocolError

HID = "2fiH6LVoDnXEUsYNHowu3UTBwJqk"
OTHER = "3xRyv5VA2upvSTGwn1qBvDqifXQr"
H1, H2 = bytes(range(32)), bytes([0xAB]) * 32


def test_the_tag_vectors_of_the_protocol_document() -> None:
    assert fastpath.heads_tag(HID, [H2, H1]).hex() == "165ada00c4d9438e53d384cf3c86e116"
    assert fastpath.heads_tag(HID, []).hex() == "ba6a56206eec0ff70931e0155a3906c3"
    assert fastpath.bitmap(10, [0, 3, 9]).hex() == "0902"


def test_the_tag_depends_on_the_heads_as_a_set_and_on_the_household() -> None:
    assert fastpath.heads_tag(HID, [H1, H2]) == fastpath.heads_tag(HID, [H2, H1])
    assert fastpath.heads_tag(HID, [H1]) != fastpath.heads_tag(HID, [H1, H2])
    assert fastpath.heads_tag(HID, [H1]) != fastpath.heads_tag(OTHER, [H1])


def test_bits_read_back_what_bitmap_set() -> None:
    assert fastpath.bits(fastpath.bitmap(17, [1, 8, 16]), 17) == [
        i in (1, 8, 16) for i in range(17)]
    assert fastpath.bits(b"", 3) == [False, False, False]  # a short field reads as zeros


def test_compare_sorts_households_into_same_and_differ() -> None:
    """Anonymous tags match caseload households only; a named one only the household it
    names, and only if the device may open it; a caseload household no tag matches
    differs (the device lacks it, or holds other heads)."""
    server = {HID: [H1], OTHER: [H2], "named-ok": [H1], "named-old": [H2], "hidden": [H1]}
    tags = [fastpath.heads_tag(HID, [H1]),            # same
            fastpath.heads_tag(OTHER, [H1]),          # OTHER's heads moved on: differs
            fastpath.heads_tag("left-team", [H1])]    # no longer in the caseload
    named = [("named-ok", fastpath.heads_tag("named-ok", [H1])),
             ("named-old", fastpath.heads_tag("named-old", [H1])),
             ("hidden", fastpath.heads_tag("hidden", [H1])),
             ("unknown", fastpath.heads_tag("unknown", [H1]))]
    result = fastpath.compare(tags, named, [HID, OTHER, "new-to-me"], server,
                              may_open=["named-ok", "named-old"])
    assert fastpath.bits(result.same, 7) == [True, False, False, True, False, False, False]
    assert result.differ == sorted([OTHER, "named-old"])  # "new-to-me" is gone (erased)
    assert sorted(result.matched) == [HID, "named-ok"]


def test_the_wire_vectors_decode() -> None:
    heads = bytes.fromhex(
        "a464747970656b76617472612d68656164736873656e6465724964776465766963652d3061"
        "3162326333643465356636303731647461677350165ada00c4d9438e53d384cf3c86e11665"
        "6e616d656480")
    assert wire.decode(heads) == wire.Heads("device-0a1b2c3d4e5f6071",
                                            fastpath.heads_tag(HID, [H1, H2]))
    reply = bytes.fromhex(
        "a664747970657176617472612d68656164732d7265706c796873656e64657249647276617472"
        "612d356631633264336534613662687461726765744964776465766963652d306131623263"
        "336434653566363037316473616d654209026664696666657281781c32666948364c566f44"
        "6e58455573594e486f777533555442774a716b6665726173656480")
    assert wire.decode(reply) == wire.HeadsReply(
        "vatra-5f1c2d3e4a6b", "device-0a1b2c3d4e5f6071", bytes.fromhex("0902"), (HID,))


@pytest.mark.parametrize(("named", "why"), [
    ([["x", bytes(15)]], "named must be"),
    ([["x"]], "named must be"),
    ("x", "named must be"),
])
def test_a_malformed_heads_message_names_the_field(named: object, why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        wire.Heads.from_wire({"type": "vatra-heads", "senderId": "d", "tags": b"",
                              "named": named})


def test_too_many_entries_is_limit_exceeded() -> None:
    with pytest.raises(ProtocolError) as err:
        wire.Heads.from_wire({"type": "vatra-heads", "senderId": "d",
                              "tags": bytes(16 * (wire.MAX_HEADS_ENTRIES + 1))})
    assert err.value.code == "limit-exceeded"
