"""The supervisors' HTTP API: pending change requests of their county, approve, reject.

Every call is signed by a supervisor's enrolled device (:mod:`sync_server.api.auth`) and
scoped to the supervisor's county; a household outside it answers ``404`` exactly like
one that does not exist. Approving applies the structural change as the server's own
change (validated, persisted, audited under the supervisor's device, fanned out to every
team tablet); approving twice applies once. Rejecting changes nothing but the request.

This API is outside the end-to-end session, so it carries no household content: the
list gives ids, kinds, who asked and when — the supervisor's tablet reads the request
itself through sync. The list is read from the projection (``proj.change_requests``), so
it follows syncs within the projection lag. Keep decision notes free of personal data.
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from conflict import Household, InvalidValueError, UnknownEntityError, is_household_id
from conflict.household import utc_instant
from sync_server.api.auth import SignedRequests
from sync_server.api.errors import http_error
from sync_server.auth.identity import Device
from sync_server.projection.readmodel import Scope, reading
from sync_server.protocol.errors import ErrorCode, Refused, StorageError
from sync_server.store.contract import Author, HouseholdErased, UnknownHousehold
from sync_server.store.tables import proj_change_requests
from sync_server.sync.pipeline import Synchronizer

REQUEST_STATUSES = ("pending", "approved", "rejected")


def routes(pipeline: Synchronizer, engine: AsyncEngine,
           signed: SignedRequests) -> list[web.RouteDef]:

    async def supervisor(request: web.Request) -> tuple[Device, bytes]:
        device, body = await signed.authenticate(request)
        if device.user.role != "supervisor":
            raise http_error(403, ErrorCode.FORBIDDEN, "only supervisors decide change requests")
        return device, body

    async def household_in_county(request: web.Request, device: Device) -> Household:
        hid = request.match_info["household_id"]
        if not is_household_id(hid):  # e.g. a NUL, which no PostgreSQL text can hold
            raise http_error(404, ErrorCode.NOT_FOUND, "no such household")
        actor = await pipeline.registry.get(hid)
        if actor is None or actor.record.county != device.user.county:
            raise http_error(404, ErrorCode.NOT_FOUND, "no such household")
        return Household(actor.doc, hid)

    async def list_requests(request: web.Request) -> web.Response:
        """The county's change requests with ``status`` (default pending), read from the
        projection (``proj.change_requests``, in a session scoped to the county): a
        county's ~48,000 households are never loaded for it. A request synced a moment
        ago appears within the projection lag (docs/performance.md)."""
        device, _ = await supervisor(request)
        wanted = request.query.get("status", "pending")
        if wanted not in REQUEST_STATUSES:
            raise http_error(400, ErrorCode.STATUS_ENUM,
                             f"status must be one of {', '.join(REQUEST_STATUSES)}")
        r = proj_change_requests
        scope = Scope("county", county=device.user.county)
        async with reading(engine, scope) as conn:
            rows = (await conn.execute(
                sa.select(r.c.household_id, r.c.request_id, r.c.kind, r.c.requested_by,
                          r.c.requested_at, r.c.status)
                .where(r.c.county == device.user.county, r.c.status == wanted)
                .order_by(r.c.household_id, r.c.requested_at, r.c.request_id))).all()
        out = [{"household_id": row.household_id, "request_id": row.request_id,
                "kind": row.kind, "requested_by": row.requested_by,
                "requested_at": utc_instant(row.requested_at) if row.requested_at else None,
                "status": row.status} for row in rows]
        return web.json_response({"requests": out, "count": len(out)})

    async def decide(request: web.Request) -> web.Response:
        device, body = await supervisor(request)
        household = await household_in_county(request, device)
        rid = request.match_info["request_id"]
        try:
            note = json.loads(body or b"{}").get("note")
            if note is not None and not isinstance(note, str):
                raise ValueError("note")
        except (ValueError, AttributeError) as exc:
            raise http_error(400, ErrorCode.MALFORMED_MESSAGE,
                             "expected JSON {\"note\": string}") from exc
        approve = request.match_info["decision"] == "approve"
        user = device.user.id

        def apply(h: Household) -> bool:
            if approve:
                return h.apply_request(rid, as_server=True, note=note)
            return h.reject_request(rid, note, as_server=True)

        try:
            changed = await pipeline.server_change(household.household_id, apply,
                                                   author=Author(device.id, user))
        except UnknownEntityError as err:
            if err.kind == "change request":
                raise http_error(404, ErrorCode.NOT_FOUND, "no such change request") from err
            # The request names something removed since it was filed (e.g. a member).
            raise http_error(409, ErrorCode.MISSING,
                             f"cannot decide: the request refers to {err.kind} "
                             f"{err.entity_id}, which is no longer in the household") from err
        except InvalidValueError as err:
            raise http_error(409, _rule(err.rule), f"cannot decide: "
                             f"{'/'.join(map(str, err.path))} ({err.rule})") from err
        except (UnknownHousehold, HouseholdErased) as err:  # erased since it was listed
            raise http_error(404, ErrorCode.NOT_FOUND, "no such household") from err
        except Refused as err:  # the change breaks a rule now (e.g. a team member who
            # is no longer a worker of the household's locality): nothing was stored
            raise http_error(409, err.code, f"cannot decide: {err}") from err
        except StorageError as err:  # nothing was stored: the same decision may be retried
            raise http_error(503, err.code, "the decision could not be stored; retry later",
                             headers={"Retry-After": "5"}) from err
        return web.json_response({"household_id": household.household_id, "request_id": rid,
                                  "decision": "approved" if approve else "rejected",
                                  "changed": changed})

    return [web.get("/v1/requests", list_requests),
            web.post(r"/v1/households/{household_id}/requests/{request_id}"
                     r"/{decision:approve|reject}", decide)]


def _rule(rule: str) -> ErrorCode:
    """The household model's rule as a stable code (a rule it may grow: schema-violation)."""
    try:
        return ErrorCode(rule)
    except ValueError:
        return ErrorCode.SCHEMA_VIOLATION


_ERR = {"description": "refused", "content": {"application/json": {"schema": {
    "$ref": "#/components/schemas/Error"}}}}
_SIGNED: list[dict[str, list[str]]] = [{"device": []}]

SCHEMAS: dict[str, Any] = {
    "Request": {"type": "object", "properties": {
        "household_id": {"type": "string"}, "request_id": {"type": "string"},
        "kind": {"type": "string"}, "requested_by": {"type": "string"},
        "requested_at": {"type": "string"}, "status": {"type": "string"}}},
}

PATHS: dict[str, Any] = {
    "/v1/requests": {"get": {
        "summary": "change requests of the supervisor's county (no household content)",
        "security": _SIGNED,
        "parameters": [{"name": "status", "in": "query", "schema": {
            "type": "string", "enum": list(REQUEST_STATUSES)}}],
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
}
