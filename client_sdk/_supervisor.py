"""A supervisor's tablet deciding change requests over the HTTP API (signed requests)."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from sync_server.protocol.http_auth import sign

from ._errors import NotEnrolled, ServerRejected
from ._replica import Replica


class SupervisorClient:
    """``await SupervisorClient(replica, "http://host:port").approve(hid, rid)``."""

    def __init__(self, replica: Replica, http_url: str) -> None:
        self.replica = replica
        self.http_url = http_url.rstrip("/")

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None
                    ) -> dict[str, Any]:
        creds = self.replica.credentials
        if creds is None:
            raise NotEnrolled("enroll this replica first")
        data = json.dumps(body).encode() if body is not None else b""
        headers = {"Authorization": sign(creds.device_id, creds.signing_key, method, path, data),
                   "Content-Type": "application/json"}
        async with aiohttp.ClientSession() as session, session.request(
                method, self.http_url + path, data=data, headers=headers) as resp:
            answer = await resp.json(content_type=None)
        if resp.status >= 300:
            raise ServerRejected(str(answer.get("code", resp.status)),
                                 str(answer.get("message", "")))
        result: dict[str, Any] = answer
        return result

    async def requests(self, status: str = "pending") -> list[dict[str, Any]]:
        """Change requests of this supervisor's county (ids and kinds, no content)."""
        listed: list[dict[str, Any]] = (
            await self._call("GET", f"/v1/requests?status={status}"))["requests"]
        return listed

    async def approve(self, household_id: str, request_id: str,
                      note: str | None = None) -> dict[str, Any]:
        return await self._call(
            "POST", f"/v1/households/{household_id}/requests/{request_id}/approve",
            {"note": note} if note is not None else {})

    async def reject(self, household_id: str, request_id: str,
                     note: str | None = None) -> dict[str, Any]:
        return await self._call(
            "POST", f"/v1/households/{household_id}/requests/{request_id}/reject",
            {"note": note} if note is not None else {})
