"""The merge pipeline for one incoming ``sync`` (or ``request``) message.

For household h and peer p, each stage in its own module::

    1. bound      what the message may cost, before anything reads it   protocol/preflight.py
    2. authorize  may p's device sync h (else: the answer for no such h)  auth/grants.py
    3. apply      on a fork of h, under h's lock; collect the new changes  sync/apply.py
    4. check      writer, actors, schema, protected paths, decisions       sync/checks.py
    5. persist    one transaction, idempotent by change hash               store/
    6. swap       h.doc = fork, only after the commit                      sync/households.py
    7. follow up  the server's own changes the batch calls for (service
                  statuses restored, conflicts recorded, approved requests
                  applied), each persisted and swapped the same way        sync/followups.py
    8. fan out    every subscribed peer, the sender included, gets
                  h.doc.generate_sync_message(its SyncState)

If a stage refuses, nothing is swapped in, p's SyncState for h is reset, the refused
bytes are quarantined (sync_server/store/quarantine.py) and p gets an ``error`` naming the
rule. Because messages are only generated from ``h.doc``, and ``h.doc`` only ever holds
committed changes, no peer is told of heads that a crash could lose.

A ``sync`` for a household the server does not know is a creation: the changes are
applied to an empty document, which must be a valid household (schema v1) to be
registered; its first changes, registry row and team are committed in one transaction. A
household p may not sync, or an erased one, takes that same path answer for answer.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from automerge.core import Document, SyncState
from prometheus_client import Counter, Histogram

from conflict import SERVER_AUTHOR, Household, validate
from conflict import case as case_rules
from sync_server.auth.grants import Grants
from sync_server.auth.identity import Device, IdentityError, IdentityStore, User
from sync_server.protocol import fastpath, wire
from sync_server.protocol.errors import DocumentError, ErrorCode, Refused, StorageError, VatraError
from sync_server.protocol.preflight import DEFAULT_LIMITS, Limits, check_sync_message
from sync_server.store.audit import AuditEvent, AuditLog
from sync_server.store.contract import (
    Author,
    HouseholdErased,
    HouseholdIdTaken,
    HouseholdRecord,
    HouseholdStale,
    HouseholdStore,
    UnknownHousehold,
)
from sync_server.store.database import DATABASE_ERRORS
from sync_server.store.quarantine import Quarantine
from sync_server.sync import conflicts, cpu, followups
from sync_server.sync.apply import check_document_id, check_encoding, fork_for, hold, receive, stored
from sync_server.sync.checks import (
    check_attribution,
    check_case,
    check_catalogue,
    check_decisions,
    check_policy,
    check_schema,
    check_writer,
    lattice_fixes,
    newly_approved,
    public_path,
    read_touched,
    root_str,
    team_requests,
    team_user_ids,
    unbound_actors,
)
from sync_server.sync.households import HouseholdActor, HouseholdRegistry
from sync_server.sync.peer import Peer
from sync_server.sync.touched import touched_prefixes

log = logging.getLogger(__name__)

#: Refusals whose data is kept in the quarantine (the others concern no household data).
QUARANTINED = frozenset({ErrorCode.READ_ONLY, ErrorCode.ACTOR_NOT_REGISTERED,
                         ErrorCode.SCHEMA_VIOLATION, ErrorCode.PROTECTED_PATH,
                         ErrorCode.DECISION_FIELD, ErrorCode.FORGED_ATTRIBUTION,
                         ErrorCode.INVALID_TEAM_MEMBER, ErrorCode.STAGE_TRANSITION,
                         ErrorCode.CREATION_REFUSED, ErrorCode.NOT_A_HOUSEHOLD,
                         ErrorCode.MALFORMED_SYNC_DATA, ErrorCode.LIMIT_EXCEEDED})

#: Below this many bytes of changes since the last snapshot, loading them is cheaper than
#: writing a snapshot (a young household: a few KiB). See docs/storage.md.
SNAPSHOT_MIN_BYTES = 16 * 1024
#: Tries of one batch whose household another instance keeps committing to (each on a
#: copy reloaded from the log) before the device is answered storage-failure. Two were
#: too few for two teammates editing one household live through two instances: 11 of
#: about 1,800 live edits were refused in 30 s of loadtests (docs/capacity.md).
STALE_ATTEMPTS = 4

PERSISTED = Counter("vatra_changes_persisted_total", "Changes the pipeline logged")
PERSIST_SECONDS = Histogram("vatra_persist_seconds",
                            "Time to commit one batch (waiting for its group commit included)")
MERGE_SECONDS = Histogram(
    "vatra_merge_seconds",
    "Time to merge one device message into its household (apply, check, commit, "
    "follow-ups, fan-out), under the household's lock",
    buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
CHECK_SECONDS = Histogram("vatra_check_seconds",
                          "Time to check one batch (rules, schema, lattice, conflicts)",
                          buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1))


class Synchronizer:
    """Runs the pipeline: each stage is a call into its module; this class holds the
    references the stages need (registry, store, identity, audit, quarantine, limits)."""

    def __init__(self, registry: HouseholdRegistry, store: HouseholdStore,
                 server_peer_id: str, identity: IdentityStore,
                 audit: AuditLog | None = None, quarantine: Quarantine | None = None,
                 limits: Limits = DEFAULT_LIMITS) -> None:
        self.registry = registry
        self.store = store
        self.identity = identity
        self.audit = audit
        self.quarantine = quarantine
        self.limits = limits
        self.server_peer_id = server_peer_id
        #: The actor id of this server process's own changes (approved requests, domain
        #: merge fixes). One per process: two instances never share an actor's sequence.
        self.server_actor = os.urandom(16)
        #: Told of every team this process commits (the gateway's TeamChanges sets it), so
        #: its own sessions follow at once, whatever becomes of the NOTIFY.
        self.on_team_change: Callable[[str], None] | None = None

    def grants(self, device: Device) -> Grants:
        """What a session of ``device`` may do (made once its device is authenticated)."""
        return Grants(device.user, self.identity)

    # -- a device's message ---------------------------------------------------------------

    async def handle(self, peer: Peer, msg: wire.Sync) -> None:
        """Apply one ``sync``/``request`` from ``peer``. A broken rule raises DocumentError
        (the peer must resync) or Refused (this batch only), data refused by a rule being
        kept in the quarantine first; StorageError when nothing could be stored (retry).
        Anything else is a fault of the server's own."""
        check_document_id(msg.document_id)
        _not_revoked(peer, msg.document_id)
        try:
            # 1. bound: before the binding or the database sees anything
            await cpu.run(len(msg.data), check_sync_message, msg.data, self.limits,
                          document_id=msg.document_id)
            await self._route(peer, msg)
        except (Refused, DocumentError) as err:
            # the message names the rule and the paths, never a value (public_path)
            log.info("batch refused (%s): %s", err.code, err.message, extra={
                "code": str(err.code), "household_id": msg.document_id,
                "device_id": peer.device.id if peer.device is not None else None})
            if (err.code in QUARANTINED and self.quarantine is not None
                    and msg.document_id not in self.registry.erased):  # erased stays erased
                await self._keep(peer, msg, err)
            raise
        except DATABASE_ERRORS as exc:  # reading a record or loading a household: retry
            log.warning("household %s: the database did not answer (%s)", msg.document_id,
                        type(exc).__name__)
            raise StorageError("the server cannot reach its database; retry later",
                               document_id=msg.document_id) from exc

    async def _route(self, peer: Peer, msg: wire.Sync) -> None:
        """2. authorize. A household this device may not sync, or one erased, takes the
        path of an id the server does not know, answer for answer: nobody learns which ids
        exist. Access is decided on the registry's row: a hidden household is not loaded."""
        hid = msg.document_id
        record = await self._record(hid)
        grants = _grants(peer)
        if record is not None and await grants.may_sync(record):
            actor = await self.registry.get(hid)
            # (decided again if the team changed while the household was loading)
            if actor is not None and await grants.may_sync(actor.record):
                actor.subscribers.add(peer)
                await self._merge(actor, peer, msg)
                return
        if isinstance(msg, wire.Request):
            self._unavailable(peer, hid)
        else:
            await self._create(peer, msg, taken=record is not None or hid in self.registry.erased)

    async def _record(self, household_id: str) -> HouseholdRecord | None:
        """The household's registry row (from its resident copy when there is one); None
        for an id never registered."""
        actor = self.registry.resident(household_id)
        if actor is not None:
            return actor.record
        return await self.store.household(household_id)

    async def _merge(self, actor: HouseholdActor, peer: Peer, msg: wire.Sync) -> None:
        async with actor.lock:
            # Several instances serve one household: a copy is trusted once it is known not
            # to be behind the log (at a session's first message for the household, and
            # whenever another instance said it committed; docs/instances.md).
            if actor.stale or not peer.sync.syncing(actor.id):
                await self.registry.refresh(actor)
            with MERGE_SECONDS.time():
                for attempt in range(1, STALE_ATTEMPTS + 1):
                    try:
                        await self._merge_locked(actor, peer, msg)
                        break
                    except HouseholdStale as stale:
                        # Another instance committed to this household since the copy was
                        # read: nothing of the batch was stored. The batch is taken again,
                        # on the log's copy; after STALE_ATTEMPTS, the device is told to
                        # retry.
                        if attempt == STALE_ATTEMPTS:
                            actor.stale = True
                            peer.sync.reset(actor.id)
                            raise StorageError("the household changed on another server "
                                               "while this batch was stored; retry",
                                               document_id=actor.id) from stale
                        await self.registry.refresh(actor, check=False)

    async def _merge_locked(self, actor: HouseholdActor, peer: Peer, msg: wire.Sync) -> None:
        hid, grants, device = actor.id, _grants(peer), _device(peer)
        fork = fork_for(peer.sync, actor)
        with _resetting(peer, hid):
            # 3. apply and 4. check, in a worker thread when the message is big (cpu.py)
            checked = await cpu.run(len(msg.data), _apply_and_check, actor, fork,
                                    peer.sync.state(hid), msg.data, device,
                                    grants.may_write(hid), grants.user)
            if checked is None:
                hold(peer.sync, hid, fork, len(msg.data))
                self._answer_from(fork, hid, peer)
                return
            peer.sync.held_bytes.pop(hid, None)
            if checked.team_touched:
                await self._check_team(actor.record, actor.doc, fork)
            if checked.unbound:
                await self._bind(peer, hid, checked.unbound)
            _not_revoked(peer, hid)  # revoked while this batch was checked: not stored
            # 5. persist, 6. swap
            await self._commit(actor, fork, checked.new, _author(device))
        if checked.read is None:
            actor.objects.built = False  # rebuilt from the document on the next batch
        else:
            actor.objects.add(checked.read[1])
        # 7. follow up: server changes the batch calls for are committed before anyone
        # is answered, so the device sees them in this very exchange (it stops when
        # heads match).
        user = grants.user
        if checked.overtaken_stage is not None:
            await self._follow_up(actor, followups.restore_stage(checked.overtaken_stage),
                                  user.id, "restoring the accepted case stage")
        if checked.regressions:
            await self._follow_up(actor, followups.restore_lattice(checked.regressions),
                                  user.id, "restoring service statuses")
        if checked.found:
            written = await followups.writers(self.store, self.identity, hid, checked.found,
                                              user)
            await self._follow_up(actor, followups.record_conflicts(checked.found, written,
                                                                    user),
                                  user.id, "recording conflicts")
        if checked.approved:
            await self._follow_up(actor, followups.apply_approved(hid, checked.approved),
                                  user.id, "applying approved requests")
        # 8. fan out
        await self._fan_out(actor)
        await self._maybe_snapshot(actor)

    async def _check_team(self, record: HouseholdRecord, before: Document | None,
                          after: Document, registering: str | None = None) -> None:
        """Team is access: whoever the batch puts on the team (a role it assigns, or a
        ``change_team`` request it files) must be a worker of the household's locality;
        a new household's team must name the worker who registers it. Refused as
        ``invalid-team-member``, naming the paths (a user id can be a name)."""
        hid = record.id
        before = before if before is not None else Document()  # a registration
        added = set(team_user_ids(after)) - set(team_user_ids(before))
        named: dict[str, set[str]] = {f"team ({len(added)} new)": added} if added else {}
        for rid, users in team_requests(before, after, hid).items():
            named[f"change_requests/{rid}/payload"] = set(users)
        problems = []
        if registering is not None and registering not in team_user_ids(after):
            problems.append("team (must name the worker who registers the household)")
        everyone = set().union(*named.values()) if named else set()
        bad = set(await self.identity.ineligible_team_members(
            everyone, record.locality, record.county)) if everyone else set()
        problems += [where for where, users in named.items() if users & bad]
        if problems:
            raise Refused(f"a household's team names workers of its locality only: "
                          f"{', '.join(problems)}", code=ErrorCode.INVALID_TEAM_MEMBER,
                          document_id=hid)

    async def _commit(self, actor: HouseholdActor, fork: Document, new: Sequence[Any],
                      author: Author, *, may_move: bool = False) -> None:
        """Persist ``new`` (one transaction), then swap ``fork`` in. The one place a
        household's copy changes. ``may_move``: the server's own change applying an approved
        move updates the registry row in the same transaction; a device's batch never
        moves a household (its policy check refuses the change before this is reached).

        Raises StorageError (nothing stored; the same batch may be retried). A household
        erased meanwhile is dropped from memory first, so the retry is answered like any
        erased one."""
        started = time.perf_counter()
        place = (root_str(fork, "locality", actor.id), root_str(fork, "county", actor.id))
        moved = place != (actor.record.locality, actor.record.county)
        team = sorted(set(team_user_ids(fork)))
        changed_team = team if team != sorted(set(team_user_ids(actor.doc))) else None
        if moved and not may_move:
            raise Refused("a device's changes may not move a household; a move is approved "
                          "by a supervisor", code=ErrorCode.PROTECTED_PATH, document_id=actor.id)
        try:
            if moved:
                record = replace(actor.record, locality=place[0], county=place[1])
                result = await self.store.move_household(record, stored(new), author,
                                                         team=changed_team)
                actor.record = record
            else:
                result = await self.store.append_changes(actor.id, stored(new), author,
                                                         team=changed_team,
                                                         expected_seq=actor.last_seq)
        except (StorageError, HouseholdStale):
            raise
        except HouseholdErased as exc:
            self.registry.forget_erased(actor.id)
            raise StorageError("the server could not store these changes; retry later",
                               document_id=actor.id) from exc
        except Exception as exc:
            log.exception("household %s: persisting %d changes failed", actor.id, len(new))
            raise StorageError("the server could not store these changes; retry later",
                               document_id=actor.id) from exc
        PERSIST_SECONDS.observe(time.perf_counter() - started)
        PERSISTED.inc(result.inserted)
        actor.swap(fork, result)
        if changed_team is not None and self.on_team_change is not None:
            self.on_team_change(actor.id)

    # -- creation -------------------------------------------------------------------------

    async def _create(self, peer: Peer, msg: wire.Sync, *, taken: bool) -> None:
        """A ``sync`` for an id this device sees no household under: a creation. ``taken``:
        the id is in use (a household this device may not sync, or an erased one); every
        answer up to the commit is then the one an unknown id gets, and the commit's place
        is taken by ``doc-unavailable``."""
        hid = msg.document_id
        doc = Document()
        state = peer.sync.state(hid)
        grants, device = _grants(peer), _device(peer)
        with _resetting(peer, hid):
            # in a worker thread when the message is big (cpu.py)
            checked = await cpu.run(len(msg.data), _apply_new, doc, state, msg.data, hid,
                                    device, grants)
            if checked is None:
                # Handshake for a household the device has and the server does not (yet):
                # answer from the empty document so the device sends its changes.
                reply = doc.generate_sync_message(state)
                if reply is not None:
                    peer.send(wire.Sync(self.server_peer_id, peer.peer_id or "", hid,
                                        reply.encode()))
                return
            record, new = checked
            await self._check_team(record, None, doc, registering=grants.user.id)
            if taken:
                peer.sync.reset(hid)
                self._unavailable(peer, hid)
                return
            unbound = unbound_actors(device, new)
            if unbound:
                await self._bind(peer, hid, unbound)
            _not_revoked(peer, hid)
        try:
            result = await self.store.create_household(
                record, stored(new), _author(device), team=sorted(set(team_user_ids(doc))))
        except HouseholdErased:
            self.registry.erased.add(hid)
            peer.sync.reset(hid)
            self._unavailable(peer, hid)
            return
        except HouseholdIdTaken:
            # Registered by another connection since this message arrived: from here on it
            # is an existing household, with its access check (on a caseload read anew: it
            # may be this user's household, registered from another of its sessions).
            peer.sync.reset(hid)
            grants.reconsider(hid)
            await self._route(peer, msg)
            return
        except Exception as exc:
            peer.sync.reset(hid)
            log.exception("household %s: creating failed", hid)
            raise StorageError("the server could not store this household; retry later",
                               document_id=hid) from exc
        grants.created(hid)
        PERSISTED.inc(result.inserted)
        actor = self.registry.resident(hid)
        if actor is None:
            actor = self.registry.admit_new(HouseholdActor(
                record, doc, snapshot_bytes=0, bytes_since_snapshot=result.inserted_bytes,
                last_seq=result.last_seq))
        actor.subscribers.add(peer)
        async with actor.lock:
            await self._fan_out(actor)

    # -- the server's own changes -----------------------------------------------------------

    async def server_change(self, household_id: str, edit: Callable[[Household], Any], *,
                            author: Author) -> Any:
        """Apply ``edit`` to the household as the server's own change, through the same
        path as a device's batch: fork, edit, validate, persist (one transaction, audited
        under ``author``), swap, fan out. Returns what ``edit`` returned. Raises
        UnknownHousehold (or HouseholdErased), Refused if the result breaks the schema and
        StorageError if it could not be stored (also when other instances kept committing
        to the household through STALE_ATTEMPTS tries)."""
        actor = await self.registry.get(household_id)
        if actor is None:
            if household_id in self.registry.erased:
                raise HouseholdErased(household_id)
            raise UnknownHousehold(household_id)
        async with actor.lock:
            await self.registry.refresh(actor)
            for attempt in range(1, STALE_ATTEMPTS + 1):
                try:
                    result, changed = await self._server_change(
                        actor, edit, author, writer=author.user_id or SERVER_AUTHOR)
                    break
                except HouseholdStale as stale:  # another instance committed meanwhile
                    if attempt == STALE_ATTEMPTS:
                        actor.stale = True
                        raise StorageError("the household changed on another server while "
                                           "this change was stored; retry",
                                           document_id=actor.id) from stale
                    await self.registry.refresh(actor, check=False)
            if changed:
                await self._fan_out(actor)
                await self._maybe_snapshot(actor)
            return result

    async def _follow_up(self, actor: HouseholdActor, edit: Callable[[Household], Any],
                         caused_by: str, what: str) -> None:
        """A server change that follows a device's batch (caused by ``caused_by``), made
        while the batch's lock is held. The batch is already stored: a failure here is
        logged, not sent back."""
        try:
            await self._server_change(actor, edit, Author("server", caused_by),
                                      writer=SERVER_AUTHOR)
        except StorageError:  # _commit logged the cause
            log.warning("household %s: %s was not stored (the batch itself is)",
                        actor.id, what)
        except HouseholdStale:  # another instance committed meanwhile: from the log next
            actor.stale = True
            log.warning("household %s: %s was not stored (changed by another instance; "
                        "the batch itself is)", actor.id, what)
        except Exception:
            log.exception("household %s: %s failed", actor.id, what)

    async def _server_change(self, actor: HouseholdActor, edit: Callable[[Household], Any],
                             author: Author, *, writer: str) -> tuple[Any, bool]:
        """Fork, edit as the server, validate, commit (the caller holds the lock and
        answers). ``writer`` is whom the edit's attributions name: the server's own user
        for follow-ups, the supervisor who decided for an approval. Returns what ``edit``
        returned and whether anything changed."""
        fork = actor.doc.fork()
        fork.set_actor(self.server_actor)
        result, new = await cpu.offload(_edit_and_validate, actor, fork, edit,
                                        writer)
        if not new:
            return result, False
        await self._check_team(actor.record, actor.doc, fork)
        await self._commit(actor, fork, new, author, may_move=True)
        actor.objects.absorb(fork, new)
        return result, True

    # -- other instances -----------------------------------------------------------------

    async def changed_elsewhere(self, household_id: str, seq: int | None = None) -> None:
        """An instance (perhaps this one) committed changes to the household, up to
        ``seq`` (None: unknown). A copy held here that lacks them is marked behind; if
        sessions follow it, it is brought up to the log now and they are answered from
        it, so a teammate on another instance sees a live edit. A household not held
        here that sessions watch (the fast path found them up to date) is loaded for them."""
        actor = self.registry.resident(household_id)
        if actor is None:
            if self.registry.watched(household_id):
                try:
                    actor = await self.registry.get(household_id)  # read from the log now
                except DATABASE_ERRORS as exc:  # they hear of it at their next change
                    log.warning("household %s: could not load it for its watchers (%s)",
                                household_id, type(exc).__name__)
                    return
                if actor is not None:
                    async with actor.lock:
                        if actor.stale:
                            await self.registry.refresh(actor)
                        await self._fan_out(actor)
            return
        if self._own(actor, seq):
            return  # this instance's own commit
        if seq is not None and actor.lock.locked():
            # A batch of this instance may be committing this very change: PostgreSQL
            # can deliver the notification before the commit's own answer, and the
            # batch holds the lock until its commit is swapped in. Then the copy is seen
            # to hold it, and nothing is read again. (A commit whose caller never swapped
            # it in, cancelled at shutdown, leaves the copy behind: marked stale below.)
            async with actor.lock:
                pass
            if self._own(actor, seq):
                return
        actor.stale = True
        if not actor.subscribers and not self.registry.watched(household_id):
            return  # refreshed when it is next used
        async with actor.lock:
            if await self.registry.refresh(actor) or self.registry.watched(household_id):
                await self._fan_out(actor)

    @staticmethod
    def _own(actor: HouseholdActor, seq: int | None) -> bool:
        """The copy already holds the log up to ``seq`` (a commit of this process's)."""
        return seq is not None and actor.last_seq >= seq

    # -- the reconnect fast path -------------------------------------------------------------

    async def compare_heads(self, peer: Peer, msg: wire.Heads
                            ) -> tuple[wire.HeadsReply, dict[str, tuple[HouseholdRecord,
                                                                        list[bytes]]]]:
        """The answer to a device's ``vatra-heads`` (sync_server/protocol/fastpath.py): the
        households it holds as the log does are watched for it, not loaded; the ones
        that differ are listed, and the caller opens each (:meth:`open`, given what was
        read of it: its registry row and heads).

        Every household that may match is watched *before* its heads are read, so a
        change stored at any moment reaches the device: before the read, the heads
        differ and the household is opened; after it, the watch pushes it. Caseload
        households that were erased meanwhile (no heads) are listed as erased."""
        grants = _grants(peer)
        caseload, erased = await grants.caseload(), await grants.erased()
        named = [hid for hid, _ in msg.named]
        try:
            records = await self.store.heads(named)
            may_open = [hid for hid in named
                        if hid in records and await grants.may_sync(records[hid][0])]
            candidates = set(caseload) | set(may_open)
            self.registry.watch_all(candidates, peer)
            rows = await self.store.heads(candidates)
        except DATABASE_ERRORS as exc:
            self.registry.unwatch_all(list(peer.sync.watched), peer)
            raise StorageError("the server cannot reach its database; retry later") from exc
        result = fastpath.compare(fastpath.split_tags(msg.tags), msg.named, caseload,
                                  {hid: heads for hid, (_, heads) in rows.items()}, may_open)
        self.registry.unwatch_all(candidates - set(result.matched), peer)  # opened, or gone
        gone = sorted(set(caseload) - set(rows) - set(erased))
        reply = wire.HeadsReply(self.server_peer_id, peer.peer_id or "", result.same,
                                tuple(result.differ), tuple(sorted(set(erased) | set(gone))))
        return reply, {hid: rows[hid] for hid in result.differ}

    async def open(self, peer: Peer, household_id: str,
                   read: tuple[HouseholdRecord, list[bytes]] | None = None) -> None:
        """The fast path found the device's copy of the household other than the log's:
        the server speaks first, from a fresh sync state (its heads, and what it has),
        and the device answers. One it may no longer sync is ``doc-unavailable``.
        ``read``: its registry row and the log's heads, read a moment ago: a resident
        copy with those heads holds the whole log, and is not checked again."""
        check_document_id(household_id)
        _not_revoked(peer, household_id)
        try:
            record = read[0] if read is not None else await self._record(household_id)
            grants = _grants(peer)
            if record is not None and await grants.may_sync(record):
                actor = await self.registry.get(household_id)
                if actor is not None and await grants.may_sync(actor.record):
                    async with actor.lock:
                        current = read is not None and sorted(actor.doc.get_heads()) == read[1]
                        if actor.stale or not (peer.sync.syncing(actor.id) or current):
                            await self.registry.refresh(actor)
                        actor.subscribers.add(peer)
                        self._answer(actor, [peer])
                    return
        except DATABASE_ERRORS as exc:
            raise StorageError("the server cannot reach its database; retry later",
                               document_id=household_id) from exc
        self._unavailable(peer, household_id)

    # -- access follows the team ------------------------------------------------------------

    async def team_changed(self, household_id: str, peers: Iterable[Peer]) -> None:
        """A household's team changed (a commit here or on another server said so): every
        live session decides again whether it may sync it, on its user's caseload read
        anew; a session that may no longer is unsubscribed and its sync state dropped, so
        nothing more of the household reaches it (its tablet drops the household at its
        next sync, when the caseload no longer lists it)."""
        actor = self.registry.resident(household_id)
        record = actor.record if actor is not None else await self.store.household(household_id)
        if record is None:
            return
        team = await self.identity.team(household_id)
        for peer in peers:
            grants = peer.grants
            if grants is None or not grants.concerned(household_id, team):
                continue
            if not await grants.refresh(record, team):
                self.registry.unwatch(household_id, peer)
                if household_id in peer.sync.documents:
                    if actor is not None:
                        actor.subscribers.discard(peer)
                    peer.sync.reset(household_id)

    # -- answers, snapshots, records --------------------------------------------------------

    async def _bind(self, peer: Peer, household_id: str, actor_ids: frozenset[bytes]) -> None:
        """Bind the batch's new actor ids to the peer's device (a stock automerge-repo
        peer's random ones), or refuse the batch: one is another device's."""
        device = _device(peer)
        try:
            held = await self.identity.bind_actors(device, actor_ids, household_id=household_id)
        except IdentityError as err:
            raise Refused(f"{err.message}; nothing of this batch was merged", code=err.code,
                          document_id=household_id) from err
        current = _device(peer)  # (another household's bind may have run meanwhile)
        peer.device = replace(current, actor_ids=current.actor_ids | held)

    async def _fan_out(self, actor: HouseholdActor) -> None:
        """8. fan out: every subscribed peer, and every peer watching the household (it
        held the household as the log did at its reconnect), which is subscribed now if
        it may still sync it (its access is decided again, as a subscriber's is when its
        team changes)."""
        for peer in self.registry.take_watchers(actor.id):
            grants = peer.grants
            if grants is not None and not peer.revoked and await grants.may_sync(actor.record):
                actor.subscribers.add(peer)
        self._answer(actor, list(actor.subscribers))

    def _unavailable(self, peer: Peer, household_id: str) -> None:
        peer.send(wire.DocUnavailable(self.server_peer_id, peer.peer_id or "", household_id))

    def _answer(self, actor: HouseholdActor, targets: Sequence[Peer]) -> None:
        for target in targets:
            held = target.sync.held.get(actor.id)
            if held is not None:  # a peer with queued changes is answered from its fork
                held.merge(actor.doc)
            try:
                self._answer_from(actor.doc if held is None else held, actor.id, target)
            except DocumentError as err:  # that peer's session holds too many households:
                # it is not followed; the others, the writer included, are answered
                log.info("household %s: not followed by connection %s (%s)", actor.id,
                         getattr(target, "id", "?"), err.code)
                actor.subscribers.discard(target)

    def _answer_from(self, doc: Document, hid: str, target: Peer) -> None:
        m = doc.generate_sync_message(target.sync.state(hid))
        if m is not None:
            target.send(wire.Sync(self.server_peer_id, target.peer_id or "", hid, m.encode()))

    async def _maybe_snapshot(self, actor: HouseholdActor) -> None:
        """Compact when the changes since the last snapshot outweigh it (and a floor)."""
        if actor.bytes_since_snapshot <= max(actor.snapshot_bytes, SNAPSHOT_MIN_BYTES):
            return
        doc, last_seq = actor.doc, actor.last_seq  # the worker saves this one copy
        body, heads = await cpu.offload(_saved, doc)
        try:
            await self.store.save_snapshot(actor.id, body, heads, last_seq)
        except Exception:
            log.exception("household %s: snapshot failed (the change log is intact)", actor.id)
            return
        actor.snapshot_bytes = len(body)
        actor.bytes_since_snapshot = 0

    async def _keep(self, peer: Peer, msg: wire.Sync, err: VatraError) -> None:
        device = peer.device
        assert self.quarantine is not None
        try:
            await self.quarantine.keep(
                msg.document_id, msg.data, code=str(err.code), reason=err.message,
                device_id=device.id if device else None,
                user_id=device.user.id if device else None)
        except Exception:
            log.exception("household %s: could not quarantine refused data", msg.document_id)

    async def record(self, peer: Peer, kind: str, household_id: str | None = None,
                     **detail: Any) -> None:
        """An audit row about this peer's device (best effort: a failure is logged, the
        sync goes on)."""
        if self.audit is None or peer.device is None:
            return
        try:
            await self.audit.record(AuditEvent(kind, household_id, peer.device.user.id,
                                               peer.device.id, detail))
        except Exception:
            log.exception("audit: could not record %s", kind)


@dataclass(frozen=True)
class _Checked:
    """What applying and checking a batch found (:func:`_apply_and_check`)."""

    new: Sequence[Any]
    #: the prefixes and objects read from the batch's operations (None: read by a diff)
    read: tuple[set[Any], dict[Any, Any]] | None
    #: the batch touched the team or the change requests: its team is checked too
    team_touched: bool
    regressions: list[tuple[str, str, str]]
    approved: list[str]
    found: list[Any]
    #: actor ids of the batch not yet the device's: bound to it before the commit
    unbound: frozenset[bytes] = frozenset()
    #: a move concurrent with one the server had accepted won the tie-break: the
    #: accepted stage, to write back
    overtaken_stage: str | None = None


def _apply_and_check(actor: HouseholdActor, fork: Document, state: SyncState, data: bytes,
                     device: Device, may_write: bool, user: User) -> _Checked | None:
    """Stages 3 and 4 on ``fork``, without the database: apply the message, then every
    rule but the team's (:meth:`Synchronizer._check_team` asks the database). None when
    the message brought no change. Runs in a worker thread for a big message
    (:mod:`sync_server.sync.cpu`): it reads the household's committed copy and uses its
    object index, both under the household's lock its caller holds, and nothing else
    shared."""
    hid = actor.id
    before = actor.doc.get_heads()
    receive(fork, state, data, hid)
    new = fork.get_changes(before)
    if not new:
        return None
    check_encoding(before, new, fork, hid)
    started = time.perf_counter()
    check_writer(may_write, hid)
    unbound = unbound_actors(device, new)
    read = read_touched(actor, fork, new)
    touched = touched_prefixes(fork, before) if read is None else read[0]
    sections = None if touched is None else {p[0] for p in touched}
    check_schema(hid, fork, touched=touched)
    check_catalogue(hid, actor.doc, fork, sections)
    check_policy(actor.record, actor.doc, fork, user, sections)
    check_case(hid, actor.doc, fork, sections)
    check_attribution(hid, actor.doc, fork, user, sections, touched=touched)
    regressions = (lattice_fixes(fork, before, conflicts.batch_tips(new))
                   if sections is None or "service_plan" in sections else [])
    approved = (newly_approved(actor.doc, fork, hid)
                if user.role == "supervisor"
                and (sections is None or "change_requests" in sections) else [])
    # (a service's status has a domain merge policy instead: the lattice; an attachment's
    # parts are bytes, which a conflict record cannot hold, and only ever appended)
    found = [c for c in conflicts.detect(fork, before, new)
             if (c.path[:1] != ("service_plan",) or c.path[-1] != "status")
             and c.path[:1] != ("attachments",)]
    CHECK_SECONDS.observe(time.perf_counter() - started)
    lost = (case_rules.overtaken_stage(actor.doc, fork)
            if sections is None or bool(sections & set(case_rules.sections())) else None)
    return _Checked(new, read, sections is None or bool(sections & {"team", "change_requests"}),
                    regressions, approved, found, unbound, lost)


def _apply_new(doc: Document, state: SyncState, data: bytes, hid: str, device: Device,
               grants: Grants) -> tuple[HouseholdRecord, Sequence[Any]] | None:
    """A registration's message applied to an empty ``doc`` and checked, but for its team
    (:meth:`Synchronizer._check_team` asks the database): the household's registry record
    and its changes, or None when the message brought no change. In a worker thread for
    a big message (it touches ``doc``, new, and the peer's state for this id only)."""
    receive(doc, state, data, hid)
    new = doc.get_changes([])
    if not new:
        return None
    check_encoding([], new, doc, hid)
    violations = validate(doc)
    if violations:
        rules = "; ".join(f"{public_path(v.path)}: {v.rule}" for v in violations[:10])
        raise DocumentError(f"unknown household, and its changes do not form a valid "
                            f"household (schema v1): {rules}",
                            code=ErrorCode.NOT_A_HOUSEHOLD, document_id=hid)
    record = HouseholdRecord(hid, root_str(doc, "locality", hid), root_str(doc, "county", hid))
    if not grants.may_create(record.locality, record.county):
        raise Refused("this user may not register households in this locality",
                      code=ErrorCode.CREATION_REFUSED, document_id=hid)
    check_catalogue(hid, None, doc)
    check_decisions(record, Document(), doc, grants.user)
    check_case(hid, Document(), doc)
    check_attribution(hid, Document(), doc, grants.user)
    return record, new


def _saved(doc: Document) -> tuple[bytes, list[bytes]]:
    return doc.save(), doc.get_heads()


def _edit_and_validate(actor: HouseholdActor, fork: Document, edit: Callable[[Household], Any],
                       writer: str) -> tuple[Any, Sequence[Any]]:
    """A server change on ``fork``: what ``edit`` returned and the changes it made, the
    result validated in full (schema v1). In a worker thread for a big household."""
    before = actor.doc.get_heads()
    result = edit(Household(fork, actor.id, author=writer))
    new = fork.get_changes(before)
    if new:
        check_schema(actor.id, fork)
    return result, new


class _resetting:
    """Within it, a refusal or a failed commit resets the peer's sync state for the
    household first: the fork, and everything in it, is dropped."""

    def __init__(self, peer: Peer, household_id: str) -> None:
        self.peer, self.household_id = peer, household_id

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> Literal[False]:
        if kind is not None and issubclass(kind, (DocumentError, Refused, StorageError)):
            self.peer.sync.reset(self.household_id)
        return False


def _not_revoked(peer: Peer, household_id: str) -> None:
    if peer.revoked:
        raise Refused("this device was revoked; nothing of this batch was stored",
                      code=ErrorCode.DEVICE_REVOKED, document_id=household_id)


def _device(peer: Peer) -> Device:
    if peer.device is None:  # the session handshake sets it before any sync message
        raise DocumentError("no authenticated device on this connection",
                            code=ErrorCode.HANDSHAKE_REQUIRED)
    return peer.device


def _grants(peer: Peer) -> Grants:
    if peer.grants is None:
        raise DocumentError("no authenticated device on this connection",
                            code=ErrorCode.HANDSHAKE_REQUIRED)
    return peer.grants


def _author(device: Device) -> Author:
    return Author(device.id, device.user.id)
