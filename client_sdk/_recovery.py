"""Recovering a household whose batch the server refused for good.

The server refuses a device's whole batch for a household when it changes a
protected path (``protected-path``), writes a request's decision
(``decision-field``), breaks schema v1 or the indicator catalogue
(``schema-violation``) or misattributes an entry (``forged-attribution``: a
"when" beyond the allowed clock skew, for an honest client). Re-sending
the same changes would be refused forever, so :class:`~client_sdk.SyncClient`
rebuilds the household instead: it downloads the server's copy and re-applies
on it, as new changes of this device, every local edit that is allowed.

The comparison is three-way, at the value level. ``local`` is the device's own
view: its changes the server lacks, with their ancestors (not the server changes
received in the refused session, which could hide its values behind a tie-break);
``base`` is the same without its own changes (what its edits started from); the
target is the server's copy. A path counts
as a local edit where ``local`` differs from ``base``, so a teammate's newer
value on the server is never overwritten with a stale local one. Per path:

* scalars: the local value is written where it differs from the server's;
* Text (notes, a service's note): the local edits are replayed as splices
  on the server's text (three-way, so a teammate's concurrent edits stay);
* ``activity`` and ``case_history`` (append-only lists): local entries the server
  copy lacks are appended;
* entries that exist only locally (assessments, services, requests) are
  copied whole; a new request is copied as filed (``pending``, no decision);
* a protected path (:func:`conflict.policy.protection_for`, while the
  household is not in registration) is not written: it is filed as the change
  request that makes it (``add_member``, ``remove_member``,
  ``change_presence``, ``change_team``, ``close_household``,
  ``reopen_household``, ``move_household``; reason :data:`REFILE_REASON`), or dropped if no
  request kind does;
* decision fields, and any edit of a request already filed, are dropped.

The result is then checked the way the server checks it (schema v1, the
catalogue, the protected paths, decision and cancel rules, attribution, the case's
stage moves); an edit a check still refuses
(say, a value breaking the schema, or answers about a member whose addition
became a request) is dropped, and the rest re-applied. :class:`Recovery`
reports counts and paths, never values.
"""

from __future__ import annotations

import difflib
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from automerge.core import ROOT, Document, ObjType, ScalarType

from conflict import Household, answers, case, format_path, paths, policy, validate
from conflict.validate import Path

__all__ = ["RECOVERABLE_CODES", "REFILE_REASON", "Recovery", "rebase"]

RECOVERABLE_CODES: frozenset[str] = frozenset({"protected-path", "decision-field",
                                               "schema-violation", "forged-attribution",
                                               "stage-transition"})
"""Refusals of a batch's content: the same bytes would be refused forever."""

REFILE_REASON = "re-filed after the server refused a direct edit"

_MAX_PASSES = 8
_WHOLE: frozenset[Path] = frozenset({("gps",)})  # replaced as a whole, never mixed
_APPEND_ONLY: frozenset[Path] = frozenset({("activity",), ("case_history",)})


@dataclass
class Recovery:
    """How one refused household was recovered (paths only, never values).

    ``reapplied``: local values written again on the server's copy;
    ``refiled``: protected paths filed as change requests (ids in
    ``request_ids``); ``dropped``: local edits that could not be kept;
    ``uploaded``: the server accepted the re-applied changes in the same sync.
    """

    household_id: str
    code: str
    reapplied: int = 0
    refiled: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    request_ids: list[str] = field(default_factory=list)
    uploaded: bool = False


class _Text(str):
    """A Text object's content (to tell it from a Str scalar)."""


class _Skip(Exception):
    """An edit that cannot be applied to the target document."""


@dataclass
class _Op:
    kind: str           # put | delete | text | append | request
    path: Path          # where it writes (for requests: the protected path)
    value: Any = None   # put/append: plain tree; text: (base, local); request: (kind, payload)
    where: Path = ()    # set when applied: what it actually touched
    also: Path = ()     # an appended entry's place by position (the schema's refusals name
                        # list entries so; the policy's by element id, as ``where``)


# --- reading ---------------------------------------------------------------------------


def _plain(doc: Document, entry: Any) -> Any:
    """A comparable, writable copy of an entry: ``(ScalarType, value)`` for a scalar,
    dict / list / :class:`_Text` for objects."""
    head, obj = entry
    if isinstance(head, ObjType):
        if head == ObjType.Text:
            return _Text(doc.text(obj))
        if head == ObjType.List:
            return [_plain(doc, e) for e in doc.values(obj)]
        return {k: _plain(doc, e) for k, e in zip(doc.keys(obj), doc.values(obj), strict=True)}
    return head


def _regresses(server: Any, local: Any) -> bool:
    """Would writing service status ``local`` over ``server`` move it down the lattice?"""
    rank = policy.SERVICE_STATUS_RANK
    a, b = _scalar(server), _scalar(local)
    return a in rank and b in rank and rank[b] < rank[a]


def _get(doc: Document, obj: Any, key: str) -> Any:
    return None if obj is None else doc.get(obj, key)


def _is(entry: Any, kind: ObjType) -> bool:
    return entry is not None and isinstance(entry[0], ObjType) and entry[0] == kind


def _scalar(value: Any) -> Any:
    """The Python value of a plain scalar."""
    return value[1] if isinstance(value, tuple) else value


def _key(plain: Any) -> Any:
    """A hashable form of a plain tree (activity entries are counted as a multiset)."""
    if isinstance(plain, dict):
        return tuple(sorted((k, _key(v)) for k, v in plain.items()))
    if isinstance(plain, list):
        return tuple(_key(v) for v in plain)
    if isinstance(plain, tuple):
        return (str(plain[0]), plain[1])
    return ("text", str(plain))


# --- the three-way walk --------------------------------------------------------------------


class _Planner:
    def __init__(self, base: Document, local: Document, server: Document) -> None:
        self.base, self.local, self.server = base, local, server
        status = server.get(ROOT, "status")
        self.protected = policy.is_protected_status(
            None if status is None or isinstance(status[0], ObjType) else status[0][1])
        self.ops: list[_Op] = []
        self.dropped: list[Path] = []

    def plan(self) -> list[_Op]:
        self._map((), ROOT, ROOT, ROOT)
        return self.ops

    def _map(self, path: Path, b: Any, lo: Any, s: Any) -> None:
        local_keys = list(self.local.keys(lo))
        seen = set(local_keys)
        base_keys = [k for k in (self.base.keys(b) if b is not None else []) if k not in seen]
        for key in [*local_keys, *base_keys]:
            p = (*path, key)
            le, be, se = (_get(self.local, lo, key), _get(self.base, b, key),
                          _get(self.server, s, key))
            if p in _APPEND_ONLY:
                self._append_only(p, le, se)
                continue
            lv = None if le is None else _plain(self.local, le)
            bv = None if be is None else _plain(self.base, be)
            if lv == bv:
                continue  # not edited on this device
            sv = None if se is None else _plain(self.server, se)
            self._edit(p, le, be, se, lv, bv, sv)

    def _edit(self, p: Path, le: Any, be: Any, se: Any, lv: Any, bv: Any, sv: Any) -> None:
        request = len(p) >= 2 and p[0] == "change_requests"
        if request and be is not None:
            self.dropped.append(p)  # a filed request is immutable; decisions are the server's
            return
        protection = policy.protection_for(p)
        if protection is not None and not (self.protected or protection.always):
            protection = None
        adds_or_removes = (le is None) != (se is None)
        if protection is not None and (protection.compare == "value" or adds_or_removes):
            self._refile(p, lv, bv, sv)
            return
        if lv is None:  # deleted on this device
            if sv is not None and sv == bv:
                self.ops.append(_Op("delete", p))
            return
        if be is not None and se is None:
            self.dropped.append(p)  # edited here, deleted on the server: not revived
            return
        if len(p) == 3 and p[0] == "service_plan" and p[2] == "status" and _regresses(sv, lv):
            self.dropped.append(p)  # a status never moves down (the server would restore it)
            return
        if p not in _WHOLE:
            if _is(le, ObjType.Map) and _is(se, ObjType.Map) and not (request and be is None):
                self._map(p, be[1] if _is(be, ObjType.Map) else None, le[1], se[1])
                return
            if _is(le, ObjType.Text) and _is(se, ObjType.Text):
                base_text = str(bv) if isinstance(bv, _Text) else ""
                if str(sv) != str(lv):
                    self.ops.append(_Op("text", p, (base_text, str(lv))))
                return
        if request and len(p) == 2 and isinstance(lv, dict):
            lv = self._as_filed(p, lv)
        if lv != sv:
            self.ops.append(_Op("put", p, lv))

    def _as_filed(self, p: Path, request: dict[str, Any]) -> dict[str, Any]:
        """A new local request as a worker may file it: pending, no decision."""
        out = {k: v for k, v in request.items() if k not in policy.DECISION_FIELDS}
        for k in policy.DECISION_FIELDS[1:]:
            if k in request:
                self.dropped.append((*p, k))
        if _scalar(request.get("status")) != "pending":
            self.dropped.append((*p, "status"))
        out["status"] = (ScalarType.Str, "pending")
        return out

    def _append_only(self, p: Path, le: Any, se: Any) -> None:
        if not _is(le, ObjType.List):
            return
        have = Counter(_key(e) for e in (_plain(self.server, se) if _is(se, ObjType.List) else []))
        for entry in _plain(self.local, le):
            k = _key(entry)
            if have[k] > 0:
                have[k] -= 1
            else:
                self.ops.append(_Op("append", p, entry))

    def _refile(self, p: Path, lv: Any, bv: Any, sv: Any) -> None:
        """A protected edit becomes the change request that makes it, if one does."""
        request: tuple[str, dict[str, Any]] | None = None
        if p[0] == "members" and len(p) == 2:
            if isinstance(lv, dict) and sv is None and bv is None:
                payload = {k: _scalar(v) for k, v in lv.items() if isinstance(v, tuple)}
                request = ("add_member", {**payload, "person_id": p[1]})
            elif lv is None and sv is not None:
                request = ("remove_member", {"person_id": p[1]})
        elif p[0] == "members" and len(p) == 3 and isinstance(lv, tuple):
            if sv != lv:
                request = ("change_presence", {"person_id": p[1], "presence": _scalar(lv)})
            else:
                return  # the server already holds this value
        elif p[0] == "team" and len(p) == 2:
            if sv == lv:
                return
            request = ("change_team", {str(p[1]): "" if lv is None else _scalar(lv)})
        elif p[0] in policy.PLACE_FIELDS and len(p) == 1 and isinstance(lv, tuple):
            if sv == lv or any(op.path[:1] == ("locality",) and op.kind == "request"
                               and op.value[0] == "move_household" for op in self.ops):
                return  # unchanged, or one move request already carries both fields
            place = {}
            for key in policy.PLACE_FIELDS:
                got = _get(self.local, ROOT, key)
                place[key] = _scalar(got[0]) if got is not None else None
            request = ("move_household", place)
            p = ("locality",)
        elif p == ("status",) and isinstance(lv, tuple):
            transition = (_scalar(sv), _scalar(lv))
            kinds = [k for k, tr in policy.STATUS_REQUESTS.items() if tr == transition]
            if transition[0] == transition[1]:
                return
            if kinds:
                request = (kinds[0], {})
        if request is None:
            self.dropped.append(p)
        else:
            self.ops.append(_Op("request", p, request))


# --- writing ---------------------------------------------------------------------------


def _resolve(tx: Any, path: Path) -> Any:
    obj = ROOT
    for seg in path:
        got = tx.get(obj, seg)
        if not _is(got, ObjType.Map):
            raise _Skip
        obj = got[1]
    return obj


def _write(tx: Any, parent: Any, key: Any, value: Any, insert: bool = False) -> None:
    def obj(kind: ObjType) -> Any:
        return tx.insert_object(parent, key, kind) if insert else tx.put_object(parent, key, kind)

    if isinstance(value, _Text):
        text = obj(ObjType.Text)
        if value:
            tx.splice_text(text, 0, 0, str(value))
    elif isinstance(value, dict):
        m = obj(ObjType.Map)
        for k, v in value.items():
            _write(tx, m, k, v)
    elif isinstance(value, list):
        lst = obj(ObjType.List)
        for i, v in enumerate(value):
            _write(tx, lst, i, v, insert=True)
    elif insert:
        tx.insert(parent, key, value[0], value[1])
    else:
        tx.put(parent, key, value[0], value[1])


def _splice_three_way(tx: Any, text: Any, base: str, local: str) -> None:
    """Replay the edits ``base -> local`` on the target's current text."""
    current = tx.text(text)
    if current == base:
        edits = [(0, len(base), local)] if base != local else []
        # one minimal splice: the common prefix and suffix stay
        if edits:
            p = 0
            while p < min(len(base), len(local)) and base[p] == local[p]:
                p += 1
            q = 0
            while (q < min(len(base), len(local)) - p
                   and base[len(base) - 1 - q] == local[len(local) - 1 - q]):
                q += 1
            edits = [(p, len(base) - q, local[p:len(local) - q])]
        mapped = edits
    else:
        to_target = difflib.SequenceMatcher(None, base, current, autojunk=False).get_opcodes()

        def at(i: int, end: bool) -> int:
            for tag, i1, i2, j1, j2 in to_target:
                if tag == "equal" and i1 <= i <= i2:
                    return j1 + (i - i1)
                if i1 <= i < i2 or (i == i2 and tag != "equal" and end):
                    return j2 if end else j1
            return len(current)

        ops = difflib.SequenceMatcher(None, base, local, autojunk=False).get_opcodes()
        mapped = [(at(i1, False), max(at(i1, False), at(i2, True)), local[j1:j2])
                  for tag, i1, i2, j1, j2 in ops if tag != "equal"]
    for start, end, insert in reversed(mapped):
        tx.splice_text(text, start, end - start, insert)


def _apply(doc: Document, household_id: str, ops: list[_Op], user_id: str) -> list[_Op]:
    """Apply ``ops`` to ``doc`` (values in one change, each request in its own); returns
    the ops that could not be applied."""
    failed: list[_Op] = []
    values = [op for op in ops if op.kind != "request"]
    if values:
        with doc.transaction() as tx:
            for op in values:
                try:
                    if op.kind == "append":
                        section = str(op.path[0])
                        lst = tx.get(ROOT, section)
                        if lst is None and section == "case_history":  # an older household
                            lst = (ObjType.List, tx.put_object(ROOT, section, ObjType.List))
                        if lst is None or not _is(lst, ObjType.List):
                            raise _Skip
                        n = tx.length(lst[1])
                        _write(tx, lst[1], n, op.value, insert=True)
                        got = tx.get(lst[1], n)
                        ident = paths.element_id(got[1]) if got is not None else None
                        # the policy names a list entry by its element id, the schema by
                        # its position: a refusal in either form finds the op
                        op.where = (section, ident if ident is not None else n)
                        op.also = (section, n)
                        continue
                    parent = _resolve(tx, op.path[:-1])
                    key = op.path[-1]
                    op.where = op.path
                    if op.kind == "delete":
                        if tx.get(parent, key) is not None:
                            tx.delete(parent, key)
                    elif op.kind == "text":
                        got = tx.get(parent, key)
                        if got is None or not _is(got, ObjType.Text):
                            raise _Skip
                        _splice_three_way(tx, got[1], *op.value)
                    else:
                        _write(tx, parent, key, op.value)
                except Exception:  # _Skip, or a value the target cannot take
                    failed.append(op)
    h = Household(doc, household_id, author=user_id)
    pending = {(r["kind"], tuple(sorted((r["payload"] or {}).items())))
               for r in h.change_requests() if r["status"] == "pending"}
    for op in ops:
        if op.kind != "request":
            continue
        kind, payload = op.value
        if (kind, tuple(sorted(payload.items()))) in pending:
            op.where = op.path
            op.value = (kind, payload, None)  # already filed and pending: nothing to add
            continue
        try:
            rid = h.request_change(kind, payload, REFILE_REASON)
        except (ValueError, KeyError):
            failed.append(op)
            continue
        op.where = ("change_requests", rid)
        op.value = (kind, payload, rid)
    return failed


def _prune(value: Any, rel: Path) -> bool:
    """Remove the part at ``rel`` (not empty) of a copied tree; False if there is none."""
    if not rel or not isinstance(value, dict | list):
        return False
    for seg in rel[:-1]:
        in_dict = isinstance(value, dict) and seg in value
        in_list = isinstance(value, list) and isinstance(seg, int) and 0 <= seg < len(value)
        if not (in_dict or in_list):
            return False
        value = value[seg]  # type: ignore[index]  # a dict key or a list index: checked
    last = rel[-1]
    if isinstance(value, dict) and last in value:
        del value[last]
        return True
    return False


def _related(a: Path, b: Path) -> bool:
    n = min(len(a), len(b))
    return tuple(a[:n]) == tuple(b[:n])


def _refusals(server: Document, result: Document, role: str | None,
              user_id: str) -> list[Path]:
    """Paths the server would refuse in ``result`` (its own checks, run here)."""
    same = role in policy.DECIDER_ROLES  # a supervisor syncs only their own county
    out = [v.path for v in validate(result)]
    out += [v.path for v in answers.catalogue_violations(server, result)]
    out += [v.path for v in policy.attribution_violations(server, result, user_id,
                                                          datetime.now(UTC))]
    if role is None or role == "worker":
        out += [v.path for v in policy.protected_violations(server, result)]
    out += [v.path for v in policy.decision_violations(server, result, role, same)]
    out += [v.path for v in policy.cancel_violations(server, result, role, same)]
    out += [v.path for v in case.case_violations(server, result)]
    return out


def _device_views(local: Document, server: Document) -> tuple[Document, Document]:
    """What this device's unaccepted edits started from, and what it wrote on it.

    The refused copy can also hold server changes received in the same session, which
    the device never saw when it edited; merged in, they could hide its values behind
    Automerge's tie-break (a concurrent ``in_progress`` shadowing its ``delivered``).
    So both views are cut from the history: ``mine`` is the device's own changes (those
    the server lacks) with their ancestors, ``base`` the same without the own changes.
    """
    changes = local.get_changes([])  # causal order
    known = {c.hash for c in server.get_changes([])}
    own = {c.hash for c in changes if c.hash not in known}
    deps = {c.hash: c.deps for c in changes}
    ancestors: set[bytes] = set()
    stack = list(own)
    while stack:
        h = stack.pop()
        if h not in ancestors:
            ancestors.add(h)
            stack.extend(deps.get(h, ()))

    def load(hashes: set[bytes]) -> Document:
        picked = [c.bytes for c in changes if c.hash in hashes]
        return Document.load(b"".join(picked)) if picked else Document()

    return load(ancestors - own), load(ancestors)


def rebase(local: Document, server: Document, household_id: str, *, actor_id: bytes,
           user_id: str, role: str | None, code: str) -> tuple[Document, Recovery]:
    """The server's copy with this device's allowed edits of ``local`` re-applied as new
    changes by ``actor_id``; and what was re-applied, re-filed or dropped."""
    base, mine = _device_views(local, server)
    planner = _Planner(base, mine, server)
    ops = planner.plan()
    dropped = list(planner.dropped)
    result = server
    for _ in range(_MAX_PASSES):
        result = server.fork()
        result.set_actor(actor_id)
        failed = _apply(result, household_id, ops, user_id)
        refused = _refusals(server, result, role, user_id)
        if not failed and not refused:
            break
        bad = {id(op) for op in failed}
        for path in refused:
            hits = [op for op in ops if (op.where and _related(op.where, path))
                    or (op.also and _related(op.also, path))]
            if not hits:  # refused for a reason no single edit explains: keep nothing
                bad = {id(op) for op in ops}
                break
            for op in hits:
                if op.kind == "put" and _prune(op.value, path[len(op.where):]):
                    dropped.append(path)  # only that part of a copied entry
                else:
                    bad.add(id(op))
        dropped += [op.path for op in ops if id(op) in bad]
        ops = [op for op in ops if id(op) not in bad]
        for op in ops:
            op.where = op.also = ()
            if op.kind == "request":
                op.value = op.value[:2]
    else:
        result = server.fork()
        result.set_actor(actor_id)
        dropped += [op.path for op in ops]
        ops = []
    recovery = Recovery(household_id, code)
    for op in ops:
        if op.kind == "request":
            recovery.refiled.append(format_path(op.path))
            if op.value[2] is not None:
                recovery.request_ids.append(op.value[2])
        else:
            recovery.reapplied += 1
    recovery.dropped = sorted({format_path(p) for p in dropped})
    return result, recovery
