"""``vatra quarantine list`` and ``vatra quarantine show ID``: what was refused, from whom, why.

``list`` prints one line per refused batch (newest first): id, when, household,
device, user, rule. ``show`` prints one row's details, the rule it was refused by
in words, and what its sealed sync message holds: each change's hash, actor (and
whether that actor belongs to the sending device) and sequence number, read from
the message itself (never applied to the household, whatever happened to it
since) — enough to review the refusal without printing household content. The
raw bytes stay in the database, sealed, for a deeper look with the same tools.
"""

from __future__ import annotations

import argparse
import sys

from automerge.core import Document, SyncState

from sync_server.auth.identity import IdentityStore
from sync_server.cli.common import open_store
from sync_server.config import Settings
from sync_server.protocol.errors import RULES, DocumentError, ErrorCode
from sync_server.protocol.preflight import DEFAULT_LIMITS, ChangeHeader, Limits, read_sync_message
from sync_server.store.keys import KeyRingError, load_keyring
from sync_server.store.quarantine import Quarantine
from sync_server.sync.apply import receive


def add_quarantine_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    q = sub.add_parser("quarantine", help="refused sync data kept for review")
    qsub = q.add_subparsers(dest="action", required=True)
    listing = qsub.add_parser("list", help="the latest refused batches")
    listing.add_argument("--limit", type=int, default=50)
    show = qsub.add_parser("show", help="one refused batch")
    show.add_argument("id", type=int)


def changes_in(data: bytes, limits: Limits = DEFAULT_LIMITS) -> list[ChangeHeader]:
    """The changes a refused sync message carries, read from its bytes, bounded first as
    the server bounds it (a refused input may be built to exhaust whoever reads it).
    A whole-document chunk (a device's first message for a household the server lacks)
    is complete in itself: it is read into an empty document. Raises DocumentError when
    the bytes are over a limit or malformed."""
    contents = read_sync_message(data, limits)
    changes = list(contents.changes)
    if contents.documents:
        doc = Document()
        receive(doc, SyncState(), data, "quarantine")
        known = {c.hash for c in changes}
        changes += [ChangeHeader(bytes(c.hash), bytes(c.actor_id), c.seq, tuple(c.deps))
                    for c in doc.get_changes([]) if bytes(c.hash) not in known]
    return changes


def rule_of(code: str) -> str:
    try:
        return RULES.get(ErrorCode(code), "(no description: report this)")
    except ValueError:
        return "(a code this version does not know)"


async def run_quarantine(settings: Settings, args: argparse.Namespace) -> int:
    try:
        keyring = load_keyring(settings)
    except KeyRingError as err:
        print(f"vatra: {err}", file=sys.stderr)
        return 1
    async with open_store(settings, keyring) as store:
        quarantine = Quarantine(store)
        if args.action == "list":
            rows = await quarantine.list(args.limit)
            if not rows:
                print("the quarantine is empty")
            for r in rows:
                print(f"{r.id:>6}  {r.received_at:%Y-%m-%d %H:%M:%S}  {r.document_id}  "
                      f"device={r.device_id or '-'}  user={r.user_id or '-'}  rule={r.code}")
            return 0
        rows = [r for r in await quarantine.list(10_000) if r.id == args.id]
        if not rows:
            print(f"no quarantined batch {args.id}")
            return 1
        r = rows[0]
        print(f"id:         {r.id}\nreceived:   {r.received_at:%Y-%m-%d %H:%M:%S %Z}\n"
              f"household:  {r.document_id}{'' if r.household_id else ' (not registered)'}\n"
              f"device:     {r.device_id or '-'}\nuser:       {r.user_id or '-'}\n"
              f"rule:       {r.code}: {rule_of(r.code)}\nreason:     {r.reason}")
        data = await quarantine.open(r.id)
        try:
            changes = changes_in(data, settings.limits)
        except DocumentError as err:
            print(f"content:    {len(data)} bytes, not read: {err.message}")
            return 0
        device = await IdentityStore(store.engine).device(r.device_id) if r.device_id else None
        print(f"content:    {len(data)} bytes, {len(changes)} change(s)")
        for c in changes:
            own = "" if device is None else (
                " (this device's actor)" if c.actor in device.actor_ids else
                " (NOT this device's actor)")
            print(f"  change {c.hash.hex()[:16]}  actor {c.actor.hex()}{own}  seq {c.seq}")
    return 0
