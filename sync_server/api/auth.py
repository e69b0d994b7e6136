"""Device-signed HTTP requests, checked: the signer, the window, the nonce.

Every device-signed HTTP API authenticates through :class:`SignedRequests`: the device
must be enrolled and not revoked, the signature must verify over the request
(:mod:`sync_server.protocol.http_auth`), and the nonce must be new for that device
(claimed in PostgreSQL, :mod:`sync_server.store.nonces`: no replay after a restart or on
another instance). Anything else is ``401``.
"""

from __future__ import annotations

from aiohttp import web
from nacl.signing import VerifyKey

from sync_server.api.errors import http_error
from sync_server.auth.identity import Device, IdentityStore
from sync_server.protocol.errors import ErrorCode
from sync_server.protocol.http_auth import HttpAuthError, parse, verify
from sync_server.store.nonces import NonceStore


class SignedRequests:
    def __init__(self, identity: IdentityStore, nonces: NonceStore) -> None:
        self._identity = identity
        self._nonces = nonces

    async def authenticate(self, request: web.Request) -> tuple[Device, bytes]:
        """The enrolled, unrevoked device that signed this request, and its body."""
        body = await request.read()
        try:
            device_id, ts, nonce, sig = parse(request.headers.get("Authorization"))
            device = await self._identity.device(device_id)
            if device is None or device.revoked:
                raise HttpAuthError("unknown or revoked device")
            verify(VerifyKey(device.signing_key), request.method, request.path_qs, ts, nonce,
                   sig, body)
            if not await self._nonces.claim(device_id, nonce, ts):
                raise HttpAuthError("replayed request")
        except HttpAuthError as err:
            raise http_error(401, ErrorCode.UNAUTHORIZED, err.message) from err
        return device, body
