"""Same-field conflicts: two devices wrote different values to one field concurrently.

Automerge converges by itself (one value wins everywhere), but such a
conflict must not be silent. Three-way: the server's heads before the merge,
the device's new heads (the tips of its batch), and the merged document. A
batch with no concurrency — every head of the merged document is a tip of
the batch — pays one set comparison and nothing more. Otherwise the fields
the batch set are read from Automerge's patches between the batch's base
and its tips, and each is compared at three points: the base, the server's
heads before the merge, and the batch's tips. (Automerge's own conflict
markers in patches are not enough: a third concurrent value that does not
change the winner produces no patch at all.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from automerge.core import Document, ObjType

from conflict.paths import exid_op, field_at, stable_path
from sync_server.sync.touched import _parse


@dataclass(frozen=True, slots=True)
class Detected:
    path: tuple[str | int, ...]
    server_value: Any
    device_value: Any
    #: the change that wrote the server's value (to tell who wrote it), if found
    server_change: bytes | None = None


def op_change(exid: bytes, changes: Sequence[Any]) -> bytes | None:
    """The hash of the change among ``changes`` holding the operation ``exid`` (an
    Automerge object or value id as the Python binding returns it)."""
    op = exid_op(exid)
    if op is None:
        return None
    actor, counter = op
    for c in changes:
        if c.actor_id == actor and c.start_op <= counter <= c.max_op:
            return bytes(c.hash)
    return None


def batch_tips(new: Sequence[Any]) -> list[bytes]:
    """The heads of a batch: its changes that no other change of the batch depends on."""
    deps = {d for c in new for d in c.deps}
    return [c.hash for c in new if c.hash not in deps]


def scalar_at(doc: Document, path: Sequence[str | int], heads: list[bytes]) -> tuple[bool, Any]:
    """The scalar at ``path`` (list elements by position or id) at ``heads``."""
    field = field_at(doc, path, heads)
    if field is None:
        return False, None
    found, value, _ = _scalar(doc, field, heads)
    return found, value


Field = tuple[bytes, str | int]  # the object holding a field (this document's id), its key


def _scalar(doc: Document, field: Field, heads: list[bytes]) -> tuple[bool, Any, bytes | None]:
    """(found, value, the id of the operation that wrote it) of ``field`` at ``heads``:
    not found when the object did not exist there (an element appended concurrently)."""
    got = doc.get(field[0], field[1], heads)
    if got is None or isinstance(got[0], ObjType):
        return False, None, None
    return True, got[0][1], got[1]


def _put_path(patch: Any) -> tuple[str | int, ...] | None:
    """The field a PutMap patch sets (list elements by position), or None for any other
    patch."""
    parsed = _parse(repr(patch))
    if parsed is None or parsed[1] != "PutMap" or parsed[2] is None:
        return None
    steps, _, key, _ = parsed
    assert key is not None  # checked above
    return (*steps, key)


def _fields_set(doc: Document, since: list[bytes], until: list[bytes]
                ) -> list[tuple[Field, tuple[str | int, ...]]]:
    """The fields the changes between ``since`` and ``until`` set, each as (field, its
    path with list positions at ``until``)."""
    out = []
    for patch in doc.diff(since, until):
        path = _put_path(patch)
        if path is None:
            continue
        field = field_at(doc, path, until)
        if field is not None:
            out.append((field, path))
    return out


def _writers(doc: Document, changes: Sequence[Any]) -> dict[Field, list[bytes]]:
    """For each field ``changes`` set, the changes that set it (in ``changes``' order), each
    read against its own dependencies (so a write that later lost a tie-break counts)."""
    out: dict[Field, list[bytes]] = {}
    for c in changes:
        for field, _ in _fields_set(doc, list(c.deps), [c.hash]):
            out.setdefault(field, []).append(bytes(c.hash))
    return out


def detect(merged: Document, server_heads: list[bytes], new: Sequence[Any]) -> list[Detected]:
    """Same-field conflicts the batch ``new`` created against ``server_heads``.

    Three-way: the batch's base (its dependencies outside the batch), its tips, and the
    server's heads before the merge. A field is in conflict when the batch set it, the
    server changed it concurrently (its value differs from the base's, or a change the
    server had and the device had not set it), and the batch's value differs from the
    value that concurrent write left: the server's current value if the device had not
    seen it, or else (the concurrent write lost a tie-break to the value the device saw
    and replaced) the value the concurrent write set. The value the device saw is never
    one side of a conflict: replacing it was deliberate.

    A field is known by the object that holds it, never by a position: an element the
    device appended to a list did not exist at the server's heads, so concurrent appends
    are never a conflict, and a conflict inside a list element names the element by its
    id (:mod:`conflict.paths`)."""
    tips = batch_tips(new)
    if set(merged.get_heads()) <= set(tips):
        return []  # the device had everything the server had: no concurrency
    in_batch = {c.hash for c in new}
    base = sorted({d for c in new for d in c.deps if d not in in_batch})
    if not base:
        return []
    found: list[Detected] = []
    seen: set[Field] = set()
    concurrent: list[Any] | None = None  # changes since the base, read on the first need
    server_written: dict[Field, list[bytes]] | None = None
    for field, path in _fields_set(merged, base, tips):  # what the batch itself changed
        if field in seen:
            continue
        seen.add(field)
        has_device, device_value, _ = _scalar(merged, field, tips)
        has_server, server_value, server_op = _scalar(merged, field, server_heads)
        if not (has_device and has_server) or device_value == server_value:
            continue
        if concurrent is None:
            concurrent = merged.get_changes(base)
        has_base, base_value, _ = _scalar(merged, field, base)
        if has_base and base_value == server_value:
            # The server's winner is the value the device saw and replaced: no conflict
            # with it. A server-side write concurrent with the batch may still have lost
            # the tie-break to it: that write, and the value it wrote, is the conflict.
            if server_written is None:
                server_written = _writers(merged, [c for c in concurrent
                                                   if c.hash not in in_batch])
            if field not in server_written:
                continue
            last = server_written[field][-1]
            _, server_value, _ = _scalar(merged, field, [last])
            if server_value == device_value:
                continue
            writer: bytes | None = last
        else:
            writer = None
            if server_op:  # the winner, found among the writes since the base (or, rarely,
                # an older one a concurrent deletion uncovered) in the whole history
                writer = (op_change(server_op, concurrent)
                          or op_change(server_op, merged.get_changes([])))
        stable = stable_path(merged, path, tips)
        if stable is None:
            continue
        found.append(Detected(stable, server_value, device_value, writer))
    return found
