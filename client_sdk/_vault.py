"""The replica's key: derived from the user's PIN with Argon2id; seals every file.

``vault.json`` (plaintext) holds only the Argon2id salt and limits and a
sealed check value. Everything else in the replica directory — the caseload
metadata with the device's private keys, and every household — is sealed
with XSalsa20-Poly1305 (PyNaCl ``SecretBox``) under the derived key. A wrong
PIN fails on the check value, before any other file is touched.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nacl.exceptions
import nacl.secret
from nacl.pwhash import argon2id

from ._errors import ReplicaError

CHECK = b"vatra-replica-v1"


class WrongPin(ReplicaError):
    """The PIN does not open this replica; nothing was read."""


class Vault:
    def __init__(self, directory: Path, pin: str, *,
                 opslimit: int = argon2id.OPSLIMIT_INTERACTIVE,
                 memlimit: int = argon2id.MEMLIMIT_INTERACTIVE) -> None:
        if not isinstance(pin, str) or len(pin) < 4:
            raise ReplicaError("a PIN has at least 4 characters")
        path = directory / "vault.json"
        if path.exists():
            try:
                meta = json.loads(path.read_text())
                salt = bytes.fromhex(meta["salt"])
                opslimit, memlimit = int(meta["opslimit"]), int(meta["memlimit"])
                check = bytes.fromhex(meta["check"])
            except (ValueError, KeyError, TypeError) as exc:
                raise ReplicaError("vault.json is unreadable") from exc
            self._box = nacl.secret.SecretBox(self._derive(pin, salt, opslimit, memlimit))
            try:
                if self._box.decrypt(check) != CHECK:
                    raise WrongPin("wrong PIN")
            except nacl.exceptions.CryptoError as exc:
                raise WrongPin("wrong PIN: nothing was read") from exc
            return
        salt = os.urandom(argon2id.SALTBYTES)
        self._box = nacl.secret.SecretBox(self._derive(pin, salt, opslimit, memlimit))
        directory.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"version": 1, "kdf": "argon2id", "salt": salt.hex(),
                                    "opslimit": opslimit, "memlimit": memlimit,
                                    "check": self._box.encrypt(CHECK).hex()}))

    @staticmethod
    def _derive(pin: str, salt: bytes, opslimit: int, memlimit: int) -> bytes:
        return argon2id.kdf(nacl.secret.SecretBox.KEY_SIZE, pin.encode(), salt,
                            opslimit=opslimit, memlimit=memlimit)

    def seal(self, data: bytes) -> bytes:
        return bytes(self._box.encrypt(data))

    def open(self, sealed: bytes, what: str) -> bytes:
        try:
            return self._box.decrypt(sealed)
        except nacl.exceptions.CryptoError as exc:
            raise ReplicaError(f"{what} is damaged or was not written by this replica") from exc
