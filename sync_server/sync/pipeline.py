"""The merge pipeline for one incoming ``sync`` (or ``request``) message.

For household h and connection c, under h's lock::

    1. fork      f = h.doc.fork(); before = h.doc.get_heads()
    2. apply     f.receive_sync_message(c's SyncState for h, message)
    3. collect   new = f.get_changes(before)          (nothing new -> just answer c)
    4. persist   one transaction, one multi-row INSERT, idempotent by change hash
    5. swap      h.doc = f                             (only after the commit)
    6. fan out   every subscribed connection, the sender included, gets
                 h.doc.generate_sync_message(its SyncState)

If 2 or 4 fails nothing is swapped in, c's SyncState for h is reset, and c
gets an ``error`` naming the rule. Because messages are only generated from
``h.doc``, and ``h.doc`` only ever holds committed changes, no peer is told of
heads that a crash could lose.

A ``sync`` for a household the server does not know is a creation: the
changes are applied to an empty document, which must be a valid household
(schema v1, checked by :func:`conflict.validate`) to be registered; its first
changes and its registry row are committed in one transaction.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from automerge._automerge import DocumentId
from automerge.core import ROOT, Document, Message, ObjType, ScalarType

from conflict import (
    Household,
    InvalidValueError,
    Violation,
    is_entity_id,
    policy,
    schema,
    validate,
)
from conflict.validate import validate_paths
from sync_server.auth import access
from sync_server.auth.identity import Device, IdentityStore, User
from sync_server.gateway.connection import Connection
from sync_server.protocol import wire
from sync_server.protocol.errors import DocumentError, ErrorCode, Refused, StorageError, VatraError
from sync_server.protocol.preflight import DEFAULT_LIMITS, Limits, check_sync_message
from sync_server.store.audit import AuditEvent, AuditLog
from sync_server.store.contract import (
    Author,
    HouseholdErased,
    HouseholdIdTaken,
    HouseholdRecord,
    HouseholdStore,
    StoredChange,
)
from sync_server.store.quarantine import Quarantine
from sync_server.sync import conflicts
from sync_server.sync.households import HouseholdActor, HouseholdRegistry
from sync_server.sync.touched import touched_prefixes

log = logging.getLogger(__name__)


#: Refusals whose data is kept in the quarantine (the others concern no household data).
QUARANTINED = frozenset({ErrorCode.READ_ONLY, ErrorCode.ACTOR_NOT_REGISTERED,
                         ErrorCode.SCHEMA_VIOLATION, ErrorCode.PROTECTED_PATH,
                         ErrorCode.DECISION_FIELD,
                         ErrorCode.CREATION_REFUSED, ErrorCode.NOT_A_HOUSEHOLD,
                         ErrorCode.MALFORMED_SYNC_DATA, ErrorCode.LIMIT_EXCEEDED})

#: Below this many bytes of changes since the last snapshot, loading them is cheaper than
#: writing a snapshot (a young household: a few KiB). See docs/storage.md.
SNAPSHOT_MIN_BYTES = 16 * 1024


#: automerge-repo document ids: bs58check of 16 bytes and a 4-byte checksum (27-28
#: characters). Length and alphabet are checked before the binding parses an id (its
#: base58 decoding is quadratic in the length).
_DOCUMENT_ID_CHARS = frozenset("123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz")
MAX_DOCUMENT_ID_CHARS = 40

#: Exceptions a binding call must let through; anything else it raises on a device's bytes
#: (a Rust panic arrives as ``pyo3_runtime.PanicException``, a BaseException) refuses them.
_PASS_THROUGH = (KeyboardInterrupt, SystemExit, GeneratorExit, asyncio.CancelledError)


def check_document_id(document_id: str) -> None:
    if not (0 < len(document_id) <= MAX_DOCUMENT_ID_CHARS
            and _DOCUMENT_ID_CHARS.issuperset(document_id)):
        raise DocumentError("documentId is not an automerge-repo document id",
                            code=ErrorCode.INVALID_DOCUMENT_ID)
    # Canonical bs58check only: the UUID spellings DocumentId also parses would make one
    # document known under several ids (ids are compared as plain strings everywhere).
    try:
        canonical = DocumentId.from_string(document_id).to_string() == document_id
    except Exception as exc:  # the binding raises a bare Exception
        raise DocumentError("documentId is not an automerge-repo document id",
                            code=ErrorCode.INVALID_DOCUMENT_ID) from exc
    if not canonical:
        raise DocumentError("documentId must be a household id in canonical bs58check form",
                            code=ErrorCode.INVALID_DOCUMENT_ID)


def receive(doc: Document, state: Any, data: bytes, household_id: str) -> None:
    """Apply a device's sync message (already bounded by :mod:`sync_server.protocol.preflight`) to
    ``doc``, a fork or a new document the caller drops on failure. Whatever the binding
    raises on the bytes, a Rust panic included, is a refusal of this message only."""
    try:
        doc.receive_sync_message(state, Message.decode(data))
    except _PASS_THROUGH:
        raise
    except BaseException as exc:
        if type(exc).__name__ == "PanicException":
            log.warning("household %s: Automerge panicked on a device's sync message",
                        household_id)
        raise DocumentError("sync data is not a valid Automerge sync message",
                            code=ErrorCode.MALFORMED_SYNC_DATA,
                            document_id=household_id) from exc


#: Bytes of a peer's messages that wait, per household, for a dependency it has not sent.
HELD_BYTES = 8 * 1024 * 1024


def check_encoding(before: Sequence[bytes], new: Sequence[Any], doc: Document,
                   household_id: str) -> None:
    """Refuse changes whose bytes Automerge would not write back the same way.

    The binding accepts a change encoded in a valid but non-canonical form (a run written
    as literals, say) and keeps the hash of the bytes it received as a head, while it
    re-encodes the change canonically, with another hash, whenever it saves the document.
    Such a household can no longer be saved and loaded ("mismatching heads"): a fresh
    tablet, a snapshot, a restart all fail. ``get_changes`` returns the canonical forms,
    so the heads they imply differ from the document's exactly then."""
    implied = (set(before) | {c.hash for c in new}) - {d for c in new for d in c.deps}
    if set(doc.get_heads()) != implied:
        raise DocumentError("sync data holds a change Automerge would not save as it was sent "
                            "(a non-canonical encoding); nothing of it was merged",
                            code=ErrorCode.MALFORMED_SYNC_DATA, document_id=household_id)


def stored(changes: Sequence[Any]) -> list[StoredChange]:
    return [StoredChange(c.hash, tuple(c.deps), c.actor_id, c.bytes) for c in changes]


class Synchronizer:
    """Runs the pipeline; owns nothing but references to the registry and the store."""

    def __init__(self, registry: HouseholdRegistry, store: HouseholdStore,
                 server_peer_id: str, identity: IdentityStore,
                 audit: AuditLog | None = None, quarantine: Quarantine | None = None,
                 limits: Limits = DEFAULT_LIMITS) -> None:
        self.registry = registry
        self.limits = limits
        self.quarantine = quarantine
        self.store = store
        self.identity = identity
        self.audit = audit
        self.server_peer_id = server_peer_id
        #: The actor id of this server process's own changes (approved requests, domain
        #: merge fixes). One per process: two instances never share an actor's sequence.
        self.server_actor = os.urandom(16)
        self.changes_persisted = 0
        self.persist_seconds = 0.0
        #: time spent checking accepted batches (rules, schema, lattice, conflicts), for
        #: the bench: the checks' share of a batch's time
        self.check_seconds = 0.0
        self.batches_checked = 0

    async def handle(self, conn: Connection, msg: wire.Sync) -> None:
        """Apply one ``sync``/``request`` from ``conn``. Raises DocumentError/StorageError;
        data refused by a rule is kept in the quarantine first."""
        check_document_id(msg.document_id)
        _not_revoked(conn, msg.document_id)
        try:
            # Before the binding or the database sees anything: what may this message cost?
            check_sync_message(msg.data, self.limits, document_id=msg.document_id)
            await self._handle(conn, msg)
        except (Refused, DocumentError) as err:
            if (err.code in QUARANTINED and self.quarantine is not None
                    and msg.document_id not in self.registry.erased):  # erased stays erased
                await self._keep(conn, msg, err)
            raise

    async def _keep(self, conn: Connection, msg: wire.Sync, err: VatraError) -> None:
        device = conn.device
        try:
            await self.quarantine.keep(  # type: ignore[union-attr]
                msg.document_id, msg.data, code=str(err.code), reason=err.message,
                device_id=device.id if device else None,
                user_id=device.user.id if device else None)
        except Exception:
            log.exception("household %s: could not quarantine refused data", msg.document_id)

    async def _handle(self, conn: Connection, msg: wire.Sync) -> None:
        hid = msg.document_id
        # A household this device may not sync, or one erased, takes the path of an id the
        # server does not know, answer for answer: nobody learns which ids exist. Access is
        # decided on the registry's row, so a hidden household is never loaded for it.
        record = await self._record(hid)
        if record is not None and await self._may_sync(conn, record):
            actor = await self.registry.get(hid)
            if actor is not None:
                actor.subscribers.add(conn)
                await self._merge(actor, conn, msg)
                return
        if isinstance(msg, wire.Request):
            self._unavailable(conn, hid)
        else:
            await self._create(conn, msg, taken=record is not None or hid in self.registry.erased)

    async def _record(self, household_id: str) -> HouseholdRecord | None:
        """The household's registry row (from its resident copy when there is one); None
        for an id never registered."""
        actor = self.registry.resident(household_id)
        if actor is not None:
            return actor.record
        return await self.store.household(household_id)

    async def record(self, conn: Connection, kind: str, household_id: str | None = None,
                     **detail: Any) -> None:
        """An audit row about this connection's device (best effort: a failure is logged,
        the sync goes on)."""
        if self.audit is None or conn.device is None:
            return
        try:
            await self.audit.record(AuditEvent(kind, household_id, conn.device.user.id,
                                               conn.device.id, detail))
        except Exception:
            log.exception("audit: could not record %s", kind)

    async def caseload(self, conn: Connection) -> list[str]:
        """The households this connection's device should hold (its user's team households).

        Read once per connection; the same set then answers every team check of the
        session without another query."""
        if conn.team_households is None:
            conn.team_households = set(await self.identity.caseload(_user(conn)))
        return sorted(conn.team_households)

    def _unavailable(self, conn: Connection, household_id: str) -> None:
        conn.send(wire.DocUnavailable(self.server_peer_id, conn.peer_id or "", household_id))

    async def _may_sync(self, conn: Connection, record: HouseholdRecord) -> bool:
        """Decided once per connection and household (a team change applies from the next
        session; revoking a device cuts its sessions at once)."""
        allowed = conn.access.get(record.id)
        if allowed is None:
            user = _user(conn)
            team: tuple[str, ...] = ()
            if user.role == "worker" and record.id in await self.caseload(conn):
                team = (user.id,)  # the user is on the team; that is all may_* need to know
            allowed = conn.access[record.id] = access.may_sync(user, record, team)
            conn.writable[record.id] = access.may_write(user, record, team)
        return allowed

    @staticmethod
    def _check_batch(conn: Connection, household_id: str, new: Sequence[Any]) -> None:
        """Refuse a batch the device may not write, or whose changes are not its own."""
        if not conn.writable.get(household_id, False):
            raise Refused("this device may read this household but not change it",
                          code=ErrorCode.READ_ONLY, document_id=household_id)
        Synchronizer._check_actors(conn, household_id, new)

    @staticmethod
    def _check_actors(conn: Connection, household_id: str, new: Sequence[Any]) -> None:
        device = _device(conn)
        foreign = [c for c in new if c.actor_id not in device.actor_ids]
        if foreign:
            raise Refused(f"{len(foreign)} change(s) carry an actor id not registered to this "
                          f"device; nothing of this batch was merged",
                          code=ErrorCode.ACTOR_NOT_REGISTERED, document_id=household_id)

    async def _merge(self, actor: HouseholdActor, conn: Connection, msg: wire.Sync) -> None:
        hid = actor.id
        async with actor.lock:
            fork = _fork_for(conn, actor)
            before = actor.doc.get_heads()
            try:
                receive(fork, conn.sync_state(hid), msg.data, hid)
            except DocumentError:
                conn.reset_sync_state(hid)
                raise
            new = fork.get_changes(before)
            if not new:
                # Nothing applied, but the fork may hold changes queued for a missing
                # dependency (a Bloom-filter false positive made the device hold that one
                # back; dropping them left ~2% of syncs never converging). They are this
                # peer's alone, so the fork is kept for its next message, not made the
                # household's copy: a batch refused later must leave nothing behind (its
                # queued changes clashed with the device's re-applied ones). Bounded: a
                # device cannot make the server keep messages that never apply.
                held = conn.held_bytes.get(hid, 0) + len(msg.data)
                if held > HELD_BYTES:
                    conn.reset_sync_state(hid)
                    raise DocumentError(f"more than {HELD_BYTES} bytes of changes wait for a "
                                        f"dependency that never came; nothing of them was "
                                        f"kept", code=ErrorCode.LIMIT_EXCEEDED, document_id=hid)
                conn.held[hid], conn.held_bytes[hid] = fork, held
                self._answer_from(fork, hid, conn)
                return
            conn.held_bytes.pop(hid, None)
            try:
                check_encoding(before, new, fork, hid)
            except DocumentError:
                conn.reset_sync_state(hid)
                raise
            checks_started = time.perf_counter()
            try:
                self._check_batch(conn, hid, new)
                read = _read_touched(actor, fork, new)
                touched = touched_prefixes(fork, before) if read is None else read[0]
                sections = None if touched is None else {p[0] for p in touched}
                _check_schema(hid, fork, touched=touched)
                _check_policy(actor.record, actor.doc, fork, _user(conn), sections)
            except Refused:
                conn.reset_sync_state(hid)  # the fork, and everything in it, is dropped
                raise
            regressions = (lattice_fixes(fork, before, conflicts.batch_tips(new))
                           if sections is None or "service_plan" in sections else [])
            approved = (_newly_approved(actor.doc, fork, hid)
                        if _user(conn).role == "supervisor"
                        and (sections is None or "change_requests" in sections) else [])
            found = [c for c in conflicts.detect(fork, before, new)
                     if c.path[:1] != ("service_plan",) or c.path[-1] != "status"]
            # (a service's status has a domain merge policy instead: the lattice, above)
            started = time.perf_counter()
            self.check_seconds += started - checks_started
            self.batches_checked += 1
            try:
                _not_revoked(conn, hid)  # revoked while this batch was checked: not stored
            except Refused:
                conn.reset_sync_state(hid)
                raise
            try:
                result = await self.store.append_changes(hid, stored(new), _author(conn))
            except Exception as exc:
                conn.reset_sync_state(hid)
                log.exception("household %s: persisting %d changes failed", hid, len(new))
                raise StorageError("the server could not store these changes; retry later",
                                   document_id=hid) from exc
            self.persist_seconds += time.perf_counter() - started
            self.changes_persisted += result.inserted
            actor.doc = fork  # swap: only committed changes ever become visible
            actor.bytes_since_snapshot += result.inserted_bytes
            actor.last_seq = max(actor.last_seq, result.last_seq)
            if read is None:
                actor.objects.built = False  # rebuilt from the document on the next batch
            else:
                actor.objects.add(read[1])
            # Server changes the batch calls for are committed before anyone is answered,
            # so the device sees them in this very exchange (it stops when heads match).
            user = _user(conn)
            if regressions:
                await self._follow_up(actor, self._restore_lattice(regressions), user,
                                      "restoring service statuses")
            if found:
                writers = await self._writers(hid, found, user)
                await self._follow_up(actor, self._record_conflicts(found, writers, user),
                                      user, "recording conflicts")
            if approved:
                await self._follow_up(actor, self._apply_approved(hid, approved), user,
                                      "applying approved requests")
            self._answer(actor, list(actor.subscribers))
            await self._maybe_snapshot(actor)

    async def _create(self, conn: Connection, msg: wire.Sync, *, taken: bool) -> None:
        """A ``sync`` for an id this device sees no household under: a creation. ``taken``:
        the id is in use (a household this device may not sync, or an erased one); every
        answer up to the commit is then the one an unknown id gets, and the commit's place
        is taken by ``doc-unavailable``."""
        hid = msg.document_id
        doc = Document()
        state = conn.sync_state(hid)
        try:
            receive(doc, state, msg.data, hid)
        except DocumentError:
            conn.reset_sync_state(hid)
            raise
        new = doc.get_changes([])
        if new:
            try:
                check_encoding([], new, doc, hid)
            except DocumentError:
                conn.reset_sync_state(hid)
                raise
        if not new:
            # Handshake for a household the device has and the server does not (yet):
            # answer from the empty document so the device sends its changes.
            reply = doc.generate_sync_message(state)
            if reply is not None:
                conn.send(wire.Sync(self.server_peer_id, conn.peer_id or "", hid, reply.encode()))
            return
        violations = validate(doc)
        if violations:
            conn.reset_sync_state(hid)
            rules = "; ".join(f"{_public_path(v.path)}: {v.rule}" for v in violations[:10])
            raise DocumentError(f"unknown household, and its changes do not form a valid "
                                f"household (schema v1): {rules}",
                                code=ErrorCode.NOT_A_HOUSEHOLD, document_id=hid)
        record = HouseholdRecord(hid, _scalar(doc, "locality", hid), _scalar(doc, "county", hid))
        user = _user(conn)
        if not access.may_create(user, record.locality, record.county):
            conn.reset_sync_state(hid)
            raise Refused("this user may not register households in this locality",
                          code=ErrorCode.CREATION_REFUSED, document_id=hid)
        try:
            self._check_actors(conn, hid, new)
        except Refused:
            conn.reset_sync_state(hid)
            raise
        if taken:
            conn.reset_sync_state(hid)
            self._unavailable(conn, hid)
            return
        _not_revoked(conn, hid)
        try:
            result = await self.store.create_household(
                record, stored(new), _author(conn), team=[user.id, *team_user_ids(doc)])
        except HouseholdErased:
            self.registry.erased.add(hid)
            conn.reset_sync_state(hid)
            self._unavailable(conn, hid)
            return
        except HouseholdIdTaken:
            # Registered by another connection since this message arrived: from here on it
            # is an existing household, with its access check (on a caseload read anew: it
            # may be this user's household, registered from another of its sessions).
            conn.reset_sync_state(hid)
            conn.team_households = None
            conn.access.pop(hid, None)
            await self._handle(conn, msg)
            return
        except Exception as exc:
            conn.reset_sync_state(hid)
            log.exception("household %s: creating failed", hid)
            raise StorageError("the server could not store this household; retry later",
                               document_id=hid) from exc
        conn.access[hid] = conn.writable[hid] = True
        self.changes_persisted += result.inserted
        if conn.team_households is not None:
            conn.team_households.add(hid)
        actor = self.registry.resident(hid)
        if actor is None:
            actor = self.registry.admit_new(HouseholdActor(
                record, doc, snapshot_bytes=0, bytes_since_snapshot=result.inserted_bytes,
                last_seq=result.last_seq))
        actor.subscribers.add(conn)
        async with actor.lock:
            self._answer(actor, list(actor.subscribers))

    def _answer(self, actor: HouseholdActor, targets: Sequence[Connection]) -> None:
        for target in targets:
            held = target.held.get(actor.id)
            if held is not None:  # a peer with queued changes is answered from its fork
                held.merge(actor.doc)
            self._answer_from(actor.doc if held is None else held, actor.id, target)

    def _answer_from(self, doc: Document, hid: str, target: Connection) -> None:
        m = doc.generate_sync_message(target.sync_state(hid))
        if m is not None:
            target.send(wire.Sync(self.server_peer_id, target.peer_id or "", hid, m.encode()))

    @staticmethod
    def _apply_approved(hid: str, request_ids: list[str]) -> Callable[[Household], None]:
        """A county supervisor approved requests through sync: apply their structural
        changes as the server's own change (once: only a pending -> approved move)."""

        def apply(h: Household) -> None:
            for rid in request_ids:
                try:
                    h.apply_decided(rid, as_server=True)
                except (InvalidValueError, ValueError, KeyError) as exc:
                    log.warning("household %s: approved request could not be applied (%s)",
                                hid, type(exc).__name__)
                    h.append_activity("vatra", "change_not_applied",
                                      f"request {rid}: approved, but it no longer applies")

        return apply

    async def _writers(self, hid: str, found: list[conflicts.Detected], user: User
                       ) -> list[list[tuple[str, datetime]]]:
        """Who wrote each conflicting value, and when the server received it: the
        server's value from the change log (the server's own changes are ``vatra``), the
        device's value from this batch. A writer that cannot be told is ``unknown``."""
        now = datetime.now(UTC)
        try:
            origins = await self.store.change_origins(
                hid, {c.server_change for c in found if c.server_change is not None})
        except Exception:
            log.exception("household %s: reading who wrote conflicting values failed", hid)
            origins = {}
        users: dict[str, str] = {}
        out = []
        for c in found:
            by, at = "unknown", now
            origin = origins.get(c.server_change) if c.server_change else None
            if origin is not None:
                device_id, at = origin
                if device_id is None:
                    by = "vatra"
                else:
                    if device_id not in users:
                        device = await self.identity.device(device_id)
                        users[device_id] = device.user.id if device else "unknown"
                    by = users[device_id]
            out.append([(by, at), (user.id, now)])
        return out

    @staticmethod
    def _record_conflicts(found: list[conflicts.Detected],
                          writers: list[list[tuple[str, datetime]]],
                          user: User) -> Callable[[Household], None]:
        """Record same-field conflicts under ``conflicts`` (each value with who wrote it
        and when), with an activity entry saying whose edit met whose value."""

        def record(h: Household) -> None:
            for c, written in zip(found, writers, strict=True):
                h.record_conflict(c.path, [c.server_value, c.device_value], written=written)
                h.append_activity("vatra", "conflict",
                                  f"{'/'.join(map(str, c.path))}: {user.id}'s value and "
                                  f"{written[0][0]}'s differ; choose one to resolve")

        return record

    @staticmethod
    def _restore_lattice(regressions: list[tuple[str, str, str]]) -> Callable[[Household], None]:
        """A merge let a service's status move down (Automerge's winner of a concurrent
        write, e.g. ``in_progress`` over ``delivered``): write the lattice maximum back,
        and say why in the activity feed."""

        def restore(h: Household) -> None:
            plan = h.doc.get(ROOT, "service_plan")
            for service_id, before, after in regressions:
                service = h.doc.get(plan[1], service_id) if plan else None
                if service is None:
                    continue
                with h.doc.transaction() as tx:  # the status alone: delivered_by/at stay
                    tx.put(service[1], "status", ScalarType.Str,
                           policy.lattice_max(before, after))
                h.append_activity("vatra", "status-restored",
                                  f"service {service_id}: {after} -> "
                                  f"{policy.lattice_max(before, after)} (status only moves "
                                  f"forward; a concurrent edit had moved it back)")

        return restore

    async def _follow_up(self, actor: HouseholdActor, edit: Callable[[Household], Any],
                         user: User, what: str) -> None:
        """A server change that follows a device's batch (caused by ``user``), made while
        the batch's lock is held. The batch is already stored: a failure here is logged,
        not sent back."""
        try:
            await self._commit_server_change(actor, edit, Author("server", user.id))
        except Exception:
            log.exception("household %s: %s failed", actor.id, what)

    async def server_change(self, household_id: str, edit: Callable[[Household], Any], *,
                            author: Author) -> Any:
        """Apply ``edit`` to the household as the server's own change, through the same
        path as a device's batch: fork, edit, validate, persist (one transaction, audited
        under ``author``), swap, fan out. Returns what ``edit`` returned. Raises LookupError
        for an unknown household and Refused if the result breaks the schema."""
        actor = await self.registry.get(household_id)
        if actor is None:
            raise LookupError(f"no household {household_id}")
        async with actor.lock:
            result, changed = await self._commit_server_change(actor, edit, author)
            if changed:
                self._answer(actor, list(actor.subscribers))
                await self._maybe_snapshot(actor)
            return result

    async def _commit_server_change(self, actor: HouseholdActor,
                                    edit: Callable[[Household], Any],
                                    author: Author) -> tuple[Any, bool]:
        """Fork, edit as the server, validate, persist, swap (the caller holds the lock
        and answers). Returns what ``edit`` returned and whether anything changed."""
        fork = actor.doc.fork()
        fork.set_actor(self.server_actor)
        before = actor.doc.get_heads()
        result = edit(Household(fork, actor.id))
        new = fork.get_changes(before)
        if not new:
            return result, False
        _check_schema(actor.id, fork)
        place = (_scalar(fork, "locality", actor.id), _scalar(fork, "county", actor.id))
        if place != (actor.record.locality, actor.record.county):  # an approved move
            record = replace(actor.record, locality=place[0], county=place[1])
            stored_result = await self.store.move_household(record, stored(new), author)
            actor.record = record
        else:
            stored_result = await self.store.append_changes(actor.id, stored(new), author)
        self.changes_persisted += stored_result.inserted
        actor.doc = fork
        actor.bytes_since_snapshot += stored_result.inserted_bytes
        actor.last_seq = max(actor.last_seq, stored_result.last_seq)
        actor.objects.absorb(fork, new)
        return result, True

    async def _maybe_snapshot(self, actor: HouseholdActor) -> None:
        """Compact when the changes since the last snapshot outweigh it (and a floor)."""
        if actor.bytes_since_snapshot <= max(actor.snapshot_bytes, SNAPSHOT_MIN_BYTES):
            return
        body = actor.doc.save()
        try:
            await self.store.save_snapshot(actor.id, body, actor.doc.get_heads(), actor.last_seq)
        except Exception:
            log.exception("household %s: snapshot failed (the change log is intact)", actor.id)
            return
        actor.snapshot_bytes = len(body)
        actor.bytes_since_snapshot = 0


def _read_touched(actor: HouseholdActor, fork: Document, new: Sequence[Any]
                  ) -> tuple[set[tuple[str | int, ...]], dict[Any, Any]] | None:
    """What the batch touched, from its own operations (the household's object index),
    or None to read it from a diff. The index costs one walk of the document to build,
    more than one diff, so it is built on a household's second batch while loaded: a
    household that gets one batch (a tablet's return) never pays for it."""
    if not actor.objects.built and not actor.objects.wanted:
        actor.objects.wanted = True
        return None
    return actor.objects.touched(fork, new, before=actor.doc)


def _fork_for(conn: Connection, actor: HouseholdActor) -> Document:
    """The copy a peer's next message is received into: the household's current one, or
    the fork kept for this peer (its queued changes) brought up to date."""
    held = conn.held.pop(actor.id, None)
    if held is None:
        return actor.doc.fork()
    held.merge(actor.doc)
    return held


def schema_violations(merged: Document, before: list[bytes] | None = None, *,
                      touched: set[tuple[str | int, ...]] | None = None) -> list[Violation]:
    """Schema v1 violations of ``merged``: of the parts touched since ``before`` when the
    patches can be read (the rest was valid already), else of the whole household.
    ``touched`` passes prefixes already read (:func:`touched_prefixes`)."""
    prefixes = touched
    if prefixes is None and before is not None:
        prefixes = touched_prefixes(merged, before)
    if prefixes is None:
        return validate(merged)
    try:
        found = validate_paths(merged, sorted(prefixes, key=repr))
    except ValueError:  # a prefix the schema does not define: check everything
        return validate(merged)
    return list({(v.path, v.rule): v for v in found}.values())  # prefixes may overlap


def lattice_fixes(merged: Document, server_heads: list[bytes],
                  tips: list[bytes]) -> list[tuple[str, str, str]]:
    """Services whose merged status is below the lattice maximum of the server's status
    before the merge, the batch's own status, and the merged one: ``(service_id, maximum,
    merged)``. Covers a device moving a status down, and a device's higher status losing
    Automerge's tie-break to a concurrent lower one."""
    plan = merged.get(ROOT, "service_plan")
    if plan is None or plan[0] != ObjType.Map:
        return []
    out = []
    for sid in merged.keys(plan[1]):
        path = ("service_plan", sid, "status")
        _, now = conflicts.scalar_at(merged, path, merged.get_heads())
        if now not in policy.SERVICE_STATUS_RANK:
            continue
        top = now
        for heads in (server_heads, tips):
            found, value = conflicts.scalar_at(merged, path, heads)
            if found and value in policy.SERVICE_STATUS_RANK:
                top = policy.lattice_max(top, value)
        if top != now:
            out.append((sid, top, now))
    return out


def _newly_approved(before: Document, after: Document, hid: str) -> list[str]:
    """Requests that are approved in ``after`` and were pending (or absent) in ``before``."""
    was = {r["request_id"]: r.get("status") for r in Household(before, hid).change_requests()}
    return [r["request_id"] for r in Household(after, hid).change_requests()
            if r.get("status") == "approved" and was.get(r["request_id"]) in (None, "pending")]


def _check_schema(household_id: str, merged: Document,
                  before: list[bytes] | None = None, *,
                  touched: set[tuple[str | int, ...]] | None = None) -> None:
    """The merged document must still be a valid household (schema v1); otherwise the
    batch is refused, naming every violation's path and rule (never a value)."""
    violations = schema_violations(merged, before, touched=touched)
    if violations:
        listed = "; ".join(f"{_public_path(v.path)}: {v.rule}" for v in violations[:20])
        more = f" (and {len(violations) - 20} more)" if len(violations) > 20 else ""
        raise Refused(f"the batch breaks schema v1: {listed}{more}",
                      code=ErrorCode.SCHEMA_VIOLATION, document_id=household_id)


def _check_policy(record: HouseholdRecord, before: Document, after: Document, user: User,
                  sections: set[str | int] | None = None) -> None:
    """Structural paths of an active household change only through approved requests
    (applied by the server); a household's place (locality, county) only that way, in
    every status and for every role; decision fields only by the supervisors of the
    household's county (the registry's, ``record``: the one place every check reads).
    ``sections``: the top-level sections the batch touched (None = unknown: check all);
    a rule whose sections were not touched cannot be broken and is not read."""
    household_id = record.id

    def touched(*names: str) -> bool:
        return sections is None or any(n in sections for n in names)

    if touched(*policy.PLACE_FIELDS):
        moved = policy.place_violations(before, after)
        if moved:
            paths = ", ".join(_public_path(v.path) for v in moved)
            raise Refused(f"protected path(s) changed without an approved change request: "
                          f"{paths}; a household moves only by an approved move_household "
                          f"request", code=ErrorCode.PROTECTED_PATH, document_id=household_id)

    if user.role == "worker" and touched("members", "team", "status"):
        violations = policy.protected_violations(before, after)
        if violations:
            paths = ", ".join(_public_path(v.path) for v in violations[:20])
            raise Refused(f"protected path(s) changed without an approved change request: "
                          f"{paths}; file a change request instead",
                          code=ErrorCode.PROTECTED_PATH, document_id=household_id)
    same_county = record.county == user.county
    for check, section in ((policy.decision_violations, "change_requests"),
                           (policy.cancel_violations, "service_plan")):
        if not touched(section):
            continue
        violations = check(before, after, user.role, same_county)
        if violations:
            paths = ", ".join(f"{_public_path(v.path)} ({v.rule})" for v in violations[:20])
            raise Refused(f"only a supervisor of the household's county may write: {paths}",
                          code=ErrorCode.DECISION_FIELD, document_id=household_id)


def _public_path(path: Sequence[str | int]) -> str:
    """A violation's path for an error reply: schema field names, indexes and entity ids
    stay; any other key (client-chosen, may be a name or an address) becomes ``*``."""
    spec: schema.Spec | None = schema.HOUSEHOLD
    parts = []
    for seg in path:
        known = (isinstance(seg, int) or is_entity_id(seg)
                 or (isinstance(spec, schema.Record) and seg in spec.fields))
        parts.append(str(seg) if known else "*")
        spec = schema.child_spec(spec, seg) if spec is not None else None
    return "/".join(parts) or "/"


def _not_revoked(conn: Connection, household_id: str) -> None:
    if conn.revoked:
        raise Refused("this device was revoked; nothing of this batch was stored",
                      code=ErrorCode.DEVICE_REVOKED, document_id=household_id)


def _device(conn: Connection) -> Device:
    if conn.device is None:  # the session handshake sets it before any sync message
        raise DocumentError("no authenticated device on this connection",
                            code=ErrorCode.HANDSHAKE_REQUIRED)
    return conn.device


def _user(conn: Connection) -> User:
    return _device(conn).user


def _author(conn: Connection) -> Author:
    device = _device(conn)
    return Author(device.id, device.user.id)


def team_user_ids(doc: Document) -> list[str]:
    got = doc.get(ROOT, "team")
    if got is None or got[0] != ObjType.Map:
        return []
    return [v[1] for v, _ in doc.values(got[1])
            if isinstance(v, tuple) and v[0] == ScalarType.Str]


def _scalar(doc: Document, key: str, document_id: str) -> str:
    got = doc.get(ROOT, key)
    if got is None or not isinstance(got[0], tuple) or got[0][0] != ScalarType.Str:
        raise DocumentError(f"household field {key!r} must be a string",
                            code=ErrorCode.NOT_A_HOUSEHOLD, document_id=document_id)
    return str(got[0][1])
