"""Paths into a household that stay true while its lists change.

A recorded conflict names the field it is about by a path from the root. A map key is
its own identity, but a list position is not: when two workers append to the activity
feed while offline, the merge puts one entry after the other, and "entry 7" at one
device's heads is another entry at the server's. So a path that passes through a list
names the element by its identity, ``"counter@actor"`` (Automerge's notation for the
id of the operation that created the object, the actor in hex), never by its position.
An ``int`` segment under a list is a position, read at the heads it was taken at; a
``str`` segment under a list is an element id.

The functions here read a document through the Automerge binding only; the server's
conflict detection and the household API's resolution both use them, so what the
server records is what a tablet resolves.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from automerge.core import ROOT, Document, ObjType

from .schema import ELEMENT_ID

__all__ = ["ELEMENT_ID", "element_id", "exid_op", "field_at", "is_element_id", "stable_path"]

Segment = str | int
Heads = list[bytes] | None



def is_element_id(segment: object) -> bool:
    return isinstance(segment, str) and ELEMENT_ID.fullmatch(segment) is not None


def exid_op(exid: bytes) -> tuple[bytes, int] | None:
    """The (actor, counter) of an object id as the Python binding returns it (a tag byte,
    the actor's length, the actor, then the actor's index in this document and the
    counter as unsigned LEB128). ``None`` for the root or bytes of another shape."""
    try:
        if len(exid) < 2:  # the root
            return None
        size = exid[1]
        actor = exid[2:2 + size]
        if len(actor) != size:
            return None
        pos = 2 + size
        _, pos = _uleb(exid, pos)  # the actor's index: this document's, not the id's
        counter, pos = _uleb(exid, pos)
        return (actor, counter) if pos == len(exid) else None
    except IndexError:
        return None


def _uleb(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise IndexError("LEB128 number too long")


def element_id(exid: bytes) -> str | None:
    """The stable id (``"counter@actorhex"``) of the object ``exid`` names."""
    op = exid_op(exid)
    return None if op is None else f"{op[1]}@{op[0].hex()}"


def _child(doc: Document, obj: Any, segment: Segment, heads: Heads) -> Any | None:
    """The object under ``obj`` at ``segment`` (a key, a position, or an element id)."""
    if isinstance(segment, str) and doc.object_type(obj) == ObjType.List:
        if not is_element_id(segment):
            return None
        for value, exid in doc.values(obj, heads):
            if isinstance(value, ObjType) and element_id(exid) == segment:
                return exid
        return None
    got = doc.get(obj, segment, heads)
    if got is None or not isinstance(got[0], ObjType):
        return None
    return got[1]


def field_at(doc: Document, path: Sequence[Segment], heads: Heads = None
             ) -> tuple[Any, Segment] | None:
    """The object holding the field ``path`` names, and the field's key in it, following
    the path at ``heads`` (the current heads when ``None``). ``None`` when a step is
    missing there. The object id is this document's and the same at any heads, so a
    caller reads the same field at other heads with ``doc.get(obj, key, heads)``."""
    if not path:
        return None
    obj: Any = ROOT
    for segment in path[:-1]:
        obj = _child(doc, obj, segment, heads)
        if obj is None:
            return None
    return obj, path[-1]


def stable_path(doc: Document, path: Sequence[Segment], heads: Heads = None
                ) -> tuple[Segment, ...] | None:
    """``path`` (positions read at ``heads``) with every list position replaced by the id
    of the element found there; ``None`` when a step is missing."""
    out: list[Segment] = []
    obj: Any = ROOT
    for segment in path[:-1]:
        child = _child(doc, obj, segment, heads)
        if child is None:
            return None
        if doc.object_type(obj) == ObjType.List:
            ident = element_id(child)
            if ident is None:
                return None
            out.append(ident)
        else:
            out.append(segment)
        obj = child
    out.append(path[-1])
    return tuple(out)
