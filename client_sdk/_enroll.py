"""Enrollment: a replica becomes a device of one user, with keys the server knows.

The device makes its Ed25519 (identity) and X25519 (key exchange) key pairs
with PyNaCl, posts the public halves and its Automerge actor id with the
one-time code, and pins the server identity key it gets back. Every later
session handshake proves both identities (see ``sync_server/protocol/session.py``).
"""

from __future__ import annotations

import base64

import aiohttp
from nacl.public import PrivateKey
from nacl.signing import SigningKey, VerifyKey

from ._credentials import Credentials
from ._errors import ServerRejected
from ._replica import Replica


async def enroll(replica: Replica, server_http_url: str, code: str) -> Credentials:
    """Enroll ``replica`` with the server at ``server_http_url`` using a one-time ``code``."""
    if replica.credentials is not None:
        raise ServerRejected("already-enrolled", "this replica is already enrolled")
    signing, exchange = SigningKey.generate(), PrivateKey.generate()
    body = {"code": code,
            "signing_key": base64.b64encode(bytes(signing.verify_key)).decode(),
            "exchange_key": base64.b64encode(bytes(exchange.public_key)).decode(),
            "actor_ids": [replica.actor_id.hex()]}
    url = server_http_url.rstrip("/") + "/v1/enroll"
    async with aiohttp.ClientSession() as session, session.post(url, json=body) as resp:
        answer = await resp.json(content_type=None)
    if resp.status != 201:
        raise ServerRejected(str(answer.get("code", resp.status)), str(answer.get("message", "")))
    creds = Credentials(answer["device_id"], answer["user_id"], answer["role"], signing,
                        exchange, VerifyKey(base64.b64decode(answer["server_signing_key"])))
    replica.store_credentials(creds)
    return creds
