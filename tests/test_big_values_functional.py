"""Big uploads and big values (issue 13, faults 7 and 8): real server, real PostgreSQL,
enrolled tablets."""

from __future__ import annotations

import random
import string

import pytest

from client_sdk import SyncClient
from sync_server.protocol import wire

pytestmark = pytest.mark.functional

#: The test server's frame limit (tests/conftest.py ``server``).
FRAME = 256 * 1024


def words(n: int, seed: int) -> str:
    """``n`` characters of text that compresses about as much as field notes do."""
    rnd = random.Random(seed)
    vocabulary = ["".join(rnd.choice(string.ascii_lowercase) for _ in range(rnd.randint(2, 9)))
                  for _ in range(3000)]
    out = " ".join(rnd.choice(vocabulary) for _ in range(n // 4))
    return out[:n]


async def test_an_upload_bigger_than_a_frame_syncs_in_steps(server, provision) -> None:
    """Issue 13, fault 8: a household whose unsynced changes made one sync message bigger
    than the server's frame limit could never sync: the server dropped the connection
    (``frame-too-large``), the tablet saw "Connection lost" on every retry, forever.

    Reproduced with the test server's 256 KiB frames: 600 feed entries of 1,000
    characters each, made offline (about 400 KB of changes once compressed). Now the
    SDK sends them in steps that fit a frame, oldest first, each acknowledged by the
    server before the next; the server ends with every change."""
    ana = await provision.tablet("ana")
    h = ana.create_household(locality="54975", county="CJ", address="Str. Lunga 3")
    ana.save(h.household_id)
    client = SyncClient(ana, server.url, max_frame_bytes=FRAME, max_attempts=2)
    assert not (await client.sync()).rejected
    for i in range(600):
        h.append_activity("visit", words(1000, i))
    ana.save(h.household_id)

    summary = await client.sync()
    assert not summary.rejected and summary.attempts == 1
    assert summary.changes_sent == 600
    assert summary.bytes_sent > FRAME  # it did not fit one frame
    from sync_server.app import STORE
    stored = await server.app[STORE].change_count(h.household_id)
    assert stored == len(ana.household(h.household_id).doc.get_changes([]))


async def test_a_five_megabyte_note_syncs_to_a_teammate(server, provision) -> None:
    """Issue 13, faults 7 and 8: a 3 MB note took the server 18-20 s and 1.6 GiB (a text
    is one Automerge operation per character) and a 4.5 MB one could never sync. Now a
    note that long is kept as an attachment: bytes in parts of 128 KiB, each its own
    change. Here a 5 MB note goes up through the test server's 256 KiB frames in steps,
    and down to a teammate's tablet, byte for byte."""
    ana = await provision.tablet("ana")
    ion = await provision.tablet("ion")
    h = ana.create_household(locality="54975", county="CJ", address="Str. Lunga 3")
    ana.save(h.household_id)
    assert not (await SyncClient(ana, server.url, max_frame_bytes=FRAME).sync()).rejected
    await provision.share(h.household_id, ana, ion)

    note = words(5_000_000, seed=7).encode()
    h = ana.household(h.household_id)
    aid = h.attach("raport-vizita.txt", note, media_type="text/plain")
    ana.save(h.household_id)
    up = await SyncClient(ana, server.url, max_frame_bytes=FRAME, max_attempts=2).sync()
    assert not up.rejected and up.attempts == 1
    assert up.changes_sent == 1 + 39  # the record, then 39 parts of 128 KiB

    down = await SyncClient(ion, server.url, max_frame_bytes=FRAME, max_attempts=2).sync()
    assert not down.rejected
    copy = ion.household(h.household_id)
    assert copy.attachments()[aid]["complete"]
    assert copy.attachment(aid) == note


async def test_a_note_of_megabytes_as_text_is_refused_before_the_binding_sees_it(
        server, provision) -> None:
    """Issue 13, fault 7: a 3 MB note written as the notes text (one Automerge operation
    per character) took the server 18-20 s and a peak of 1.6 GiB, and stalled
    ``/healthz`` 9 s. The SDK no longer writes one (``value-too-large``); a device that
    sends one anyway, here 251,000 characters past the SDK, is refused by the message
    limits (250,000 operations) before the binding reads it, and the server goes on."""
    from _rawpeer import raw_peer
    from automerge.core import ROOT

    ana = await provision.tablet("ana")
    h = ana.create_household(locality="54975", county="CJ", address="Str. Lunga 3")
    ana.save(h.household_id)
    assert not (await SyncClient(ana, server.url).sync()).rejected
    doc = ana.household(h.household_id).doc.fork()  # the replica keeps its own copy
    with doc.transaction() as tx:  # what the SDK refuses, written past it
        tx.splice_text(doc.get(ROOT, "notes")[1], 0, 0, words(251_000, seed=3))
    async with raw_peer(server.url, ana) as peer:
        refused = await peer.push(doc, h.household_id, strict=False)
    assert isinstance(refused, wire.Error) and refused.code == "limit-exceeded"
    assert "operations" in refused.message
    assert not (await SyncClient(ana, server.url).sync()).rejected  # still serving


def test_a_step_is_taken_even_when_the_server_has_changes_this_copy_lacks() -> None:
    """Before: when the server's heads named a change the tablet had not received yet
    (a team change the server made, say), the SDK did not step and sent everything in
    one message, over the frame (the server dropped the connection: "Connection lost";
    seen once in a full run with a 5 MB attachment). Now the heads it knows are enough
    to take a step."""
    from client_sdk._sync import stepped
    from conflict import Household

    h = Household.create(locality="54975", county="CJ", address="Str. Lunga 3", author="sw")
    server_heads = h.doc.get_heads()  # what the server has of this copy
    h.attach("scan.bin", bytes(range(256)) * 2000)  # 512,000 bytes: four parts
    unknown = bytes(32)  # a head of the server's this copy never received
    step = stepped(h.doc, [*server_heads, unknown], 200_000)
    assert step is not None
    sent = step.get_changes(server_heads)
    assert 0 < len(sent) < len(h.doc.get_changes(server_heads))
    assert sum(len(c.raw_bytes) for c in sent) <= 200_000
