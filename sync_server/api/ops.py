"""Operations endpoints: is the process up, can it reach its database, its metrics.

``GET /healthz`` answers while the process runs; ``GET /readyz`` answers 200 once the
database answers a query, 503 otherwise, within :data:`READY_TIMEOUT` whatever the
database does (down, or frozen); ``GET /metrics`` is Prometheus' text format (no personal
data in any name or label).
"""

from __future__ import annotations

import asyncio
from typing import Any

import sqlalchemy as sa
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.ext.asyncio import AsyncEngine

#: Seconds ``/readyz`` waits for the database before it answers 503.
READY_TIMEOUT = 0.8


def routes(engine: AsyncEngine) -> list[web.RouteDef]:

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def ping() -> None:
        async with engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))

    async def readyz(_: web.Request) -> web.Response:
        try:
            await asyncio.wait_for(ping(), READY_TIMEOUT)
        except Exception:  # down, refusing, or too slow to count as ready
            return web.json_response({"status": "database unavailable"}, status=503)
        return web.json_response({"status": "ready"})

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    return [web.get("/healthz", healthz), web.get("/readyz", readyz),
            web.get("/metrics", metrics)]


PATHS: dict[str, Any] = {
    "/healthz": {"get": {"responses": {"200": {"description": "process alive"}}}},
    "/readyz": {"get": {"responses": {"200": {"description": "database reachable"},
                                      "503": {"description": "database unreachable"}}}},
}
