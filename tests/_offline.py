"""A replica as a tablet holds it after enrolling, for tests of offline behaviour that
never reach a server: its credentials are made here (real keys, a server key nobody
holds) instead of by the enrollment exchange, so it edits as ``user`` like a tablet."""

from __future__ import annotations

from pathlib import Path

from nacl.public import PrivateKey
from nacl.signing import SigningKey

from client_sdk import Credentials, Replica


def offline_replica(path: Path, user: str = "ana", *, role: str = "worker",
                    pin: str = "1234") -> Replica:
    replica = Replica(path, pin=pin)
    if replica.credentials is None:
        replica.store_credentials(Credentials(
            f"dev-{user}", user, role, SigningKey.generate(), PrivateKey.generate(),
            SigningKey.generate().verify_key))
    return replica
