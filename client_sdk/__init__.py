"""Vatra's reference device client.

A :class:`Replica` is the device's caseload on disk; edits go through the
typed :class:`conflict.Household` API and work offline. :func:`enroll` makes
it a device of one user (once, with an admin's one-time code). :class:`SyncClient`
uploads and downloads the whole caseload in one session (``on_progress``: n of m
households, bytes so far), or stays connected (:meth:`SyncClient.live`,
:class:`LiveSync`: the server's pushes merged as they come, reconnecting with backoff
and jitter); returning devices compare heads first (the reconnect fast path,
docs/protocol.md), so unchanged households cost 16 bytes each. A household whose
batch the server refuses for its content is rebuilt on the server's copy with
the allowed local edits re-applied (:class:`Recovery`, ``SyncSummary.recovered``).
:func:`fetch_directory` keeps a read-only copy of the county's directory of services
for offline referrals (:meth:`Replica.nearest_providers`). ``RepoTransport`` lets a
stock ``automerge.repo.Repo`` talk to a Vatra server.
"""

from ._credentials import Credentials
from ._directory import fetch_directory
from ._enroll import enroll
from ._errors import (
    HouseholdNotFound,
    NotEnrolled,
    ReplicaError,
    ServerRejected,
    ServerUnavailable,
    SyncFailed,
    SyncStalled,
    VatraClientError,
)
from ._recovery import Recovery
from ._replica import Replica
from ._supervisor import SupervisorClient
from ._sync import LiveSync, Progress, SyncClient, SyncSummary
from ._transport import RepoTransport
from ._vault import WrongPin

__all__ = [
    "Credentials",
    "HouseholdNotFound",
    "LiveSync",
    "NotEnrolled",
    "Progress",
    "Recovery",
    "Replica",
    "ReplicaError",
    "RepoTransport",
    "ServerRejected",
    "ServerUnavailable",
    "SupervisorClient",
    "SyncClient",
    "SyncFailed",
    "SyncStalled",
    "SyncSummary",
    "VatraClientError",
    "WrongPin",
    "enroll",
    "fetch_directory",
]
