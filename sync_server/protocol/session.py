"""The end-to-end encrypted session under the message codec (Vatra session v1).

Before any automerge-repo message, device and server run a three-message
handshake over the WebSocket; afterwards every frame is sealed. Shared by the
server and ``client_sdk``; depends only on PyNaCl and cbor2, and every
primitive is PyNaCl's (libsodium's)::

    device                                             server
      hello   {type, v: 1, device: id, eph: E_d}  ──▶
                                                  ◀──  welcome {type, v: 1, eph: E_s, sig: sig_s}
      auth    {type, sig: sig_d}                  ──▶
                                                  ◀──  ready {type} (sealed), or a plaintext error
      ═══════════ sealed frames both ways ═══════════

    th1 = BLAKE2b-256(person "vatra-th1", hello bytes ‖ E_s ‖ S)     S: server identity (Ed25519)
    sig_s = Ed25519_sign(server, "vatra-session-v1/server" ‖ th1)
    th2 = BLAKE2b-256(person "vatra-th2", th1 ‖ sig_s ‖ D)             D: device identity (Ed25519)
    sig_d = Ed25519_sign(device, "vatra-session-v1/device" ‖ th2)
    (rx, tx) = crypto_kx_{client,server}_session_keys(ephemeral X25519 keys)
    k_dir = BLAKE2b-256(key = that direction's kx key, person "vatra-key-v1", th2)

The device pins ``S`` at enrollment; the server knows ``D`` from enrollment.
Both identity signatures cover the whole transcript, so neither side can be
impersonated and no message can be swapped; the X25519 keys are ephemeral,
so a later theft of an identity key reveals no past session (forward secrecy).

A sealed frame is ``counter (8 bytes, big-endian) ‖ XChaCha20-Poly1305(k_dir,
nonce = 16 zero bytes ‖ counter, aad = counter, plaintext)``. Each direction
counts from 0. The receiver knows the next counter: a lower one is a replay,
a higher one means a frame was dropped or reordered, a failed tag means
forgery or tampering, a short frame is truncated. Each closes the session
with that reason. See docs/security.md for test vectors.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import cbor2
import nacl.bindings as sodium
import nacl.encoding
import nacl.exceptions
import nacl.hash
from nacl.signing import SigningKey, VerifyKey

from sync_server.protocol.channel import FrameChannel
from sync_server.protocol.errors import ErrorCode, ProtocolError, VatraError

VERSION = 1
HANDSHAKE_TIMEOUT = 10.0
_COUNTER = 8
_TAG = sodium.crypto_aead_xchacha20poly1305_ietf_ABYTES
_MAX_COUNTER = 2**64 - 1


class SessionError(ProtocolError):
    """The handshake failed or a sealed frame was refused; the session is closed."""

    code = ErrorCode.HANDSHAKE_FAILED


@dataclass(frozen=True, slots=True)
class Ephemeral:
    """An X25519 key pair for one session (``crypto_kx``)."""

    public: bytes
    secret: bytes

    @classmethod
    def generate(cls, seed: bytes | None = None) -> Ephemeral:
        """A fresh pair; ``seed`` only for test vectors."""
        pk, sk = sodium.crypto_kx_seed_keypair(seed if seed is not None else os.urandom(32))
        return cls(pk, sk)


@dataclass(frozen=True, slots=True)
class SessionKeys:
    send: bytes
    receive: bytes
    transcript: bytes  # th2: identifies the session (both sides hold the same value)


def _h(person: bytes, *parts: bytes, key: bytes = b"") -> bytes:
    return nacl.hash.blake2b(b"".join(parts), digest_size=32, key=key, person=person,
                             encoder=nacl.encoding.RawEncoder)


def _direction_key(kx_key: bytes, th2: bytes) -> bytes:
    return _h(b"vatra-key-v1", th2, key=kx_key)


def _load(frame: bytes, expected_type: str) -> dict[str, Any]:
    try:
        msg = cbor2.loads(frame)
    except Exception as exc:
        raise SessionError(f"handshake: {expected_type} is not valid CBOR") from exc
    if not isinstance(msg, dict) or msg.get("type") != expected_type:
        if isinstance(msg, dict) and msg.get("type") == "error":
            raise SessionError(f"server refused the session: {str(msg.get('message'))[:200]}",
                               code=_peer_code(msg.get("code")))
        raise SessionError(f"handshake: expected {expected_type}")
    return msg


def _peer_code(code: Any) -> ErrorCode:
    try:
        return ErrorCode(code)
    except ValueError:
        return ErrorCode.HANDSHAKE_FAILED


def _field(msg: dict[str, Any], key: str, size: int | None = None) -> bytes:
    value = msg.get(key)
    if not isinstance(value, bytes) or (size is not None and len(value) != size):
        raise SessionError(f"handshake: field {key!r} must be {size or 'some'} bytes")
    return value


# -- the two roles of the handshake, without I/O --------------------------------------------


class ClientHandshake:
    def __init__(self, device_id: str, device_key: SigningKey, server_identity: VerifyKey,
                 *, ephemeral: Ephemeral | None = None) -> None:
        self.device_id = device_id
        self._device_key = device_key
        self._server = server_identity
        self._eph = ephemeral or Ephemeral.generate()
        self._hello = b""

    def hello(self) -> bytes:
        self._hello = cbor2.dumps({"type": "vatra-hello", "v": VERSION,
                                   "device": self.device_id, "eph": self._eph.public})
        return self._hello

    def on_welcome(self, frame: bytes) -> tuple[bytes, SessionKeys]:
        """Check the server's signature; return the ``auth`` frame and the session keys."""
        msg = _load(frame, "vatra-welcome")
        if msg.get("v") != VERSION:
            raise SessionError("handshake: unsupported session version")
        server_eph, sig_s = _field(msg, "eph", 32), _field(msg, "sig", 64)
        th1 = _h(b"vatra-th1", self._hello, server_eph, bytes(self._server))
        try:
            self._server.verify(b"vatra-session-v1/server" + th1, sig_s)
        except nacl.exceptions.BadSignatureError as exc:
            raise SessionError("handshake: the server's signature does not match the pinned "
                               "server key") from exc
        th2 = _h(b"vatra-th2", th1, sig_s, bytes(self._device_key.verify_key))
        sig_d = self._device_key.sign(b"vatra-session-v1/device" + th2).signature
        rx, tx = sodium.crypto_kx_client_session_keys(self._eph.public, self._eph.secret,
                                                      server_eph)
        keys = SessionKeys(_direction_key(tx, th2), _direction_key(rx, th2), th2)
        return cbor2.dumps({"type": "vatra-auth", "sig": sig_d}), keys


class ServerHandshake:
    """``lookup(device_id)`` returns the device's identity key, or None if unknown/revoked."""

    def __init__(self, server_key: SigningKey, *, ephemeral: Ephemeral | None = None) -> None:
        self._server_key = server_key
        self._eph = ephemeral or Ephemeral.generate()
        self.device_id = ""
        self._th1 = b""
        self._sig_s = b""
        self._client_eph = b""

    def on_hello(self, frame: bytes) -> bytes:
        msg = _load(frame, "vatra-hello")
        if msg.get("v") != VERSION:
            raise SessionError("handshake: unsupported session version")
        device = msg.get("device")
        if not isinstance(device, str) or not 0 < len(device) <= 64:
            raise SessionError("handshake: 'device' must be a device id")
        self.device_id = device
        self._client_eph = _field(msg, "eph", 32)
        self._th1 = _h(b"vatra-th1", frame, self._eph.public, bytes(self._server_key.verify_key))
        self._sig_s = self._server_key.sign(b"vatra-session-v1/server" + self._th1).signature
        return cbor2.dumps({"type": "vatra-welcome", "v": VERSION, "eph": self._eph.public,
                            "sig": self._sig_s})

    def on_auth(self, frame: bytes, device_identity: VerifyKey) -> SessionKeys:
        msg = _load(frame, "vatra-auth")
        sig_d = _field(msg, "sig", 64)
        th2 = _h(b"vatra-th2", self._th1, self._sig_s, bytes(device_identity))
        try:
            device_identity.verify(b"vatra-session-v1/device" + th2, sig_d)
        except nacl.exceptions.BadSignatureError as exc:
            raise SessionError("handshake: the device's signature does not verify") from exc
        rx, tx = sodium.crypto_kx_server_session_keys(self._eph.public, self._eph.secret,
                                                      self._client_eph)
        return SessionKeys(_direction_key(tx, th2), _direction_key(rx, th2), th2)


# -- sealed frames ---------------------------------------------------------------------------


class FrameSealer:
    def __init__(self, key: bytes) -> None:
        self._key = key
        self._next = 0

    def seal(self, plaintext: bytes) -> bytes:
        if self._next > _MAX_COUNTER:
            raise SessionError("session exhausted its frame counter; reconnect",
                               code=ErrorCode.FRAME_REORDERED)
        header = self._next.to_bytes(_COUNTER, "big")
        self._next += 1
        return header + sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(
            plaintext, header, bytes(16) + header, self._key)


class FrameOpener:
    def __init__(self, key: bytes) -> None:
        self._key = key
        self._next = 0

    def open(self, frame: bytes) -> bytes:
        if len(frame) < _COUNTER + _TAG:
            raise SessionError("sealed frame is truncated", code=ErrorCode.FRAME_TRUNCATED)
        header = frame[:_COUNTER]
        counter = int.from_bytes(header, "big")
        if counter < self._next:
            raise SessionError(f"replayed frame (counter {counter}, expected {self._next})",
                               code=ErrorCode.FRAME_REPLAYED)
        if counter > self._next:
            raise SessionError(f"frame out of order (counter {counter}, expected {self._next})",
                               code=ErrorCode.FRAME_REORDERED)
        try:
            plaintext: bytes = sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(
                frame[_COUNTER:], header, bytes(16) + header, self._key)
        except nacl.exceptions.CryptoError as exc:
            raise SessionError("frame failed authentication (forged or tampered)",
                               code=ErrorCode.FRAME_FORGED) from exc
        self._next += 1
        return plaintext


class SecureChannel:
    """A :class:`FrameChannel` whose frames are sealed with the session keys."""

    def __init__(self, inner: FrameChannel, keys: SessionKeys) -> None:
        self._inner = inner
        self._sealer = FrameSealer(keys.send)
        self._opener = FrameOpener(keys.receive)
        self.transcript = keys.transcript

    async def send(self, frame: bytes) -> None:
        await self._inner.send(self._sealer.seal(frame))

    async def receive(self) -> bytes | None:
        sealed = await self._inner.receive()
        return None if sealed is None else self._opener.open(sealed)

    def unseal(self, sealed: bytes) -> bytes:
        """Open one frame already read from the inner channel (the handshake's last step)."""
        return self._opener.open(sealed)

    async def close(self, reason: str) -> None:
        await self._inner.close(reason)


# -- the handshake over a channel ------------------------------------------------------------


async def _next(channel: FrameChannel, what: str) -> bytes:
    frame = await channel.receive()
    if frame is None:
        raise SessionError(f"connection closed during the handshake (waiting for {what})")
    return frame


async def _from_server(channel: FrameChannel, what: str) -> bytes:
    """The device side's next handshake frame. A connection that closes here is a transport
    failure (``ConnectionError``: retry), not the server's refusal, which is a frame."""
    frame = await channel.receive()
    if frame is None:
        raise ConnectionError(f"connection closed during the handshake (waiting for {what})")
    return frame


async def open_session(channel: FrameChannel, device_id: str, device_key: SigningKey,
                       server_identity: VerifyKey, *,
                       early: Sequence[bytes] = ()) -> SecureChannel:
    """Device side: run the handshake on ``channel`` and return the sealed channel.

    The server confirms a session with a sealed ``vatra-ready`` as its first frame, or
    refuses it with a plaintext ``error`` (e.g. a revoked device): either way the device
    knows where it stands before it reads any data.

    ``early``: plaintext frames sealed and sent right behind ``auth``, in the same flight
    (the device's ``join``, and the fast path's ``vatra-heads``), which saves a round
    trip. This is safe: the device holds the session keys once it has checked the
    server's signature over the transcript, which binds the server's ephemeral key, so
    only the server it pinned can open them; they cannot be replayed into another
    session (its keys differ); and the server opens them only after checking ``auth``.
    A refused session discards them unread.
    """
    hs = ClientHandshake(device_id, device_key, server_identity)
    await channel.send(hs.hello())
    welcome = await asyncio.wait_for(_from_server(channel, "welcome"), HANDSHAKE_TIMEOUT)
    auth, keys = hs.on_welcome(welcome)
    await channel.send(auth)
    secure = SecureChannel(channel, keys)
    for frame in early:
        await secure.send(frame)
    first = await asyncio.wait_for(_from_server(channel, "ready"), HANDSHAKE_TIMEOUT)
    if first[:1] != bytes(1):  # a sealed frame starts with counter 0; anything else is a refusal
        _load(first, "vatra-ready")  # raises SessionError with the server's reason
    _load(secure.unseal(first), "vatra-ready")
    return secure


DeviceLookup = Callable[[str], Awaitable[VerifyKey | None]]


async def accept_session(channel: FrameChannel, server_key: SigningKey,
                         lookup: DeviceLookup) -> tuple[SecureChannel, str]:
    """Server side: run the handshake; return the sealed channel and the device id.

    An unknown or revoked device is refused with the same error as a bad signature,
    so the answer does not tell a stranger which device ids exist.
    """

    async def run() -> tuple[SecureChannel, str]:
        hs = ServerHandshake(server_key)
        welcome = hs.on_hello(await _next(channel, "hello"))
        identity = await lookup(hs.device_id)
        await channel.send(welcome)
        auth = await _next(channel, "auth")
        if identity is None:
            raise SessionError("handshake: the device's signature does not verify")
        secure = SecureChannel(channel, hs.on_auth(auth, identity))
        await secure.send(cbor2.dumps({"type": "vatra-ready"}))
        return secure, hs.device_id

    try:
        return await asyncio.wait_for(run(), HANDSHAKE_TIMEOUT)
    except (VatraError, TimeoutError) as exc:
        # A refusal (ProtocolError), or a fault of the server's own the device should retry
        # after (StorageError: the lookup's database is down), or the handshake's time up.
        err = exc if isinstance(exc, VatraError) else SessionError("handshake timed out")
        # Plaintext, since no session exists: the device reads it as the refusal's reason.
        with contextlib.suppress(Exception):
            await channel.send(cbor2.dumps({"type": "error", "code": str(err.code),
                                            "message": err.message}))
        raise err from exc
