"""Encryption at rest: master keys, per-household data keys, sealed household blobs.

Every household has a random 32-byte **data key**. Household content stored by
the server (change bodies, snapshots, quarantined messages, …) is sealed with
it; the data key itself is stored only **wrapped** by a **master key**, in
``household_keys``. Destroying a household's wrapped key makes everything
sealed with it unreadable (crypto-shredding).

Both layers are XChaCha20-Poly1305 (IETF AEAD, libsodium via PyNaCl):

- wrapped data key = nonce(24) ‖ AEAD(master key, data key,
  ad = ``vatra/data-key/v1`` ‖ 0 ‖ household id ‖ 0 ‖ master version)
- sealed blob      = nonce(24) ‖ AEAD(data key, plaintext,
  ad = ``vatra/blob/v1`` ‖ 0 ‖ household id ‖ 0 ‖ purpose)

The associated data binds a wrapped key to its household and master version,
and a blob to its household and its purpose (``"change"``, ``"snapshot"``,
``"quarantine"``, …): a blob copied to another household or another column
fails to open.

Master keys carry a version. The highest configured version wraps new data
keys; older versions stay usable for unwrapping while a rotation is under way
(``vatra keys rotate-master``, docs/keys.md). Sources, see :func:`load_keyring`:

- ``VATRA_MASTER_KEY``: one key, ``<version>:<base64>`` or bare base64 (= version 1);
- ``VATRA_MASTER_KEY_FILE``: a key file (format below);
- neither, on the embedded default (no ``DATABASE_URL``): ``<data dir>/master.key``,
  generated (mode 0600) on first run and reused afterwards;
- neither, with ``DATABASE_URL``: refused (:class:`MasterKeyError`). Vatra never
  stores household content unencrypted.

Key file format: one key per line, ``<version>:<base64 of 32 bytes>``; blank
lines and lines starting with ``#`` are ignored; a line of bare base64 is
version 1.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import nacl.exceptions
import nacl.utils
from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
)

from sync_server.protocol.errors import ErrorCode, VatraError


class KeySources(Protocol):
    """Where the master keys come from (``sync_server.config.Settings`` is one)."""

    @property
    def master_key(self) -> str | None: ...
    @property
    def master_key_file(self) -> str | None: ...
    @property
    def database_url(self) -> str | None: ...
    @property
    def data_dir(self) -> Path: ...

KEY_BYTES = 32
NONCE_BYTES = 24
TAG_BYTES = 16
#: A sealed blob is this many bytes longer than its plaintext (nonce + tag).
SEAL_OVERHEAD = NONCE_BYTES + TAG_BYTES

#: Purposes of sealed blobs (the label is bound into the associated data).
CHANGE = "change"
SNAPSHOT = "snapshot"
QUARANTINE = "quarantine"

EMBEDDED_KEY_FILE = "master.key"

_WRAP_AD = b"vatra/data-key/v1\x00"
_BLOB_AD = b"vatra/blob/v1\x00"


class KeyRingError(VatraError):
    """Root of the key errors. Messages never contain key material or content."""

    code = ErrorCode.MASTER_KEY


class MasterKeyError(KeyRingError):
    """The master key is missing, malformed, of an unknown version, or does not match."""


class MissingDataKey(KeyRingError):
    """A registered household has no data key row (it is written with the household, in
    one transaction: its absence means the database was changed by hand)."""

    def __init__(self, household_id: str) -> None:
        super().__init__(f"household {household_id} has no data key", document_id=household_id)


class DecryptionError(KeyRingError):
    """A wrapped key or a sealed blob did not authenticate (wrong key, household, purpose, or tampered)."""


@dataclass(frozen=True, slots=True)
class WrappedKey:
    """A data key as stored: wrapped bytes and the master key version that wrapped them."""

    wrapped: bytes
    master_version: int


class DataKey:
    """One household's unwrapped data key; seals and opens that household's blobs only."""

    __slots__ = ("_key", "household_id")

    def __init__(self, household_id: str, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError("a data key is 32 bytes")
        self.household_id = household_id
        self._key = key

    def __repr__(self) -> str:  # never the key itself
        return f"DataKey({self.household_id!r})"

    def _ad(self, purpose: str) -> bytes:
        if not purpose or "\x00" in purpose:
            raise ValueError("purpose must be a non-empty label without NUL")
        return _BLOB_AD + self.household_id.encode() + b"\x00" + purpose.encode()

    def seal(self, purpose: str, plaintext: bytes) -> bytes:
        """``nonce ‖ ciphertext`` of ``plaintext``, bound to this household and ``purpose``."""
        nonce = nacl.utils.random(NONCE_BYTES)
        return nonce + crypto_aead_xchacha20poly1305_ietf_encrypt(
            plaintext, self._ad(purpose), nonce, self._key)

    def open(self, purpose: str, blob: bytes) -> bytes:
        """The plaintext of ``blob``; :class:`DecryptionError` if it does not authenticate."""
        blob = bytes(blob)
        if len(blob) < SEAL_OVERHEAD:
            raise DecryptionError("sealed blob too short")
        try:
            return crypto_aead_xchacha20poly1305_ietf_decrypt(
                blob[NONCE_BYTES:], self._ad(purpose), blob[:NONCE_BYTES], self._key)
        except nacl.exceptions.CryptoError:
            raise DecryptionError(f"a {purpose} blob of household {self.household_id} "
                                  f"does not open with its data key") from None


class KeyRing:
    """Master keys by version, and a bounded in-memory cache of unwrapped data keys.

    The ring never touches the database: the store reads and writes wrapped keys
    (``household_keys``) and asks the ring to wrap, unwrap and cache them.
    """

    def __init__(self, master_keys: Mapping[int, bytes], *, cache_size: int = 4096,
                 source: Path | None = None) -> None:
        if not master_keys:
            raise MasterKeyError("no master key configured")
        for version, key in master_keys.items():
            if not isinstance(version, int) or version < 1:
                raise MasterKeyError("master key versions are integers >= 1")
            if len(key) != KEY_BYTES:
                raise MasterKeyError(f"master key version {version} is not 32 bytes")
        self._masters = dict(master_keys)
        self.current_version = max(self._masters)
        self.cache_size = cache_size
        #: The key file this ring was read from when it is the embedded default's.
        self.source = source
        self._cache: OrderedDict[str, DataKey] = OrderedDict()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"KeyRing(versions={self.versions}, current={self.current_version})"

    @property
    def versions(self) -> tuple[int, ...]:
        return tuple(sorted(self._masters))

    def with_keys(self, master_keys: Mapping[int, bytes]) -> KeyRing:
        """A new ring holding this ring's master keys and ``master_keys`` (no cache)."""
        merged = _merge([self._masters, master_keys])
        return KeyRing(merged, cache_size=self.cache_size, source=self.source)

    # -- wrapping -------------------------------------------------------------------------

    @staticmethod
    def _wrap_ad(household_id: str, version: int) -> bytes:
        return _WRAP_AD + household_id.encode() + b"\x00" + str(version).encode()

    def wrap(self, household_id: str, data_key: bytes, version: int | None = None) -> WrappedKey:
        """Wrap ``data_key`` with master key ``version`` (default: the current one)."""
        version = self.current_version if version is None else version
        master = self._master(version)
        nonce = nacl.utils.random(NONCE_BYTES)
        ct = crypto_aead_xchacha20poly1305_ietf_encrypt(
            data_key, self._wrap_ad(household_id, version), nonce, master)
        return WrappedKey(nonce + ct, version)

    def unwrap(self, household_id: str, wrapped: WrappedKey) -> DataKey:
        """The data key inside ``wrapped`` (cached); :class:`MasterKeyError` if it does not open."""
        cached = self.cached(household_id)
        if cached is not None:
            return cached
        return self.remember(DataKey(household_id, self._unwrap(household_id, wrapped)))

    def rewrap(self, household_id: str, wrapped: WrappedKey,
               version: int | None = None) -> WrappedKey:
        """``wrapped`` re-wrapped under master key ``version`` (default: current)."""
        return self.wrap(household_id, self._unwrap(household_id, wrapped), version)

    def _unwrap(self, household_id: str, wrapped: WrappedKey) -> bytes:
        master = self._master(wrapped.master_version)
        blob = bytes(wrapped.wrapped)
        try:
            return crypto_aead_xchacha20poly1305_ietf_decrypt(
                blob[NONCE_BYTES:], self._wrap_ad(household_id, wrapped.master_version),
                blob[:NONCE_BYTES], master)
        except (nacl.exceptions.CryptoError, ValueError, TypeError):
            raise MasterKeyError(
                f"master key version {wrapped.master_version} does not open the data key of "
                f"household {household_id}: wrong master key?") from None

    def new_data_key(self, household_id: str) -> tuple[DataKey, WrappedKey]:
        """A fresh random data key for ``household_id`` and its wrapped form (not cached yet)."""
        key = nacl.utils.random(KEY_BYTES)
        return DataKey(household_id, key), self.wrap(household_id, key)

    def master_key(self, version: int) -> bytes:
        """Master key ``version`` (to write a key file); :class:`MasterKeyError` if absent."""
        return self._master(version)

    def _master(self, version: int) -> bytes:
        try:
            return self._masters[version]
        except KeyError:
            raise MasterKeyError(
                f"master key version {version} is needed but not configured "
                f"(configured: {', '.join(map(str, self.versions))})") from None

    # -- cache ----------------------------------------------------------------------------

    def cached(self, household_id: str) -> DataKey | None:
        with self._lock:
            key = self._cache.get(household_id)
            if key is not None:
                self._cache.move_to_end(household_id)
            return key

    def remember(self, key: DataKey) -> DataKey:
        with self._lock:
            self._cache[key.household_id] = key
            self._cache.move_to_end(key.household_id)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return key

    def forget(self, household_id: str) -> None:
        with self._lock:
            self._cache.pop(household_id, None)


# -- loading master keys ---------------------------------------------------------------------


def generate_master_key() -> bytes:
    return nacl.utils.random(KEY_BYTES)


def format_key_line(version: int, key: bytes) -> str:
    return f"{version}:{base64.b64encode(key).decode()}"


def parse_key(text: str, where: str) -> tuple[int, bytes]:
    """``<version>:<base64>`` or bare base64 (version 1)."""
    text = text.strip()
    version = 1
    if ":" in text:
        head, text = text.split(":", 1)
        try:
            version = int(head)
        except ValueError:
            raise MasterKeyError(f"{where}: key version must be an integer") from None
        if version < 1:
            raise MasterKeyError(f"{where}: key version must be >= 1")
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise MasterKeyError(f"{where}: not base64") from None
    if len(key) != KEY_BYTES:
        raise MasterKeyError(f"{where}: a master key is base64 of exactly 32 bytes, "
                             f"got {len(key)} bytes")
    return version, key


def read_key_file(path: Path) -> dict[int, bytes]:
    """Master keys by version from a key file (format in the module docstring)."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise MasterKeyError(f"cannot read master key file {path}: {exc.strerror}") from None
    keys: list[Mapping[int, bytes]] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        version, key = parse_key(line, f"{path}, line {n}")
        keys.append({version: key})
    if not keys:
        raise MasterKeyError(f"master key file {path} holds no key")
    return _merge(keys, str(path))


def write_key_file(path: Path, keys: Mapping[int, bytes], *, exclusive: bool = False) -> None:
    """Write ``keys`` to ``path``, mode 0600, atomically (never a half-written file).

    ``exclusive``: only if ``path`` does not exist yet (else ``FileExistsError``)."""
    path = Path(path)
    body = ("# Vatra master keys: <version>:<base64 of 32 bytes>; the highest version is current\n"
            + "".join(format_key_line(v, keys[v]) + "\n" for v in sorted(keys)))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        if exclusive:
            os.link(tmp, path)  # fails if another process created it first
        else:
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _merge(sources: Iterable[Mapping[int, bytes]], where: str = "master keys") -> dict[int, bytes]:
    merged: dict[int, bytes] = {}
    for keys in sources:
        for version, key in keys.items():
            if merged.get(version, key) != key:
                raise MasterKeyError(f"{where}: two different keys for version {version}")
            merged[version] = key
    return merged


def load_keyring(settings: KeySources, *, cache_size: int = 4096) -> KeyRing:
    """The master keys the settings point at (see the module docstring for the rules)."""
    sources: list[Mapping[int, bytes]] = []
    if settings.master_key:
        version, key = parse_key(settings.master_key, "VATRA_MASTER_KEY")
        sources.append({version: key})
    if settings.master_key_file:
        sources.append(read_key_file(Path(settings.master_key_file)))
    if sources:
        return KeyRing(_merge(sources), cache_size=cache_size)
    if settings.database_url:
        raise MasterKeyError(
            "DATABASE_URL is set but no master key is: set VATRA_MASTER_KEY (base64 of 32 bytes) "
            "or VATRA_MASTER_KEY_FILE (docs/keys.md). Vatra never stores household data "
            "unencrypted.")
    path = Path(settings.data_dir) / EMBEDDED_KEY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):  # another process was first: use its key
            write_key_file(path, {1: generate_master_key()}, exclusive=True)
    return KeyRing(read_key_file(path), cache_size=cache_size, source=path)
