"""The supervisors' HTTP API: pending change requests of their county, approve, reject.

Every call is signed by a supervisor's enrolled device (:mod:`sync_server.protocol.http_auth`)
and scoped to the supervisor's county; a household outside it answers ``404``
exactly like one that does not exist. Approving applies the structural change
as the server's own change (validated, persisted, audited under the
supervisor's device, fanned out to every team tablet); approving twice
applies once. Rejecting changes nothing but the request.

This API is outside the end-to-end session, so it carries no household
content: the list gives ids, kinds, who asked and when — the supervisor's
tablet reads the request itself through sync. The list is read from the
projection (``proj.change_requests``), so it follows syncs within the
projection lag. Keep decision notes free of
personal data. The OpenAPI document is served at ``/v1/openapi.json``.
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from aiohttp import web
from nacl.signing import VerifyKey

from conflict import Household, InvalidValueError, UnknownEntityError, is_household_id
from conflict.household import utc_instant
from sync_server.auth.enrollment import IDENTITY
from sync_server.auth.identity import Device
from sync_server.projection.readmodel import Scope, reading
from sync_server.protocol.http_auth import HttpAuthError, parse, verify
from sync_server.store.contract import Author
from sync_server.store.nonces import NonceStore
from sync_server.store.tables import proj_change_requests

NONCES = web.AppKey("nonces", NonceStore)
REQUEST_STATUSES = ("pending", "approved", "rejected")


def error(status: int, code: str, message: str,
          headers: dict[str, str] | None = None) -> web.HTTPException:
    """An HTTP error with the JSON body every Vatra HTTP API answers: the rule and why."""
    cls = {400: web.HTTPBadRequest, 401: web.HTTPUnauthorized, 403: web.HTTPForbidden,
           404: web.HTTPNotFound, 409: web.HTTPConflict}[status]
    return cls(text=json.dumps({"code": code, "message": message}),
               content_type="application/json", headers=headers)



async def authenticate(request: web.Request) -> tuple[Device, bytes]:
    """The enrolled, unrevoked device that signed this request, and the request's body
    (``401`` otherwise). Shared by every device-signed HTTP API."""
    body = await request.read()
    try:
        device_id, ts, nonce, sig = parse(request.headers.get("Authorization"))
        device = await request.app[IDENTITY].device(device_id)
        if device is None or device.revoked:
            raise HttpAuthError("unknown or revoked device")
        verify(VerifyKey(device.signing_key), request.method, request.path_qs, ts, nonce, sig,
               body)
        if not await request.app[NONCES].claim(device_id, nonce, ts):
            raise HttpAuthError("replayed request")
    except HttpAuthError as err:
        raise error(401, "unauthorized", str(err)) from err
    return device, body


async def _supervisor(request: web.Request) -> tuple[Device, bytes]:
    device, body = await authenticate(request)
    if device.user.role != "supervisor":
        raise error(403, "forbidden", "only supervisors decide change requests")
    return device, body


async def _household_in_county(request: web.Request, device: Device) -> Household:
    from sync_server.app import SYNCHRONIZER  # the app module imports this one

    hid = request.match_info["household_id"]
    if not is_household_id(hid):  # e.g. a NUL, which no PostgreSQL text can hold
        raise error(404, "not-found", "no such household")
    actor = await request.app[SYNCHRONIZER].registry.get(hid)
    if actor is None or actor.record.county != device.user.county:
        raise error(404, "not-found", "no such household")
    return Household(actor.doc, hid)


async def list_requests(request: web.Request) -> web.Response:
    """The county's change requests with ``status`` (default pending), read from the
    projection (``proj.change_requests``, in a session scoped to the county): a county's
    ~48,000 households are never loaded for it. A request synced a moment ago appears
    within the projection lag (docs/performance.md)."""
    from sync_server.app import ENGINE

    device, _ = await _supervisor(request)
    wanted = request.query.get("status", "pending")
    if wanted not in REQUEST_STATUSES:
        raise error(400, "status-enum", f"status must be one of {', '.join(REQUEST_STATUSES)}")
    r = proj_change_requests
    scope = Scope("county", county=device.user.county)
    async with reading(request.app[ENGINE], scope) as conn:
        rows = (await conn.execute(
            sa.select(r.c.household_id, r.c.request_id, r.c.kind, r.c.requested_by,
                      r.c.requested_at, r.c.status)
            .where(r.c.county == device.user.county, r.c.status == wanted)
            .order_by(r.c.household_id, r.c.requested_at, r.c.request_id))).all()
    out = [{"household_id": row.household_id, "request_id": row.request_id, "kind": row.kind,
            "requested_by": row.requested_by,
            "requested_at": utc_instant(row.requested_at) if row.requested_at else None,
            "status": row.status} for row in rows]
    return web.json_response({"requests": out, "count": len(out)})


async def decide(request: web.Request) -> web.Response:
    from sync_server.app import SYNCHRONIZER

    device, body = await _supervisor(request)
    household = await _household_in_county(request, device)
    rid = request.match_info["request_id"]
    try:
        note = json.loads(body or b"{}").get("note")
        if note is not None and not isinstance(note, str):
            raise ValueError("note")
    except (ValueError, AttributeError) as exc:
        raise error(400, "malformed-message", "expected JSON {\"note\": string}") from exc
    approve = request.match_info["decision"] == "approve"
    user = device.user.id

    def apply(h: Household) -> bool:
        if approve:
            return h.apply_request(rid, user, as_server=True, note=note)
        return h.reject_request(rid, user, note, as_server=True)

    try:
        changed = await request.app[SYNCHRONIZER].server_change(
            household.household_id, apply, author=Author(device.id, user))
    except UnknownEntityError as err:
        if err.kind == "change request":
            raise error(404, "not-found", "no such change request") from err
        # The request names something removed since it was filed (e.g. a member).
        raise error(409, "missing", f"cannot decide: the request refers to {err.kind} "
                                    f"{err.entity_id}, which is no longer in the household") from err
    except InvalidValueError as err:
        raise error(409, str(err.rule), f"cannot decide: {'/'.join(map(str, err.path))} "
                                         f"({err.rule})") from err
    return web.json_response({"household_id": household.household_id, "request_id": rid,
                              "decision": "approved" if approve else "rejected",
                              "changed": changed})


async def openapi(_: web.Request) -> web.Response:
    return web.json_response(OPENAPI)


def add_routes(app: web.Application, nonces: NonceStore) -> None:
    app[NONCES] = nonces
    app.router.add_get("/v1/requests", list_requests)
    app.router.add_post(r"/v1/households/{household_id}/requests/{request_id}/{decision:approve|reject}",
                        decide)
    app.router.add_get("/v1/openapi.json", openapi)


_ERR = {"description": "refused", "content": {"application/json": {"schema": {
    "$ref": "#/components/schemas/Error"}}}}
_SIGNED = [{"device": []}]
OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "Vatra HTTP API", "version": "1"},
    "components": {
        "securitySchemes": {"device": {
            "type": "apiKey", "in": "header", "name": "Authorization",
            "description": "Vatra-Device id=<device>, ts=<unix seconds>, nonce=<base64>, "
                           "sig=<base64 Ed25519 signature>; see sync_server/http_auth.py"}},
        "schemas": {
            "Error": {"type": "object", "required": ["code", "message"], "properties": {
                "code": {"type": "string"}, "message": {"type": "string"}}},
            "Request": {"type": "object", "properties": {
                "household_id": {"type": "string"}, "request_id": {"type": "string"},
                "kind": {"type": "string"}, "requested_by": {"type": "string"},
                "requested_at": {"type": "string"}, "status": {"type": "string"}}},
        },
    },
    "paths": {
        "/v1/enroll": {"post": {
            "summary": "enroll a device with a one-time code (sync_server/enrollment.py)",
            "responses": {"201": {"description": "enrolled"}, "400": _ERR, "403": _ERR,
                          "429": _ERR}}},
        "/v1/requests": {"get": {
            "summary": "change requests of the supervisor's county (no household content)",
            "security": _SIGNED,
            "parameters": [{"name": "status", "in": "query", "schema": {
                "type": "string", "enum": ["pending", "approved", "rejected"]}}],
            "responses": {"200": {"description": "requests", "content": {"application/json": {
                "schema": {"type": "object", "properties": {
                    "count": {"type": "integer"},
                    "requests": {"type": "array", "items": {
                        "$ref": "#/components/schemas/Request"}}}}}}},
                "401": _ERR, "403": _ERR}}},
        "/v1/households/{household_id}/requests/{request_id}/{decision}": {"post": {
            "summary": "approve (applies the change as the server's own) or reject a request",
            "security": _SIGNED,
            "parameters": [
                {"name": "household_id", "in": "path", "required": True,
                 "schema": {"type": "string"}},
                {"name": "request_id", "in": "path", "required": True,
                 "schema": {"type": "string"}},
                {"name": "decision", "in": "path", "required": True,
                 "schema": {"type": "string", "enum": ["approve", "reject"]}}],
            "requestBody": {"content": {"application/json": {"schema": {
                "type": "object", "properties": {"note": {"type": "string"}}}}}},
            "responses": {"200": {"description": "decided (changed=false: already so)"},
                          "400": _ERR, "401": _ERR, "403": _ERR, "404": _ERR, "409": _ERR}}},
        "/healthz": {"get": {"responses": {"200": {"description": "process alive"}}}},
        "/readyz": {"get": {"responses": {"200": {"description": "database reachable"},
                                          "503": {"description": "database unreachable"}}}},
    },
}
