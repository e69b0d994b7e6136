"""Identifiers used in household documents.

* A **household id** is an automerge-repo document id: 16 random bytes,
  bs58check-encoded (e.g. ``"3xRyv5VA2upvSTGwn1qBvDqifXQr"``). It is the
  document's sync id and is *not* stored inside the document.
* An **entity id** (person, assessment, service, change request, conflict) is
  a client-generated random UUID in canonical lowercase hyphenated form.
  New ids are UUID4; UUID7 ids (time-ordered) are accepted as well, so a
  client may switch to them without a schema change.
"""

from __future__ import annotations

import os
import uuid

from automerge._automerge import DocumentId  # type: ignore[attr-defined]  # not in the stub

__all__ = ["is_entity_id", "is_household_id", "new_entity_id", "new_household_id"]

_ENTITY_UUID_VERSIONS = frozenset({4, 7})


def new_household_id() -> str:
    """Return a fresh household id (automerge-repo document id, bs58check)."""
    return str(DocumentId.from_bytes(os.urandom(16)).to_string())


def is_household_id(s: object) -> bool:
    """True if ``s`` is a household id in canonical bs58check form.

    The UUID spelling that automerge-repo also parses is rejected: Vatra
    spells every household id one way, so ids compare as plain strings.
    """
    if not isinstance(s, str) or not s:
        return False
    try:
        return bool(DocumentId.from_string(s).to_string() == s)
    except Exception:
        return False


def new_entity_id() -> str:
    """Return a fresh entity id (a UUID4 string)."""
    return str(uuid.uuid4())


def is_entity_id(s: object) -> bool:
    """True if ``s`` is a canonical lowercase UUID4 or UUID7 string."""
    if not isinstance(s, str) or len(s) != 36:
        return False
    try:
        u = uuid.UUID(s)
    except ValueError:
        return False
    return str(u) == s and u.version in _ENTITY_UUID_VERSIONS
