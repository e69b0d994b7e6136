"""The E2E session: handshake, sealed frames, every attack refused with its reason.

Pure logic (in-memory channels); the documented test vectors are recomputed here.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from pathlib import Path

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from sync_server.protocol.errors import ErrorCode
from sync_server.protocol.session import (
    ClientHandshake,
    Ephemeral,
    FrameOpener,
    FrameSealer,
    ServerHandshake,
    SessionError,
    accept_session,
    open_session,
)

SERVER = SigningKey(bytes(range(32)))
DEVICE = SigningKey(bytes(range(32, 64)))
DOC = Path(__file__).resolve().parent.parent / "docs" / "security.md"


def handshake(device_key=DEVICE, pinned=SERVER.verify_key, registered=DEVICE.verify_key,
              client_eph=None, server_eph=None):
    client = ClientHandshake("dev-1", device_key, pinned, ephemeral=client_eph)
    server = ServerHandshake(SERVER, ephemeral=server_eph)
    welcome = server.on_hello(client.hello())
    auth, client_keys = client.on_welcome(welcome)
    server_keys = server.on_auth(auth, registered)
    return client_keys, server_keys


def test_both_sides_derive_matching_direction_keys() -> None:
    c, s = handshake()
    assert c.send == s.receive and c.receive == s.send and c.send != c.receive
    assert c.transcript == s.transcript


def test_fresh_ephemeral_keys_make_every_session_different() -> None:
    a, _ = handshake()
    b, _ = handshake()
    assert a.send != b.send


def test_a_server_without_the_pinned_key_is_refused() -> None:
    impostor = SigningKey.generate()
    with pytest.raises(SessionError, match="pinned server key"):
        handshake(pinned=impostor.verify_key)


def test_a_device_with_the_wrong_identity_key_is_refused() -> None:
    with pytest.raises(SessionError, match="device's signature"):
        handshake(device_key=SigningKey.generate())


def test_a_swapped_ephemeral_key_in_the_welcome_is_detected() -> None:
    client = ClientHandshake("dev-1", DEVICE, SERVER.verify_key)
    server = ServerHandshake(SERVER)
    welcome = cbor2.loads(server.on_hello(client.hello()))
    welcome["eph"] = Ephemeral.generate().public  # a man in the middle substitutes his key
    with pytest.raises(SessionError):
        client.on_welcome(cbor2.dumps(welcome))


def sealed_pair():
    c, s = handshake()
    return FrameSealer(c.send), FrameOpener(s.receive)


def test_frames_round_trip_in_order() -> None:
    seal, opener = sealed_pair()
    for i in range(5):
        assert opener.open(seal.seal(b"frame %d" % i)) == b"frame %d" % i


@pytest.mark.parametrize(("attack", "code"), [
    ("replay", ErrorCode.FRAME_REPLAYED),
    ("reorder", ErrorCode.FRAME_REORDERED),
    ("tamper", ErrorCode.FRAME_FORGED),
    ("truncate", ErrorCode.FRAME_TRUNCATED),
    ("forge", ErrorCode.FRAME_FORGED),
])
def test_each_frame_attack_is_refused_with_its_reason(attack: str, code: ErrorCode) -> None:
    seal, opener = sealed_pair()
    first, second = seal.seal(b"visit notes"), seal.seal(b"more")
    opener.open(first)
    bad = {
        "replay": first,
        "reorder": seal.seal(b"third"),  # skips `second`
        "tamper": second[:-1] + bytes([second[-1] ^ 1]),
        "truncate": second[:10],
        "forge": second[:8] + bytes(len(second) - 8),
    }[attack]
    with pytest.raises(SessionError) as info:
        opener.open(bad)
    assert info.value.code == code


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_frame_opener_only_raises_session_errors(frame: bytes) -> None:
    _, opener = sealed_pair()
    with pytest.raises(SessionError):
        opener.open(frame)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=200),
                 st.dictionaries(st.sampled_from(["type", "v", "device", "eph", "sig"]),
                                 st.one_of(st.binary(max_size=70), st.text(max_size=70),
                                           st.integers()), max_size=5).map(cbor2.dumps)))
def test_fuzz_handshake_parsers_only_raise_session_errors(frame: bytes) -> None:
    server = ServerHandshake(SERVER)
    client = ClientHandshake("dev-1", DEVICE, SERVER.verify_key)
    client.hello()
    for step in (server.on_hello, client.on_welcome,
                 lambda f: ServerHandshake(SERVER).on_auth(f, DEVICE.verify_key)):
        with contextlib.suppress(SessionError):
            step(frame)


class Pipe:
    """Two in-memory FrameChannels joined back to back."""

    def __init__(self, inbox: asyncio.Queue, outbox: asyncio.Queue) -> None:
        self.inbox, self.outbox = inbox, outbox

    async def send(self, frame: bytes) -> None:
        await self.outbox.put(frame)

    async def receive(self) -> bytes | None:
        return await self.inbox.get()

    async def close(self, reason: str) -> None:
        await self.outbox.put(None)


def pipes() -> tuple[Pipe, Pipe]:
    a, b = asyncio.Queue(), asyncio.Queue()
    return Pipe(a, b), Pipe(b, a)


async def test_a_session_over_a_channel_carries_frames_both_ways() -> None:
    device_side, server_side = pipes()

    async def lookup(device_id: str):
        return DEVICE.verify_key if device_id == "dev-1" else None

    (server_ch, device_id), client_ch = await asyncio.gather(
        accept_session(server_side, SERVER, lookup),
        open_session(device_side, "dev-1", DEVICE, SERVER.verify_key))
    assert device_id == "dev-1"
    await client_ch.send(b"hello server")
    assert await server_ch.receive() == b"hello server"
    await server_ch.send(b"hello device")
    assert await client_ch.receive() == b"hello device"


async def test_an_unknown_device_is_refused_like_a_bad_signature() -> None:
    """The server refuses in plaintext (no session exists) and the device reads the reason."""
    device_side, server_side = pipes()

    async def lookup(device_id: str):
        return None

    server, device = await asyncio.gather(
        accept_session(server_side, SERVER, lookup),
        open_session(device_side, "dev-9", DEVICE, SERVER.verify_key), return_exceptions=True)
    assert isinstance(server, SessionError) and isinstance(device, SessionError)
    assert "device's signature does not verify" in str(server)
    assert device.code == ErrorCode.HANDSHAKE_FAILED
    assert "refused the session" in str(device)


def vectors() -> dict[str, str]:
    """The documented vectors: fixed identity and ephemeral seeds, two frames each way."""
    client = ClientHandshake("device-0001", DEVICE, SERVER.verify_key,
                             ephemeral=Ephemeral.generate(bytes([1]) * 32))
    server = ServerHandshake(SERVER, ephemeral=Ephemeral.generate(bytes([2]) * 32))
    hello = client.hello()
    welcome = server.on_hello(hello)
    auth, ck = client.on_welcome(welcome)
    sk = server.on_auth(auth, DEVICE.verify_key)
    assert ck.send == sk.receive
    return {
        "server identity seed": bytes(range(32)).hex(),
        "device identity seed": bytes(range(32, 64)).hex(),
        "device ephemeral seed": (bytes([1]) * 32).hex(),
        "server ephemeral seed": (bytes([2]) * 32).hex(),
        "hello": hello.hex(),
        "welcome": welcome.hex(),
        "auth": auth.hex(),
        "personalisation vatra-th1, as BLAKE2b takes it (16 bytes)":
            b"vatra-th1".ljust(16, b"\0").hex(),
        "transcript th1": server._th1.hex(),
        "transcript th2": ck.transcript.hex(),
        "key device-to-server": ck.send.hex(),
        "key server-to-device": ck.receive.hex(),
        "frame 0 plaintext: the 4 ASCII bytes 'join'": b"join".hex(),
        "frame 0 device-to-server (plaintext 'join')": FrameSealer(ck.send).seal(b"join").hex(),
    }


def test_the_documented_vectors_are_what_the_code_computes() -> None:
    text = DOC.read_text()
    documented = dict(re.findall(r"^\| (.+?) \| `([0-9a-f]+)` \|$", text, re.M))
    assert documented == vectors()


def test_the_crypto_bench_runs_and_reports_every_figure(capsys) -> None:
    from vatra_devtools import bench_crypto

    bench_crypto.main()
    out = capsys.readouterr().out
    for label in ("handshake, both sides", "seal + open    200 B", "Argon2id (interactive)",
                  "every 6-digit PIN"):
        assert label in out


def test_the_transcript_is_plain_blake2b_and_the_hello_carries_untagged_bytes() -> None:
    """Issue 15: a client written from the docs had to guess how BLAKE2b's
    personalisation is padded, and whether CBOR byte strings are tagged (a common
    JavaScript encoder adds tag 64). The documented th1 is Python's own BLAKE2b over the
    documented inputs, with the name zero-padded; the hello's key is an untagged byte
    string."""
    import hashlib

    import cbor2

    v = vectors()
    hello = bytes.fromhex(v["hello"])
    welcome = cbor2.loads(bytes.fromhex(v["welcome"]))
    th1 = hashlib.blake2b(hello + welcome["eph"] + bytes(SERVER.verify_key), digest_size=32,
                          person=b"vatra-th1")
    assert th1.hexdigest() == v["transcript th1"]
    eph = cbor2.loads(hello)["eph"]
    assert b"\x58\x20" + eph in hello and b"\xd8\x40" not in hello  # no tag 64
