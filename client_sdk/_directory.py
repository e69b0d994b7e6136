"""Fetching the county directories of specialised services (read-only on the tablet)."""

from __future__ import annotations

import aiohttp

from sync_server.protocol.http_auth import sign

from ._errors import NotEnrolled, ServerRejected
from ._replica import Replica

PATH = "/v1/directory"


async def fetch_directory(replica: Replica, server_http_url: str) -> bool:
    """Bring the replica's copy of its counties' directories up to date (one signed GET;
    ``304`` when nothing changed since the last fetch). True if the copy changed. The
    copy stays for offline work: :meth:`Replica.directory`,
    :meth:`Replica.nearest_providers`."""
    creds = replica.credentials
    if creds is None:
        raise NotEnrolled("enroll this replica first")
    state = replica.directory_state()
    headers = {"Authorization": sign(creds.device_id, creds.signing_key, "GET", PATH)}
    if state["etag"]:
        headers["If-None-Match"] = state["etag"]
    async with aiohttp.ClientSession() as session, session.get(
            server_http_url.rstrip("/") + PATH, headers=headers) as resp:
        if resp.status == 304:
            return False
        answer = await resp.json(content_type=None)
        if resp.status != 200:
            raise ServerRejected(str(answer.get("code", resp.status)),
                                 str(answer.get("message", "")))
    replica.store_directory(resp.headers.get("ETag"), answer["directories"])
    return True
