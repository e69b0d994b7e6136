"""Which parts of a household a batch touched, from Automerge's patches.

Validating only the touched parts keeps the cost of a batch proportional to
the batch, not to the household's history (the activity feed of an old
household has hundreds of entries). The Python binding's ``Patch`` exposes
no fields, only its ``repr`` (stable for the pinned ``automerge`` version):
this module reads the path and the action's key or index from it. Anything it
does not recognise makes :func:`touched_prefixes` return ``None``, and the
caller validates the whole document: the fast path may only ever skip work,
never a check.
"""

from __future__ import annotations

import re

from automerge.core import Document

_OBJ = re.compile(r'Root|Id\(\d+, ActorID\("[0-9a-f]*"\), \d+\)')
_STEP = re.compile(r'Map\("([^"\\]*)"\)|Seq\((\d+)\)')  # keys with escapes: not parsed
_ACTION = re.compile(
    r'\], action: (\w+) \{ (?:key: "([^"\\]*)"|index: (\d+)|prop: Map\("([^"\\]*)"\))?')

Prefix = tuple[str | int, ...]


def _parse(text: str) -> tuple[list[str | int], str, str | None, int | None] | None:
    """(path steps, action, key, index) of one patch's repr, or None if not understood.

    Strings are only accepted without escapes: a key holding a quote or a backslash
    (never a schema field or an id) sends the whole batch to full validation."""
    start = text.find(", path: [")
    if start < 0:
        return None
    pos = start + len(", path: [")
    steps: list[str | int] = []
    while pos < len(text) and text[pos] == "(":
        obj = _OBJ.match(text, pos + 1)
        if obj is None or not text.startswith(", ", obj.end()):
            return None
        step = _STEP.match(text, obj.end() + 2)
        if step is None or not text.startswith(")", step.end()):
            return None
        steps.append(step.group(1) if step.group(1) is not None else int(step.group(2)))
        pos = step.end() + 1
        if text.startswith(", ", pos):
            pos += 2
    action = _ACTION.match(text, pos)
    if action is None:
        return None
    index = action.group(3)
    key = action.group(2) if action.group(2) is not None else action.group(4)
    return steps, action.group(1), key, int(index) if index is not None else None


def touched_prefixes(doc: Document, before: list[bytes]) -> set[Prefix] | None:
    """The (section,) or (section, key-or-index) prefixes changed since ``before``,
    or ``None`` when a patch is not understood (then validate everything)."""
    out: set[Prefix] = set()
    for patch in doc.diff(before, doc.get_heads()):
        parsed = _parse(repr(patch))
        if parsed is None:
            return None
        steps, action, key, index = parsed
        if len(steps) >= 2:
            out.add((steps[0], steps[1]))
        elif not steps:  # a root field was put or deleted
            if key is None:
                return None
            out.add((key,))
        elif action in ("PutMap", "Conflict") and key is not None:
            out.add((steps[0], key))
        elif action == "Insert" and index is not None:
            out.add((steps[0], index))
        else:  # deletions, text splices, anything else: the whole section
            out.add((steps[0],))
            if steps[0] == "members" and action == "DeleteMap":
                out.update({("service_plan",), ("assessments",)})  # references to it
    return out
