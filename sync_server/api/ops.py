"""Operations endpoints: is the process up, can it reach its database, its metrics.

``GET /healthz`` answers while the process runs; ``GET /readyz`` answers 200 once the
database answers a query, 503 otherwise; ``GET /metrics`` is Prometheus' text format
(no personal data in any name or label).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.ext.asyncio import AsyncEngine


def routes(engine: AsyncEngine) -> list[web.RouteDef]:

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        try:
            async with engine.connect() as conn:
                await conn.execute(sa.text("SELECT 1"))
        except Exception:
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
