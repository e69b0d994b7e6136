"""The device's local replica: its caseload of households, on disk.

Layout of a replica directory::

    vault.json                Argon2id salt and limits, and a check value (plaintext)
    replica.json              actor id, caseload with the server heads last seen, and
                              after enrollment the device's keys and the pinned server key
    households/<id>.automerge one Automerge save() per household
    directory.json            the county directories of services, as last fetched
                              (client_sdk.fetch_directory), with their ETag

Every write goes to a temporary file, is fsync'ed, then renamed over the old
one, so a crash leaves either the old or the new version, never half of one.
Every file but ``vault.json`` is sealed with a key derived from the user's PIN
(:mod:`client_sdk._vault`): a stolen tablet yields no household content and no
device key without the PIN.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from automerge.core import Document
from nacl.public import PrivateKey
from nacl.signing import SigningKey, VerifyKey

from conflict import Household, is_household_id
from conflict.directory import nearest

from ._credentials import Credentials
from ._errors import HouseholdNotFound, NotEnrolled, ReplicaError
from ._vault import Vault


class Replica:
    """The device's caseload on disk, sealed under a key derived from ``pin``.

    Opening an existing replica with a wrong PIN raises :class:`WrongPin` and reads
    nothing else. Offline work needs no server: only enrollment and sync do.
    """

    def __init__(self, path: str | os.PathLike[str], *, pin: str,
                 actor_id: bytes | None = None) -> None:
        self.path = Path(path)
        self._vault = Vault(self.path, pin)
        (self.path / "households").mkdir(parents=True, exist_ok=True)
        self._meta_path = self.path / "replica.json"
        self._meta = self._read_meta(actor_id)
        self._open: dict[str, Household] = {}
        self._saved_heads: dict[str, list[bytes]] = {}  # heads of what is on disk

    # -- identity ------------------------------------------------------------------------

    @property
    def actor_id(self) -> bytes:
        return bytes.fromhex(self._meta["actor_id"])

    @property
    def peer_id(self) -> str:
        return "device-" + str(self._meta["actor_id"])[:16]

    @property
    def credentials(self) -> Credentials | None:
        """The device's enrollment (keys, ids, pinned server key), or None before enrolling."""
        d = self._meta.get("device")
        if d is None:
            return None
        return Credentials(d["device_id"], d["user_id"], d["role"],
                           SigningKey(bytes.fromhex(d["signing_seed"])),
                           PrivateKey(bytes.fromhex(d["exchange_secret"])),
                           VerifyKey(bytes.fromhex(d["server_key"])))

    def _author(self) -> str | None:
        d = self._meta.get("device")
        return None if d is None else str(d["user_id"])

    def _user(self) -> str:
        user = self._author()
        if user is None:
            raise NotEnrolled("enroll this replica before editing (client_sdk.enroll): its "
                              "edits name the enrolled user")
        return user

    def store_credentials(self, creds: Credentials) -> None:
        self._meta["device"] = {
            "device_id": creds.device_id, "user_id": creds.user_id, "role": creds.role,
            "signing_seed": bytes(creds.signing_key).hex(),
            "exchange_secret": bytes(creds.exchange_key).hex(),
            "server_key": bytes(creds.server_key).hex(),
        }
        self._write_meta()
        self._open.clear()  # opened before enrolling: reopened with their author

    # -- caseload ------------------------------------------------------------------------

    def household_ids(self) -> list[str]:
        """Every household this replica holds or has asked for."""
        return sorted(self._meta["caseload"])

    def has_local_copy(self, household_id: str) -> bool:
        return household_id in self._open or self._doc_path(household_id).exists()

    def track(self, household_id: str) -> None:
        """Add a household (created elsewhere) to the caseload; the next sync downloads it."""
        if not is_household_id(household_id):
            raise ReplicaError("not a household id")
        self._meta["caseload"].setdefault(household_id, {"server_heads": []})
        self._write_meta()

    def create_household(self, **fields: Any) -> Household:
        """Register a new household offline (see :meth:`conflict.Household.create`), as
        this replica's user: every attribution it writes names the enrolled user."""
        if "author" in fields:
            raise TypeError("the author of a replica's edits is its enrolled user")
        h = Household.create(actor_id=self.actor_id, guard=True, author=self._user(), **fields)
        self._open[h.household_id] = h
        self._meta["caseload"][h.household_id] = {"server_heads": []}
        self.save(h.household_id)
        self._write_meta()
        return h

    def household(self, household_id: str) -> Household:
        """The household, loaded from disk on first use; edits go through its typed API,
        guarded by :mod:`conflict.policy` (a protected edit of an active household
        raises :class:`conflict.household.ProtectedPathError`: file a change request)."""
        h = self._open.get(household_id)
        if h is not None:
            return h
        path = self._doc_path(household_id)
        if not path.exists():
            raise HouseholdNotFound(household_id)
        try:
            doc = Document.load(self._vault.open(path.read_bytes(), "household file"))
        except Exception as exc:
            raise ReplicaError(f"household {household_id}: local copy unreadable") from exc
        doc.set_actor(self.actor_id)
        h = self._open[household_id] = Household(doc, household_id, guard=True,
                                                 author=self._author())
        self._saved_heads[household_id] = doc.get_heads()
        return h

    @contextlib.contextmanager
    def edit(self, household_id: str) -> Iterator[Household]:
        """``with replica.edit(hid) as h: h.add_member(...)`` — saved to disk on exit."""
        h = self.household(household_id)
        yield h
        self.save(household_id)

    def document(self, household_id: str) -> Document:
        """The household's document, or an empty one if it was never downloaded."""
        if self.has_local_copy(household_id):
            return self.household(household_id).doc
        doc = Document(actor_id=self.actor_id)
        return doc

    def adopt(self, household_id: str, doc: Document) -> None:
        """Keep ``doc`` (downloaded by a sync) as this replica's copy of the household."""
        doc.set_actor(self.actor_id)
        self._open[household_id] = Household(doc, household_id, guard=True,
                                             author=self._author())
        self._meta["caseload"].setdefault(household_id, {"server_heads": []})
        self.save(household_id)
        self._write_meta()

    def remove(self, household_id: str) -> None:
        """Delete the local copy of a household (no longer in this user's caseload)."""
        self._open.pop(household_id, None)
        self._saved_heads.pop(household_id, None)
        self._meta["caseload"].pop(household_id, None)
        self._doc_path(household_id).unlink(missing_ok=True)
        self._write_meta()

    def wipe(self) -> None:
        """Delete every household and the device's keys (the device was revoked)."""
        for hid in list(self._meta["caseload"]):
            self._open.pop(hid, None)
            self._doc_path(hid).unlink(missing_ok=True)
        self._open.clear()
        self._saved_heads.clear()
        self._meta["caseload"] = {}
        self._meta.pop("device", None)
        self._write_meta()

    # -- persistence ---------------------------------------------------------------------

    def save(self, household_id: str) -> None:
        """Write the household to disk, unless the copy there is already current."""
        h = self._open.get(household_id)
        if h is None:
            return
        heads = h.doc.get_heads()
        if self._saved_heads.get(household_id) == heads:
            return
        _atomic_write(self._doc_path(household_id), self._vault.seal(h.doc.save()))
        self._saved_heads[household_id] = heads

    def save_all(self) -> None:
        for hid in list(self._open):
            self.save(hid)

    def flush(self) -> None:
        """Write every open household and the caseload metadata to disk."""
        self.save_all()
        self._write_meta()

    # -- what the server holds -----------------------------------------------------------

    def server_heads(self, household_id: str) -> list[bytes]:
        entry = self._meta["caseload"].get(household_id)
        return [bytes.fromhex(h) for h in entry["server_heads"]] if entry else []

    def set_server_heads(self, household_id: str, heads: list[bytes], *,
                         flush: bool = True) -> None:
        """Record what the server holds. ``flush=False`` defers the disk write to
        :meth:`flush` (a sync records heads on every message and flushes once)."""
        entry = self._meta["caseload"].setdefault(household_id, {"server_heads": []})
        entry["server_heads"] = sorted(h.hex() for h in heads)
        if flush:
            self._write_meta()

    def unsynced_changes(self, household_id: str) -> int:
        """How many of this device's own changes the server's last advertised heads do not
        cover (others' changes came from the server). An upper bound when some of those
        heads never arrived here."""
        if not self.has_local_copy(household_id):
            return 0
        doc = self.household(household_id).doc
        every = doc.get_changes([])
        known = {c.hash for c in every}
        # get_changes(heads) treats unknown heads as "nothing known": leave them out.
        heads = [h for h in self.server_heads(household_id) if h in known]
        missing = doc.get_changes(heads) if heads else every
        return sum(1 for c in missing if bytes(c.actor_id) == self.actor_id)

    def is_saved(self, household_id: str) -> bool:
        """True when the server's last advertised heads include every local change."""
        if not self.has_local_copy(household_id):
            return True
        return covers(self.household(household_id).doc, self.server_heads(household_id))

    # -- internals -----------------------------------------------------------------------

    def _doc_path(self, household_id: str) -> Path:
        if not is_household_id(household_id):
            raise ReplicaError("not a household id")
        return self.path / "households" / f"{household_id}.automerge"

    # --- the county directories (read-only copies) --------------------------------

    @property
    def _directory_path(self) -> Path:
        return self.path / "directory.json"

    def directory_state(self) -> dict[str, Any]:
        """``{"etag": …, "directories": [{county, version, imported_at, providers}]}`` as
        last fetched (empty before the first fetch)."""
        if not self._directory_path.exists():
            return {"etag": None, "directories": []}
        return self._read_sealed_json(self._directory_path)

    def store_directory(self, etag: str | None, directories: list[dict[str, Any]]) -> None:
        _atomic_write(self._directory_path, self._vault.seal(json.dumps(
            {"etag": etag, "directories": directories}).encode()))

    def directory(self, county: str | None = None) -> list[dict[str, Any]]:
        """The providers of ``county``'s directory (every county fetched when None)."""
        return [p for d in self.directory_state()["directories"]
                if county is None or d["county"] == county for p in d["providers"]]

    def nearest_providers(self, household_id: str, *, kind: str | None = None,
                          accessibility: tuple[str, ...] = (), limit: int = 5
                          ) -> list[dict[str, Any]]:
        """Offline: the providers of the household's county nearest to its GPS fix (the
        same function the web API runs, conflict.directory.nearest); [] without a fix."""
        h = self.household(household_id)
        gps = h.to_dict().get("gps") or {}
        if gps.get("lat") is None or gps.get("lon") is None:
            return []
        return nearest(self.directory(str(h.county)), gps["lat"], gps["lon"], kind=kind,
                       accessibility=accessibility, limit=limit)

    def _read_meta(self, actor_id: bytes | None) -> dict[str, Any]:
        if self._meta_path.exists():
            return self._read_sealed_json(self._meta_path)
        meta = {"version": 1, "actor_id": (actor_id or os.urandom(16)).hex(), "caseload": {}}
        _atomic_write(self._meta_path, self._vault.seal(json.dumps(meta).encode()))
        return meta

    def _read_sealed_json(self, path: Path) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self._vault.open(path.read_bytes(), path.name))
        except ValueError as exc:
            raise ReplicaError(f"{path.name} is unreadable") from exc
        return data

    def _write_meta(self) -> None:
        _atomic_write(self._meta_path, self._vault.seal(json.dumps(self._meta).encode()))


def covers(doc: Document, server_heads: list[bytes]) -> bool:
    """Does the history behind ``server_heads`` include every change of ``doc``?"""
    local = doc.get_heads()
    if not local:
        return True
    if not server_heads:
        return False
    if set(local) <= set(server_heads):
        return True  # the common case, without walking the history
    # get_changes(heads) treats unknown heads as "nothing known": check them first.
    # (Document.fork_at would do, but it can panic on histories from other peers.)
    known = {c.hash for c in doc.get_changes([])}
    if not set(server_heads) <= known:
        return False
    return not doc.get_changes(server_heads)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
