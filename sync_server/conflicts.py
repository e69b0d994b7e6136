"""Same-field conflicts: two devices wrote different values to one field concurrently.

Automerge converges by itself (one value wins everywhere), but such a
conflict must not be silent. Three-way: the server's heads before the merge,
the device's new heads (the tips of its batch), and the merged document. A
batch with no concurrency — every head of the merged document is a tip of
the batch — pays one set comparison and nothing more. Otherwise Automerge's
patches from the server's state to the merged one mark each field that now
holds concurrent values (``conflict: true``, or a ``Conflict`` action when the
server's value still wins); for each, the value at the server's heads and the
value at the device's tips are compared, and different scalars are a
conflict, recorded by the server under ``conflicts``.
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


def _scalar_at(doc: Document, path: Sequence[str | int], heads: list[bytes]) -> tuple[bool, Any]:
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
    """Same-field conflicts the batch ``new`` created against ``server_heads``."""
    tips = batch_tips(new)
    if set(merged.get_heads()) <= set(tips):
        return []  # the device had everything the server had: no concurrency
    found: list[Detected] = []
    for patch in merged.diff(server_heads, merged.get_heads()):
        text = repr(patch)
        if "conflict: true" not in text and "action: Conflict" not in text:
            continue
        parsed = _parse(text)
        if parsed is None or parsed[2] is None:
            continue
        steps, _, key, _ = parsed
        path = (*steps, key)
        has_server, server_value = _scalar_at(merged, path, server_heads)
        has_device, device_value = _scalar_at(merged, path, tips)
        if has_server and has_device and server_value != device_value:
            found.append(Detected(path, server_value, device_value))
    return found
