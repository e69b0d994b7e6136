"""The county directories for tablets: ``GET /v1/directory``.

A device-signed GET (:mod:`sync_server.api.auth`) answers the directories of the
counties the device's user works in: a worker's localities' counties and their
caseload's, a supervisor's county, every county for a national user (admins and ops:
``403``). The answer carries
an ``ETag`` made of the directories' versions; a tablet that sends it back in
``If-None-Match`` gets ``304`` and no body when nothing changed, so checking costs one
short round trip. Tablets keep the directory for offline work
(``client_sdk.fetch_directory``) and never write it: only ``vatra directory import``
does (decision 89). A directory is public information (services and their contacts),
not household content.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import sqlalchemy as sa
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from sync_server.api.auth import SignedRequests
from sync_server.api.errors import http_error
from sync_server.auth.identity import User
from sync_server.protocol.errors import ErrorCode
from sync_server.store.directory import directory_versions, read_directories
from sync_server.store.tables import household_team, households


async def counties_of(conn: AsyncConnection, user: User) -> set[str] | None:
    """The counties whose directories a user reads (None: every county): a worker's
    localities' and those of the households on whose team they are (a household stays on
    a worker's caseload after the worker moves to other localities, or it moves)."""
    if user.role == "national":
        return None
    if user.role == "supervisor" and user.county is not None:
        return {user.county}
    if user.role == "worker":
        caseload = (await conn.execute(
            sa.select(households.c.county).distinct()
            .select_from(household_team.join(households))
            .where(household_team.c.user_id == user.id))).scalars()
        return {c for _, c in user.localities} | set(caseload)
    raise http_error(403, ErrorCode.FORBIDDEN, f"the {user.role} role has no directory")


def _etag(versions: list[tuple[str, str]]) -> str:
    """One tag for the directories a user reads (a proxy may mark it weak: ``W/``)."""
    joined = ";".join(f"{county}:{version}" for county, version in versions)
    return '"' + hashlib.blake2b(joined.encode(), digest_size=12).hexdigest() + '"'


def routes(engine: AsyncEngine, signed: SignedRequests) -> list[web.RouteDef]:
    async def directory(request: web.Request) -> web.Response:
        device, _ = await signed.authenticate(request)
        async with engine.connect() as conn, conn.begin():
            # (one snapshot: the ETag and the providers of the same imports)
            await conn.execute(sa.text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
            counties = await counties_of(conn, device.user)
            tag = _etag(await directory_versions(conn, counties))
            headers = {"ETag": tag, "Cache-Control": "no-cache"}
            asked = {t.strip().removeprefix("W/")
                     for t in request.headers.get("If-None-Match", "").split(",")}
            if tag in asked or "*" in asked:  # the providers are not even read
                return web.Response(status=304, headers=headers)
            found = await read_directories(conn, counties)
        body = {"directories": [{**d, "imported_at": d["imported_at"].isoformat()} for d in found]}
        return web.json_response(body, headers=headers,
                                 dumps=lambda v: json.dumps(v, ensure_ascii=False))

    return [web.get("/v1/directory", directory)]


_ERR = {"description": "refused", "content": {"application/json": {"schema": {
    "$ref": "#/components/schemas/Error"}}}}

PATHS: dict[str, Any] = {
    "/v1/directory": {"get": {
        "summary": "the county directories of specialised services the device's user works "
                   "with (read-only; 304 when If-None-Match has the ETag)",
        "security": [{"device": []}],
        "parameters": [{"name": "If-None-Match", "in": "header", "required": False,
                        "schema": {"type": "string"}}],
        "responses": {
            "200": {"description": "the directories", "content": {"application/json": {
                "schema": {"type": "object", "properties": {"directories": {
                    "type": "array", "items": {"type": "object", "properties": {
                        "county": {"type": "string"}, "version": {"type": "string"},
                        "imported_at": {"type": "string", "format": "date-time"},
                        "providers": {"type": "array", "items": {"type": "object"}}}}}}}}}},
            "304": {"description": "unchanged since the ETag given"},
            "401": _ERR, "403": _ERR}}},
}
