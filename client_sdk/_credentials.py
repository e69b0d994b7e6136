"""A device's enrollment: who it is, its keys, and the server identity it pinned."""

from __future__ import annotations

from dataclasses import dataclass

from nacl.public import PrivateKey
from nacl.signing import SigningKey, VerifyKey


@dataclass(frozen=True, slots=True)
class Credentials:
    device_id: str
    user_id: str
    role: str
    signing_key: SigningKey
    exchange_key: PrivateKey
    server_key: VerifyKey
