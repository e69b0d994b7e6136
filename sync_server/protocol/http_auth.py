"""Device-signed HTTP requests: the same Ed25519 identity as the sync session.

A request carries ``Authorization: Vatra-Device id=<device>, ts=<unix seconds>,
nonce=<base64 of 16 random bytes>, sig=<base64>``, where ``sig`` signs::

    "vatra-http-v1\\n" METHOD "\\n" PATH?QUERY "\\n" TS "\\n" NONCE "\\n" BLAKE2b-256(body) in hex

(the nonce makes two identical requests in the same second distinct).

The server accepts it if the device is enrolled and not revoked, ``ts`` is
within :data:`WINDOW` seconds of its clock, the signature verifies, and the
device never used the nonce before (a replay; the server keeps nonces in
PostgreSQL, :mod:`sync_server.store.nonces`). Shared by the server and
``client_sdk`` (PyNaCl only).
"""

from __future__ import annotations

import base64
import binascii
import os
import time

import nacl.encoding
import nacl.exceptions
import nacl.hash
from nacl.signing import SigningKey, VerifyKey

from sync_server.protocol.errors import ErrorCode, VatraError

SCHEME = "Vatra-Device"
WINDOW = 300
#: Longest device id and nonce a header may carry (a nonce is 24 characters).
MAX_FIELD_CHARS = 64


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


class HttpAuthError(VatraError):
    """Why a signed request was refused (said to the client as 401)."""

    code = ErrorCode.UNAUTHORIZED


def parse(header: str | None) -> tuple[str, int, str, bytes]:
    if not header or not header.startswith(SCHEME + " "):
        raise HttpAuthError(f"missing '{SCHEME}' authorization")
    try:
        fields = dict(part.strip().split("=", 1)
                      for part in header[len(SCHEME) + 1:].split(","))
        device_id, ts, nonce = fields["id"], int(fields["ts"]), fields["nonce"]
        sig = base64.b64decode(fields["sig"], validate=True)
    except (KeyError, ValueError, binascii.Error) as exc:
        raise HttpAuthError("malformed authorization header") from exc
    if not (0 < len(device_id) <= MAX_FIELD_CHARS and 0 < len(nonce) <= MAX_FIELD_CHARS):
        raise HttpAuthError("malformed authorization header")
    return device_id, ts, nonce, sig


def verify(key: VerifyKey, method: str, path_qs: str, ts: int, nonce: str, sig: bytes,
           body: bytes, now: float | None = None) -> None:
    """Signature and timestamp; the caller refuses a nonce the device used before."""
    now = now if now is not None else time.time()
    if abs(now - ts) > WINDOW:
        raise HttpAuthError("request timestamp outside the accepted window")
    try:
        key.verify(_message(method, path_qs, ts, nonce, body), sig)
    except nacl.exceptions.BadSignatureError as exc:
        raise HttpAuthError("signature does not verify") from exc
