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

from automerge.core import ROOT, Document, ObjType

from .touched import _parse


@dataclass(frozen=True, slots=True)
class Detected:
    path: tuple[str | int, ...]
    server_value: Any
    device_value: Any


def batch_tips(new: Sequence[Any]) -> list[bytes]:
    """The heads of a batch: its changes that no other change of the batch depends on."""
    deps = {d for c in new for d in c.deps}
    return [c.hash for c in new if c.hash not in deps]


def scalar_at(doc: Document, path: Sequence[str | int], heads: list[bytes]) -> tuple[bool, Any]:
    obj = ROOT
    for seg in path[:-1]:
        got = doc.get(obj, seg, heads)
        if got is None or not isinstance(got[0], ObjType):
            return False, None
        obj = got[1]
    got = doc.get(obj, path[-1], heads)
    if got is None or isinstance(got[0], ObjType):
        return False, None
    return True, got[0][1]


def detect(merged: Document, server_heads: list[bytes], new: Sequence[Any]) -> list[Detected]:
    """Same-field conflicts the batch ``new`` created against ``server_heads``.

    Three-way: the batch's base (its dependencies outside the batch), its tips, and the
    server's heads before the merge. A field is in conflict when the batch set it, the
    server's value differs from the base's (the server changed it concurrently), and
    the batch's value differs from the server's."""
    tips = batch_tips(new)
    if set(merged.get_heads()) <= set(tips):
        return []  # the device had everything the server had: no concurrency
    in_batch = {c.hash for c in new}
    base = sorted({d for c in new for d in c.deps if d not in in_batch})
    if not base:
        return []
    found: list[Detected] = []
    seen: set[tuple[str | int, ...]] = set()
    for patch in merged.diff(base, tips):  # what the batch itself changed
        parsed = _parse(repr(patch))
        if parsed is None or parsed[1] != "PutMap" or parsed[2] is None:
            continue
        steps, _, key, _ = parsed
        path = (*steps, key)
        if path in seen:
            continue
        seen.add(path)
        has_device, device_value = scalar_at(merged, path, tips)
        has_server, server_value = scalar_at(merged, path, server_heads)
        if not (has_device and has_server) or device_value == server_value:
            continue
        has_base, base_value = scalar_at(merged, path, base)
        if not has_base or base_value != server_value:
            found.append(Detected(path, server_value, device_value))
    return found
