"""``POST /v1/enroll``: a device trades a one-time code for its place in Vatra.

Request (JSON)::

    {"code": "K7Q2M9-ABCD-EFGH-JKLM-NPQR",
     "signing_key": "<base64 Ed25519 public key>",
     "exchange_key": "<base64 X25519 public key>",
     "actor_ids": ["<32 hex chars>", ...]}

Answer ``201``: ``{"device_id", "user_id", "role", "server_signing_key"}`` —
the device pins ``server_signing_key`` and checks it in every session
handshake. Refusals: ``400`` (malformed), ``403`` ``enrollment-refused``
(same answer for an unknown, wrong, expired, used or locked code), ``429``
``too-many-attempts`` after :data:`MAX_FAILURES_PER_ADDRESS` refusals from
one client address within :data:`WINDOW_SECONDS`.
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
from collections import defaultdict, deque

from aiohttp import web
from nacl.signing import SigningKey

from sync_server.auth.identity import IdentityError, IdentityStore
from sync_server.protocol.errors import ErrorCode

log = logging.getLogger(__name__)

MAX_FAILURES_PER_ADDRESS = 10
WINDOW_SECONDS = 15 * 60

IDENTITY = web.AppKey("identity", IdentityStore)
SERVER_KEY = web.AppKey("server_key", SigningKey)


class FailureLimiter:
    """Counts refusals per client address in a sliding window."""

    def __init__(self, max_failures: int = MAX_FAILURES_PER_ADDRESS,
                 window: float = WINDOW_SECONDS, clock=time.monotonic) -> None:
        self.max_failures = max_failures
        self.window = window
        self._clock = clock
        self._failures: defaultdict[str, deque[float]] = defaultdict(deque)

    def blocked(self, address: str) -> bool:
        q = self._failures.get(address)
        if not q:
            return False
        horizon = self._clock() - self.window
        while q and q[0] < horizon:
            q.popleft()
        if not q:
            del self._failures[address]
            return False
        return len(q) >= self.max_failures

    def failed(self, address: str) -> None:
        self._failures[address].append(self._clock())


LIMITER = web.AppKey("enrollment_limiter", FailureLimiter)


def _refusal(status: int, code: ErrorCode, message: str) -> web.Response:
    return web.json_response({"code": str(code), "message": message}, status=status)


async def enroll(request: web.Request) -> web.Response:
    limiter = request.app[LIMITER]
    address = request.remote or "unknown"
    if limiter.blocked(address):
        log.warning("enrollment: too many refusals from one address")
        return _refusal(429, ErrorCode.TOO_MANY_ATTEMPTS,
                        "too many failed enrollment attempts; wait and try again")
    try:
        body = await request.json()
        code = body["code"]
        signing_key = base64.b64decode(body["signing_key"], validate=True)
        exchange_key = base64.b64decode(body["exchange_key"], validate=True)
        actor_ids = [bytes.fromhex(a) for a in body["actor_ids"]]
        if not isinstance(code, str):
            raise TypeError("code")
    except (ValueError, KeyError, TypeError, binascii.Error):
        limiter.failed(address)
        return _refusal(400, ErrorCode.MALFORMED_MESSAGE,
                        "expected JSON {code, signing_key, exchange_key, actor_ids}")
    try:
        device = await request.app[IDENTITY].enroll(
            code, signing_key=signing_key, exchange_key=exchange_key, actor_ids=actor_ids)
    except IdentityError as err:
        limiter.failed(address)
        log.info("enrollment refused: %s", err.code)
        status = 403 if err.code is ErrorCode.ENROLLMENT_REFUSED else 400
        return _refusal(status, err.code, err.message)
    log.info("device %s enrolled", device.id)
    server_key = request.app[SERVER_KEY].verify_key
    return web.json_response({
        "device_id": device.id, "user_id": device.user.id, "role": device.user.role,
        "server_signing_key": base64.b64encode(bytes(server_key)).decode(),
    }, status=201)
