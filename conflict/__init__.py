"""Vatra's shared household model: schema, validation and a typed API.

Used by both the sync server (to enforce) and the client SDK (to edit):

* :mod:`conflict.ids` — household ids (automerge-repo document ids) and
  entity ids (UUIDs).
* :mod:`conflict.schema` — schema version 1 of the household document, as
  data (its module docstring shows the layout).
* :mod:`conflict.validate` — :func:`validate` reports every violation.
* :mod:`conflict.household` — :class:`Household`, typed single-change edits,
  the policy guard (``ProtectedPathError``) and change requests.
* :mod:`conflict.policy` — the permission and merge policy as data (protected
  paths, decision fields, service status lattice) and the checks the server
  runs on two documents. Import its names from the submodule.
"""

from .household import (
    SERVER_AUTHOR,
    AuthorRequired,
    Household,
    InvalidValueError,
    UnknownEntityError,
    ValueTooLarge,
    utc_instant,
)
from .ids import is_entity_id, is_household_id, new_entity_id, new_household_id
from .schema import (
    HOUSEHOLD_STATUSES,
    PRESENCES,
    REQUEST_KINDS,
    REQUEST_STATUSES,
    SCHEMA_VERSION,
    SERVICE_STATUSES,
    SEXES,
    TEAM_ROLES,
)
from .validate import Rule, Violation, format_path, validate

__all__ = [
    "HOUSEHOLD_STATUSES",
    "PRESENCES",
    "REQUEST_KINDS",
    "REQUEST_STATUSES",
    "SCHEMA_VERSION",
    "SERVER_AUTHOR",
    "SERVICE_STATUSES",
    "SEXES",
    "TEAM_ROLES",
    "AuthorRequired",
    "Household",
    "InvalidValueError",
    "Rule",
    "UnknownEntityError",
    "ValueTooLarge",
    "Violation",
    "format_path",
    "is_entity_id",
    "is_household_id",
    "new_entity_id",
    "new_household_id",
    "utc_instant",
    "validate",
]
