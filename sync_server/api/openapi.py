"""The one OpenAPI document of Vatra's HTTP faces, assembled once from each face's part.

Served at ``GET /v1/openapi.json``; ``tests/test_webapi_schema.py`` checks the read API
against it with schemathesis.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from sync_server.api import approvals, directory, enrollment, ops, read
from sync_server.api.errors import ERROR_SCHEMA

DOCUMENT: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "Vatra HTTP API", "version": "1"},
    "components": {
        "securitySchemes": {"device": {
            "type": "apiKey", "in": "header", "name": "Authorization",
            "description": "Vatra-Device id=<device>, ts=<unix seconds>, nonce=<base64>, "
                           "sig=<base64 Ed25519 signature>; see "
                           "sync_server/protocol/http_auth.py"}},
        "schemas": {"Error": ERROR_SCHEMA, **enrollment.SCHEMAS, **approvals.SCHEMAS,
                    **read.SCHEMAS},
    },
    "paths": {**enrollment.PATHS, **approvals.PATHS, **read.PATHS, **directory.PATHS,
              **ops.PATHS},
}


def routes() -> list[web.RouteDef]:
    async def openapi(_: web.Request) -> web.Response:
        return web.json_response(DOCUMENT)

    return [web.get("/v1/openapi.json", openapi)]
