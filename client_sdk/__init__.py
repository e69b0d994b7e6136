"""Vatra's reference device client.

A :class:`Replica` is the device's caseload on disk; edits go through the
typed :class:`conflict.Household` API and work offline. :class:`SyncClient`
uploads and downloads the whole caseload in one session. ``RepoTransport``
lets a stock ``automerge.repo.Repo`` talk to a Vatra server.
"""

from ._errors import (
    HouseholdNotFound,
    ReplicaError,
    ServerRejected,
    SyncFailed,
    SyncStalled,
    VatraClientError,
)
from ._replica import Replica
from ._sync import SyncClient, SyncSummary
from ._transport import RepoTransport

__all__ = [
    "HouseholdNotFound",
    "Replica",
    "ReplicaError",
    "RepoTransport",
    "ServerRejected",
    "SyncClient",
    "SyncFailed",
    "SyncStalled",
    "SyncSummary",
    "VatraClientError",
]
