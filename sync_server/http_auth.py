"""Device-signed HTTP requests: the same Ed25519 identity as the sync session.

A request carries ``Authorization: Vatra-Device id=<device>, ts=<unix seconds>,
nonce=<base64 of 16 random bytes>, sig=<base64>``, where ``sig`` signs::

    "vatra-http-v1\\n" METHOD "\\n" PATH?QUERY "\\n" TS "\\n" NONCE "\\n" BLAKE2b-256(body) in hex

(the nonce makes two identical requests in the same second distinct).

The server accepts it if the device is enrolled and not revoked, ``ts`` is
within :data:`WINDOW` seconds of its clock, the signature verifies, and the
same signature was not seen within the window (replay). Shared by the server
and ``client_sdk`` (PyNaCl only).
"""

from __future__ import annotations

import base64
import binascii
import os
import time
from collections import OrderedDict

import nacl.encoding
import nacl.exceptions
import nacl.hash
from nacl.signing import SigningKey, VerifyKey

SCHEME = "Vatra-Device"
WINDOW = 300


def _message(method: str, path_qs: str, ts: int, nonce: str, body: bytes) -> bytes:
    digest = nacl.hash.blake2b(body, digest_size=32, encoder=nacl.encoding.HexEncoder).decode()
    return f"vatra-http-v1\n{method.upper()}\n{path_qs}\n{ts}\n{nonce}\n{digest}".encode()


def sign(device_id: str, key: SigningKey, method: str, path_qs: str, body: bytes = b"",
         now: float | None = None) -> str:
    """The ``Authorization`` header value for one request."""
    ts = int(now if now is not None else time.time())
    nonce = base64.b64encode(os.urandom(16)).decode()
    sig = key.sign(_message(method, path_qs, ts, nonce, body)).signature
    return (f"{SCHEME} id={device_id}, ts={ts}, nonce={nonce}, "
            f"sig={base64.b64encode(sig).decode()}")


class HttpAuthError(Exception):
    """Why a signed request was refused (said to the client as 401)."""


def parse(header: str | None) -> tuple[str, int, str, bytes]:
    if not header or not header.startswith(SCHEME + " "):
        raise HttpAuthError(f"missing '{SCHEME}' authorization")
    try:
        fields = dict(part.strip().split("=", 1)
                      for part in header[len(SCHEME) + 1:].split(","))
        return (fields["id"], int(fields["ts"]), fields["nonce"],
                base64.b64decode(fields["sig"], validate=True))
    except (KeyError, ValueError, binascii.Error) as exc:
        raise HttpAuthError("malformed authorization header") from exc


class ReplayGuard:
    """Signatures seen within the window (bounded): a replayed request is refused."""

    def __init__(self, capacity: int = 100_000) -> None:
        self._seen: OrderedDict[bytes, float] = OrderedDict()
        self._capacity = capacity

    def check(self, sig: bytes, now: float) -> None:
        while self._seen and next(iter(self._seen.values())) < now - 2 * WINDOW:
            self._seen.popitem(last=False)
        if sig in self._seen:
            raise HttpAuthError("replayed request")
        self._seen[sig] = now
        if len(self._seen) > self._capacity:
            self._seen.popitem(last=False)


def verify(key: VerifyKey, method: str, path_qs: str, ts: int, nonce: str, sig: bytes,
           body: bytes, guard: ReplayGuard, now: float | None = None) -> None:
    now = now if now is not None else time.time()
    if abs(now - ts) > WINDOW:
        raise HttpAuthError("request timestamp outside the accepted window")
    try:
        key.verify(_message(method, path_qs, ts, nonce, body), sig)
    except nacl.exceptions.BadSignatureError as exc:
        raise HttpAuthError("signature does not verify") from exc
    guard.check(sig, now)
