"""The one way every Vatra HTTP API refuses: a status and ``{"code", "message"}``.

``code`` is an :class:`~sync_server.protocol.errors.ErrorCode` (stable: clients match on
it); ``message`` says what happened in words and never holds household content.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from sync_server.protocol.errors import ErrorCode

_STATUS: dict[int, type[web.HTTPException]] = {
    400: web.HTTPBadRequest, 401: web.HTTPUnauthorized, 403: web.HTTPForbidden,
    404: web.HTTPNotFound, 409: web.HTTPConflict, 429: web.HTTPTooManyRequests,
    503: web.HTTPServiceUnavailable}

#: The OpenAPI schema of a refusal.
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["code", "message"],
    "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}


def http_error(status: int, code: ErrorCode, message: str,
               headers: dict[str, str] | None = None) -> web.HTTPException:
    """The refusal to raise: ``raise http_error(404, ErrorCode.NOT_FOUND, "no such household")``."""
    return _STATUS[status](text=json.dumps({"code": str(code), "message": message}),
                           content_type="application/json", headers=headers)
