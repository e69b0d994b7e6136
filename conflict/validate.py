"""Validate a household document against schema version 1.

:func:`validate` walks the document with ``keys()``/``values()`` (never
``automerge.core.extract``) and returns *every* violation it finds, each with
the path to the offending value and a stable rule name:

==================  ==========================================================
``missing``         a required field is absent
``type``            wrong Automerge type (scalar vs. object, Str vs. F64, ...)
``enum``            a string outside its enumeration
``format``          a malformed value (date, instant, id, code, range, ...)
``unknown-field``   a key the schema does not define
``reference``       an id that must name a member names none
``schema-version``  ``schema`` is an integer other than 1; nothing else is
                    checked, since the layout of another version is unknown
==================  ==========================================================

Messages name the path and the rule only, never a field's value: personal
data must stay out of logs and error replies.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from automerge.core import ROOT, Document, ObjType, ScalarType

from . import schema as s

__all__ = ["Rule", "Violation", "format_path", "validate"]


class Rule(enum.StrEnum):
    """Stable rule names; a ``Rule`` compares equal to its string value."""

    MISSING = "missing"
    TYPE = "type"
    ENUM = "enum"
    FORMAT = "format"
    UNKNOWN_FIELD = "unknown-field"
    REFERENCE = "reference"
    SCHEMA_VERSION = "schema-version"


Path = tuple[str | int, ...]


@dataclass(frozen=True)
class Violation:
    """One schema violation: where, which rule, and a value-free message."""

    path: Path
    rule: str
    message: str


def format_path(path: Path) -> str:
    """``("members", "ab..", "sex")`` -> ``"members.ab...sex"``; ``()`` -> ``"<root>"``."""
    return ".".join(f"[{p}]" if isinstance(p, int) else p for p in path) or "<root>"


# Automerge's ScalarType is not hashable: tuples, matched by equality.
_ACCEPTED: dict[s.Kind, tuple[ScalarType, ...]] = {
    s.Kind.STR: (ScalarType.Str,),
    s.Kind.BYTES: (ScalarType.Bytes,),
    s.Kind.INT: (ScalarType.Int, ScalarType.Uint),
    s.Kind.NUMBER: (ScalarType.F64, ScalarType.Int, ScalarType.Uint),
    s.Kind.BOOL: (ScalarType.Boolean,),
    s.Kind.SCALAR: (
        ScalarType.Str,
        ScalarType.Int,
        ScalarType.Uint,
        ScalarType.F64,
        ScalarType.Boolean,
    ),
    s.Kind.SCALAR_OR_NULL: (
        ScalarType.Str,
        ScalarType.Int,
        ScalarType.Uint,
        ScalarType.F64,
        ScalarType.Boolean,
        ScalarType.Null,
    ),
    s.Kind.SEGMENT: (ScalarType.Str, ScalarType.Int, ScalarType.Uint),
}

_CONTAINER: dict[type, tuple[ObjType, str]] = {
    s.Record: (ObjType.Map, "a map"),
    s.MapOf: (ObjType.Map, "a map"),
    s.ListOf: (ObjType.List, "a list"),
    s.Text: (ObjType.Text, "a text"),
}

_DESCRIBE = {
    Rule.MISSING: "required field is missing",
    Rule.TYPE: "value has the wrong type",
    Rule.ENUM: "value is not in the enumeration",
    Rule.FORMAT: "value is malformed",
    Rule.UNKNOWN_FIELD: "field is not part of the schema",
    Rule.REFERENCE: "id does not name a household member",
    Rule.SCHEMA_VERSION: "unsupported schema version",
}

# An entry as returned by doc.get() or one item of doc.values():
# (ObjType, obj_id) for an object, ((ScalarType, value), id) for a scalar.
Entry = tuple[Any, Any]


def _is_object(entry: Entry) -> bool:
    return isinstance(entry[0], ObjType)


class _Walker:
    def __init__(self, doc: Document) -> None:
        self.doc = doc
        self.out: list[Violation] = []
        self.members: frozenset[str] = frozenset()
        self._lengths: dict[bytes, int] = {}

    def length(self, obj: bytes) -> int:
        """A list's length, read once per walk (the binding's ``length`` of a long list
        costs ~90 µs, and a batch of appends walks one prefix per element)."""
        if obj not in self._lengths:
            self._lengths[obj] = self.doc.length(obj)
        return self._lengths[obj]

    def report(self, path: Path, rule: Rule, detail: str = "") -> None:
        message = f"{format_path(path)}: {rule.value}: {_DESCRIBE[rule]}{detail}"
        self.out.append(Violation(path, rule.value, message))

    def items(self, obj: bytes) -> list[tuple[str, Entry]]:
        return list(zip(self.doc.keys(obj), self.doc.values(obj), strict=True))

    def check_container(self, spec: s.Spec, entry: Entry, path: Path) -> bool:
        want, name = _CONTAINER[type(spec)]
        if not _is_object(entry) or entry[0] != want:
            self.report(path, Rule.TYPE, f" (expected {name})")
            return False
        return True

    def check(self, spec: s.Spec, entry: Entry, path: Path) -> None:
        if isinstance(spec, s.Scalar):
            self.check_scalar(spec, entry, path)
        elif not self.check_container(spec, entry, path):
            return
        elif isinstance(spec, s.Record):
            self.check_record(spec, entry[1], path)
        elif isinstance(spec, s.MapOf):
            for key, child in self.items(entry[1]):
                self.check_key(spec, key, (*path, key))
                self.check(spec.values, child, (*path, key))
        elif isinstance(spec, s.ListOf):
            for i, child in enumerate(self.doc.values(entry[1])):
                self.check(spec.items, child, (*path, i))

    def check_scalar(self, spec: s.Scalar, entry: Entry, path: Path) -> None:
        if _is_object(entry):
            self.report(path, Rule.TYPE, f" (expected a {spec.kind.value} scalar)")
            return
        stype, value = entry[0]
        if stype not in _ACCEPTED[spec.kind]:
            self.report(path, Rule.TYPE, f" (expected a {spec.kind.value} scalar)")
            return
        rule = s.check_scalar(spec, value)
        if rule is not None:
            detail = ""
            if rule == Rule.ENUM and spec.enum is not None:
                detail = f" (allowed: {', '.join(spec.enum)})"
            elif rule == Rule.FORMAT and spec.format is not None:
                detail = f" (expected {spec.format})"
            self.report(path, Rule(rule), detail)
        elif spec.ref == "members" and value not in self.members:
            self.report(path, Rule.REFERENCE)

    def check_key(self, spec: s.MapOf, key: str, path: Path) -> None:
        if spec.key_format is not None and not s.FORMATS[spec.key_format](key):
            self.report(path, Rule.FORMAT, f" (key must be {spec.key_format})")
        elif spec.key_ref == "members" and key not in self.members:
            self.report(path, Rule.REFERENCE)

    def check_record(self, spec: s.Record, obj: bytes, path: Path) -> None:
        present = self.items(obj)
        seen = set()
        for key, child in present:
            seen.add(key)
            field = spec.fields.get(key)
            if field is None:
                self.report((*path, key), Rule.UNKNOWN_FIELD)
            else:
                self.check(field, child, (*path, key))
        for key, field in spec.fields.items():
            if key not in seen and field.required:
                self.report((*path, key), Rule.MISSING)
        self.check_conditional(spec, obj, path, seen)

    def check_conditional(self, spec: s.Record, obj: bytes, path: Path, seen: set[str]) -> None:
        """Cross-field rules: a delivered service records when and by whom."""
        if spec is s.SERVICE:
            status = self.doc.get(obj, "status")
            if status is not None and status[0] == (ScalarType.Str, "delivered"):
                for key in ("delivered_at", "delivered_by"):
                    if key not in seen:
                        self.report((*path, key), Rule.MISSING, " (status is delivered)")


def validate(doc: Document, only: Sequence[str | int] = ()) -> list[Violation]:
    """Return every schema violation in ``doc`` (an empty list if it is valid).

    ``only`` restricts the check to the subtree at that path prefix, e.g.
    ``validate(doc, only=("members", person_id))``; the schema version is
    always checked, and member references inside the subtree are resolved
    against the whole document. A prefix the schema does not define raises
    ``ValueError``. Note that removing a member can break references outside
    the member's subtree: a caller validating only touched paths must also
    validate ``("service_plan",)`` and ``("assessments",)`` when ``members``
    lose keys.
    """
    return validate_paths(doc, [only] if only else [])


def validate_paths(doc: Document, prefixes: Sequence[Sequence[str | int]]) -> list[Violation]:
    """:func:`validate` for several path prefixes in one pass (the schema version and
    the member ids are read once); no prefixes = the whole document. Raises
    ``ValueError`` for a prefix the schema does not define."""
    walker = _Walker(doc)

    version = doc.get(ROOT, "schema")
    if version is not None and not isinstance(version[0], ObjType):
        stype, value = version[0]
        if stype in _ACCEPTED[s.Kind.INT] and value != s.SCHEMA_VERSION:
            walker.report(("schema",), Rule.SCHEMA_VERSION)
            return walker.out

    if prefixes:
        # A full walk checks the root "schema" field itself; a prefix walk
        # does not reach it, so report a missing or mistyped version here.
        if version is None:
            walker.report(("schema",), Rule.MISSING)
        elif isinstance(version[0], ObjType) or version[0][0] not in _ACCEPTED[s.Kind.INT]:
            walker.report(("schema",), Rule.TYPE)

    members = doc.get(ROOT, "members")
    if members is not None and members[0] == ObjType.Map:
        walker.members = frozenset(doc.keys(members[1]))

    for only in prefixes or [()]:
        _walk_prefix(walker, doc, only)
    return walker.out


def _walk_prefix(walker: _Walker, doc: Document, only: Sequence[str | int]) -> None:
    spec: s.Spec = s.HOUSEHOLD
    entry: Entry = (ObjType.Map, ROOT)
    path: Path = ()
    for segment in only:
        sub = s.child_spec(spec, segment)
        if sub is None:
            raise ValueError(f"path prefix not in the schema: {format_path((*path, segment))}")
        if not walker.check_container(spec, entry, path):
            return
        if isinstance(spec, s.MapOf):
            walker.check_key(spec, str(segment), (*path, segment))
        if isinstance(spec, s.ListOf):
            n = walker.length(entry[1])
            child = doc.get(entry[1], segment) if 0 <= int(segment) < n else None
        else:
            child = doc.get(entry[1], segment)
        if child is None:
            # A removed map entry or list item is not a violation; a missing
            # required record field is.
            if isinstance(spec, s.Record) and sub.required:
                walker.report((*path, segment), Rule.MISSING)
            return
        spec, entry, path = sub, child, (*path, segment)

    walker.check(spec, entry, path)
