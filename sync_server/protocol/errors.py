"""Errors Vatra reports, and how they cross the wire.

Every error that reaches a device or an operator is a :class:`VatraError`
carrying a stable :class:`ErrorCode`. The code names the rule that was broken;
the message says what happened in words, and never contains household
content (names, answers, addresses) so that errors can be logged.

Every error the server raises on purpose derives from :class:`VatraError` (the SDK's
derive from ``client_sdk.VatraClientError``). The tree, with where each lives::

    VatraError
    ├── ProtocolError        the peer broke the wire protocol (bad CBOR, unknown type,
    │   │                    oversized frame)
    │   └── SessionError     the handshake failed or a sealed frame was refused (protocol/session.py)
    ├── DocumentError        a sync for a household failed (unknown, malformed Automerge
    │   │                    bytes, invalid); the connection is closed
    │   └── FormatError      bytes that are not Automerge's format (protocol/preflight.py)
    ├── Refused              a rule refused one batch (read-only, foreign actor id,
    │                        creation); the connection stays open
    ├── StorageError         a write did not happen (database, erased meanwhile); retry
    │   └── StoreClosed      the store is closing (store/contract.py)
    ├── UnknownHousehold     no household under this id (store/contract.py)
    ├── HouseholdErased      the household's data key is destroyed (store/contract.py)
    ├── HouseholdIdTaken     a creation named a registered id (store/contract.py)
    ├── KeyRingError         a master or data key is missing or does not open (store/keys.py)
    │   ├── MasterKeyError   the master key is missing, malformed or does not match
    │   ├── MissingDataKey   a registered household has no data key row
    │   └── DecryptionError  a wrapped key or sealed blob did not authenticate
    ├── IdentityError        a user, device or enrollment was refused (auth/identity.py)
    ├── HttpAuthError        a signed HTTP request was refused (protocol/http_auth.py)
    ├── NoReadScope          the user's role reads no household content (projection/readmodel.py)
    └── ConfigError          a setting or a key file is unusable (config.py, auth/identity.py)

``to_wire()`` returns the fields of the automerge-repo ``error`` message;
internal details (stack traces, SQL) never leave the server.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum


class ErrorCode(StrEnum):
    """Stable, documented error codes. Never renumber or rename: clients match on them."""

    MALFORMED_MESSAGE = "malformed-message"
    UNKNOWN_MESSAGE_TYPE = "unknown-message-type"
    FRAME_TOO_LARGE = "frame-too-large"
    HANDSHAKE_REQUIRED = "handshake-required"
    INVALID_DOCUMENT_ID = "invalid-document-id"
    MALFORMED_SYNC_DATA = "malformed-sync-data"
    NOT_A_HOUSEHOLD = "not-a-household"
    OUTBOX_OVERFLOW = "outbox-overflow"
    STORAGE_FAILURE = "storage-failure"
    SERVER_SHUTTING_DOWN = "server-shutting-down"
    INTERNAL_ERROR = "internal-error"
    HANDSHAKE_FAILED = "handshake-failed"
    FRAME_TRUNCATED = "frame-truncated"
    FRAME_REPLAYED = "frame-replayed"
    FRAME_REORDERED = "frame-reordered"
    FRAME_FORGED = "frame-forged"
    ENROLLMENT_REFUSED = "enrollment-refused"
    TOO_MANY_ATTEMPTS = "too-many-attempts"
    INVALID_ROLE = "invalid-role"
    INVALID_USER_ID = "invalid-user-id"
    UNKNOWN_USER = "unknown-user"
    USER_EXISTS = "user-exists"
    USER_DISABLED = "user-disabled"
    INVALID_LOCALITY = "invalid-locality"
    READ_ONLY = "read-only"
    ACTOR_NOT_REGISTERED = "actor-not-registered"
    CREATION_REFUSED = "creation-refused"
    DEVICE_REVOKED = "device-revoked"
    RATE_LIMITED = "rate-limited"
    SCHEMA_VIOLATION = "schema-violation"
    PROTECTED_PATH = "protected-path"
    DECISION_FIELD = "decision-field"
    TOO_MANY_SESSIONS = "too-many-sessions"
    LIMIT_EXCEEDED = "limit-exceeded"
    FORGED_ATTRIBUTION = "forged-attribution"
    INVALID_TEAM_MEMBER = "invalid-team-member"
    STAGE_TRANSITION = "stage-transition"
    # -- the HTTP faces (sync_server/api): a refused request names one of these
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not-found"
    STATUS_ENUM = "status-enum"
    LEVEL_ENUM = "level-enum"
    LEVEL_OUTSIDE_SCOPE = "level-outside-scope"
    CODE_REQUIRED = "code-required"
    COUNTY_FORMAT = "county-format"
    LOCALITY_FORMAT = "locality-format"
    CODE_FORMAT = "code-format"
    PAGE_RANGE = "page-range"
    PER_PAGE_RANGE = "per-page-range"
    Q_LENGTH = "q-length"
    STAGE_ENUM = "stage-enum"
    DEADLINE_ENUM = "deadline-enum"
    DUE_BEFORE_FORMAT = "due-before-format"
    REASSESSMENT_DUE_BEFORE_FORMAT = "reassessment-due-before-format"
    AFTER_FORMAT = "after-format"
    SORT_ENUM = "sort-enum"
    KIND_ENUM = "kind-enum"
    ACCESSIBILITY_ENUM = "accessibility-enum"
    LIMIT_RANGE = "limit-range"
    NO_LOCATION = "no-location"
    VULNERABILITY_ENUM = "vulnerability-enum"
    OVERDUE_SERVICE_ENUM = "overdue-service-enum"
    WORKER_FORMAT = "worker-format"
    CELL_RANGE = "cell-range"
    EXPORT_BUSY = "export-busy"
    OVERDUE_ENUM = "overdue-enum"
    CODE_ENUM = "code-enum"
    A_FORMAT = "a-format"
    B_FORMAT = "b-format"
    # -- a decision the household no longer allows (409): the household model's rule
    MISSING = "missing"
    DECIDED = "decided"
    TRANSITION = "transition"
    REFERENCE = "reference"
    TYPE = "type"
    ENUM = "enum"
    FORMAT = "format"
    UNKNOWN_FIELD = "unknown-field"
    SCHEMA_VERSION = "schema-version"
    # -- operating the server
    INVALID_SETTING = "invalid-setting"
    MASTER_KEY = "master-key"


#: The rule behind each refusal of the sync path, in words: what ``vatra quarantine show``
#: prints for a refused batch, and what docs/protocol.md's table says. Every code the
#: server quarantines has one (``tests/test_quarantine_functional.py``).
RULES: Mapping[ErrorCode, str] = {
    ErrorCode.MALFORMED_SYNC_DATA: "the sync data is not a valid Automerge sync message, or "
                                   "holds a change Automerge would not save as it was sent",
    ErrorCode.LIMIT_EXCEEDED: "the message is over a documented limit (changes, operations, "
                              "inflated bytes, hashes, Bloom filter parameters, held changes)",
    ErrorCode.NOT_A_HOUSEHOLD: "a household the server does not know is registered by its "
                               "first sync, whose changes must form a valid household",
    ErrorCode.READ_ONLY: "a national user's device reads households and changes none",
    ErrorCode.ACTOR_NOT_REGISTERED: "every change must carry an actor id of the device that "
                                    "sends it: registered at enrollment, or first seen on "
                                    "its session and held by no other device",
    ErrorCode.CREATION_REFUSED: "a worker registers households only in her own localities",
    ErrorCode.SCHEMA_VIOLATION: "the merged household must keep schema v1 and the indicator "
                                "catalogue",
    ErrorCode.PROTECTED_PATH: "once a household is active, its members, their presence, its "
                              "team and its status change only by an approved change request; "
                              "its locality and county never by a device",
    ErrorCode.FORGED_ATTRIBUTION: "who wrote an entry (activity, assessment, delivery, "
                                  "request, decision, resolution) names the user of the "
                                  "device that signed the session, and when is not in the "
                                  "future",
    ErrorCode.INVALID_TEAM_MEMBER: "a household's team (who may sync it) names workers of "
                                   "its locality only, the worker who registers it "
                                   "included; a change_team request too",
    ErrorCode.DECISION_FIELD: "only a supervisor of the household's county decides a change "
                              "request or cancels a service; a filed request is not altered",
    ErrorCode.STAGE_TRANSITION: "a case opens at identification and moves only along the "
                                "case rule table's transitions, each move recorded in its "
                                "history; its rule version, identification time and history "
                                "are not rewritten",
}


class VatraError(Exception):
    """Root of every error Vatra raises on purpose."""

    code: ErrorCode = ErrorCode.MALFORMED_MESSAGE

    def __init__(self, message: str, *, code: ErrorCode | None = None,
                 document_id: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.document_id = document_id

    def to_wire(self) -> dict[str, str]:
        """The public part of this error: code and message, nothing internal."""
        wire = {"code": str(self.code), "message": self.message}
        if self.document_id is not None:
            wire["documentId"] = self.document_id
        return wire


class ProtocolError(VatraError):
    """The peer sent something the protocol does not allow; the connection is closed."""


class DocumentError(VatraError):
    """A sync for one household could not be applied; nothing of it merged."""

    code = ErrorCode.MALFORMED_SYNC_DATA


class Refused(VatraError):
    """A rule refused one batch; nothing of it merged. The connection stays open."""


class StorageError(VatraError):
    """Persisting changes failed; nothing was advertised, the device will resend."""

    code = ErrorCode.STORAGE_FAILURE


class ConfigError(VatraError):
    """A setting or a key file is unusable; the command that needs it stops and says why."""

    code = ErrorCode.INVALID_SETTING
