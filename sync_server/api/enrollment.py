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

The client address is the peer's, unless the peer is one of the trusted load balancers
(``VATRA_TRUSTED_PROXIES``): then it is the nearest address in ``X-Forwarded-For`` that
is not a trusted balancer. A hop that is not an IP address makes it the balancer's:
made-up keys would each get ten tries, and fill the limiter's memory. Behind a
balancer, without this, every device had the balancer's address, and ten wrong codes
anywhere blocked every enrollment.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import logging
from collections.abc import Iterable
from typing import Any

from aiohttp import web
from nacl.signing import SigningKey

from sync_server.api.errors import http_error
from sync_server.auth.enrollment import MAX_FAILURES_PER_ADDRESS, FailureLimiter
from sync_server.auth.identity import ROLES, IdentityError, IdentityStore
from sync_server.protocol.errors import ErrorCode

log = logging.getLogger(__name__)

__all__ = ["MAX_FAILURES_PER_ADDRESS", "routes"]


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def client_address(request: web.Request, trusted: Iterable[Network]) -> str:
    """Who is asking: the peer, or (from a trusted balancer) the forwarded client."""
    trusted = list(trusted)

    def is_trusted(address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in trusted)

    address = request.remote or "unknown"
    if not trusted or not is_trusted(address):
        return address
    forwarded = [a.strip() for h in request.headers.getall("X-Forwarded-For", [])
                 for a in h.split(",") if a.strip()]
    for hop in reversed(forwarded):  # the balancer appended the address it saw last
        try:
            ipaddress.ip_address(hop)
        except ValueError:  # not an address: made up by someone, count the balancer's
            return address
        if not is_trusted(hop):
            return hop
    return address


def routes(identity: IdentityStore, server_key: SigningKey,
           limiter: FailureLimiter, trusted_proxies: Iterable[str] = ()) -> list[web.RouteDef]:
    trusted = [ipaddress.ip_network(p, strict=False) for p in trusted_proxies]

    async def enroll(request: web.Request) -> web.Response:
        address = client_address(request, trusted)
        if limiter.blocked(address):
            log.warning("enrollment: too many refusals from one address")
            raise http_error(429, ErrorCode.TOO_MANY_ATTEMPTS,
                             "too many failed enrollment attempts; wait and try again")
        try:
            body = await request.json()
            code = body["code"]
            signing_key = base64.b64decode(body["signing_key"], validate=True)
            exchange_key = base64.b64decode(body["exchange_key"], validate=True)
            actor_ids = [bytes.fromhex(a) for a in body["actor_ids"]]
            if not isinstance(code, str):
                raise TypeError("code")
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            limiter.failed(address)
            raise http_error(400, ErrorCode.MALFORMED_MESSAGE,
                             "expected JSON {code, signing_key, exchange_key, actor_ids}") from exc
        try:
            device = await identity.enroll(code, signing_key=signing_key,
                                           exchange_key=exchange_key, actor_ids=actor_ids)
        except IdentityError as err:
            limiter.failed(address)
            log.info("enrollment refused: %s", err.code)
            status = 403 if err.code is ErrorCode.ENROLLMENT_REFUSED else 400
            raise http_error(status, err.code, err.message) from err
        log.info("device %s enrolled", device.id)
        return web.json_response({
            "device_id": device.id, "user_id": device.user.id, "role": device.user.role,
            "server_signing_key": base64.b64encode(bytes(server_key.verify_key)).decode(),
        }, status=201)

    return [web.post("/v1/enroll", enroll)]


_BASE64_KEY = {"type": "string", "format": "byte",
               "description": "standard base64 (with padding) of a 32-byte public key"}

SCHEMAS: dict[str, Any] = {
    "EnrollRequest": {
        "type": "object", "additionalProperties": False,
        "required": ["code", "signing_key", "exchange_key", "actor_ids"],
        "properties": {
            "code": {"type": "string", "example": "K7Q2M9-ABCD-EFGH-JKLM-NPQR",
                     "description": "the one-time code from `vatra device enroll-code`"},
            "signing_key": {**_BASE64_KEY, "description": "the device's Ed25519 public key "
                                                         "(standard base64, 32 bytes)"},
            "exchange_key": {**_BASE64_KEY, "description": "the device's X25519 public key "
                                                          "(standard base64, 32 bytes)"},
            "actor_ids": {"type": "array", "minItems": 1, "items": {
                "type": "string", "pattern": "^[0-9a-f]+$",
                "description": "an Automerge actor id the device writes with, lowercase hex "
                               "(the SDK's are 16 bytes: 32 hex characters)"}},
        }},
    "Enrolled": {
        "type": "object", "required": ["device_id", "user_id", "role", "server_signing_key"],
        "properties": {
            "device_id": {"type": "string", "description": "the enrolled device's id: the "
                                                           "session handshake's `device`"},
            "user_id": {"type": "string"},
            "role": {"type": "string", "enum": list(ROLES)},
            "server_signing_key": {**_BASE64_KEY, "description": "the server's Ed25519 "
                                   "identity key (standard base64, 32 bytes): pin it, and "
                                   "check it in every session handshake"},
        }},
}

PATHS = {
    "/v1/enroll": {"post": {
        "summary": "enroll a device with a one-time code (sync_server/api/enrollment.py)",
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/EnrollRequest"}}}},
        "responses": {"201": {"description": "enrolled", "content": {"application/json": {
                          "schema": {"$ref": "#/components/schemas/Enrolled"}}}},
                      **{s: {"description": "refused", "content": {"application/json": {
                          "schema": {"$ref": "#/components/schemas/Error"}}}}
                         for s in ("400", "403", "429")}}}},
}
