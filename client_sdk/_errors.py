"""Errors of the client SDK.

    VatraClientError
    ├── ReplicaError          the local replica is missing, unreadable or inconsistent
    │   ├── HouseholdNotFound this replica holds no such household
    │   ├── NotEnrolled       the replica has no device enrollment yet
    │   └── WrongPin          the PIN does not open this replica (nothing was read)
    ├── ServerRejected        the server answered ``error`` (``code`` is a sync_server ErrorCode)
    │   └── ServerUnavailable a code that says "retry later" (retried by SyncClient)
    ├── SyncStalled           a household's exchange went on without converging (a bug, reported)
    └── SyncFailed            the server could not be reached after every retry
"""

from __future__ import annotations


class VatraClientError(Exception):
    """Root of every error the SDK raises on purpose."""


class ReplicaError(VatraClientError):
    pass


class HouseholdNotFound(ReplicaError, KeyError):
    def __init__(self, household_id: str) -> None:
        super().__init__(f"household {household_id} is not in this replica")
        self.household_id = household_id

    def __str__(self) -> str:
        return str(self.args[0])


class NotEnrolled(ReplicaError):
    """Syncing needs an enrolled device: ``await client_sdk.enroll(replica, url, code)``."""


class ServerRejected(VatraClientError):
    def __init__(self, code: str, message: str, document_id: str | None = None) -> None:
        super().__init__(f"server rejected ({code}): {message}")
        self.code = code
        self.message = message
        self.document_id = document_id


#: Codes that say the server could not serve now, not that the request was wrong: a sync
#: refused with one of them is retried with backoff (storage-failure: its database did not
#: answer; server-shutting-down: it is restarting).
RETRYABLE_CODES = frozenset({"storage-failure", "server-shutting-down"})


class ServerUnavailable(ServerRejected):
    """The server refused the whole session with a retryable code: it cannot serve now."""


class SyncFailed(VatraClientError):
    def __init__(self, attempts: int, last: BaseException | None) -> None:
        super().__init__(f"sync failed after {attempts} attempt(s): {last!r}")
        self.attempts = attempts
        self.last = last


class SyncStalled(VatraClientError):
    """The server kept answering for one household without the two sides converging.

    A healthy exchange takes a handful of rounds; this stops a runaway loop instead of
    spinning forever, and says which household to look at.
    """

    def __init__(self, household_id: str, rounds: int) -> None:
        super().__init__(f"household {household_id} did not converge after {rounds} rounds")
        self.household_id = household_id
        self.rounds = rounds
