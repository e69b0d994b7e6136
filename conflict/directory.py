"""The county directory of specialised services, and the nearest suitable providers.

A county's directory lists the services a household can be referred to: the county's
child protection directorate, a family doctor's practice, a day centre, an addiction
counselling centre. An admin keeps it (``vatra directory import``); tablets of the county
download it read-only (``client_sdk.fetch_directory``) and keep it for offline work; a
referral (``Household.refer``) copies the provider's name, kind and contacts, so it still
says who the household was sent to after the directory changes.

A provider, as the admin's file gives it and as tablets receive it::

    id             Str   entity id (a UUID); optional in the file: derived from
                         county and name, so a re-import keeps it
    name           Str   non-empty
    kind           Str   one of PROVIDER_KINDS
    address        Str   non-empty
    lat, lon       F64   WGS 84 (optional: a provider without them is never "nearest")
    phone, email   Str   contacts (at least one)
    accessibility  List  of ACCESSIBILITY codes (may be empty)
    hours          Str   opening hours as a person reads them ("L-V 8-16")

:func:`validate_directory` checks a whole file and names each problem (``providers[3].kind:
unknown-kind``); :func:`nearest` is what the web API and a tablet both run.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["ACCESSIBILITY", "MAX_PROVIDERS", "PROVIDER_KINDS", "Problem", "distance_km",
           "is_provider_id", "nearest", "provider_id", "validate_directory", "version"]

#: What a provider is, as a referral needs it: the need it answers.
PROVIDER_KINDS = (
    "child_protection",   # DGASPC: child protection, placement, specialised assessment
    "social_assistance",  # SPAS / local social assistance benefits
    "health",             # family doctor, clinic, hospital
    "mental_health",      # psychiatric and psychological care
    "disability",         # assessment and services for persons with disabilities
    "education",          # school, school counselling, CJRAE
    "early_childhood",    # nursery, kindergarten, early intervention
    "addiction",          # addiction prevention and counselling (CPECA)
    "domestic_violence",  # shelters and counselling for victims
    "employment",         # AJOFM, job counselling
    "legal",              # legal aid, civil status
    "shelter",            # emergency housing
    "day_centre",         # day centres for children
)
#: Accessibility a field worker checks before referring a family.
ACCESSIBILITY = ("wheelchair", "public_transport", "parking", "sign_language",
                 "romani_speaker", "hungarian_speaker", "home_visits", "free_of_charge")
#: The most providers one county's directory holds (a county has a few hundred).
MAX_PROVIDERS = 2_000
_TEXT_MAX = 500
_ENTITY_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[1-8][0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
_EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s]{1,255}\.[^@\s]{2,63}")
_PHONE = re.compile(r"\+?[0-9][0-9 ./-]{5,24}")
#: A text with a control character (NUL included, which PostgreSQL cannot store).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_FIELDS = ("id", "name", "kind", "address", "lat", "lon", "phone", "email", "accessibility",
           "hours")
#: The namespace of the ids derived from county and name.
_NAMESPACE = uuid.UUID("6f6e6c79-7661-7472-612d-646972656374")


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong in a directory file: where (``providers[3].kind``) and the rule."""

    where: str
    rule: str

    def __str__(self) -> str:
        return f"{self.where}: {self.rule}"


def is_provider_id(value: object) -> bool:
    """A canonical lower-case UUID (any version: a file may bring its own ids)."""
    return isinstance(value, str) and _ENTITY_ID.fullmatch(value) is not None


def provider_id(county: str, name: str) -> str:
    """The id of a provider the file gave none: stable across re-imports."""
    return str(uuid.uuid5(_NAMESPACE, f"{county}\n{name.strip().casefold()}"))


def _text(value: object, *, required: bool = True) -> str | None:
    """None when ``value`` is fine; else the rule it breaks."""
    if value is None:
        return "missing" if required else None
    if not isinstance(value, str):
        return "type"
    if required and not value.strip():
        return "empty"
    if len(value) > _TEXT_MAX:
        return "too-long"
    if _CONTROL.search(value):
        return "control-character"
    return None


def _coordinate(value: object, limit: float) -> float | None:
    """``value`` as a coordinate within ±``limit``, or None if it is not one."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, int) and abs(value) > limit:  # (a huge int has no float)
        return None
    v = float(value)
    return v if math.isfinite(v) and abs(v) <= limit else None


def validate_directory(county: str, providers: object) -> tuple[list[dict[str, Any]], list[Problem]]:
    """The providers of ``county``'s directory file, normalised (ids filled in, only the
    known fields), and every problem found. Nothing may be written while a problem is
    left: an import is all or nothing."""
    problems: list[Problem] = []
    if not isinstance(providers, list):
        return [], [Problem("providers", "type")]
    if len(providers) > MAX_PROVIDERS:
        problems.append(Problem("providers", f"at-most-{MAX_PROVIDERS}"))
    out: list[dict[str, Any]] = []
    ids: dict[str, int] = {}
    for i, raw in enumerate(providers):
        at = f"providers[{i}]"
        if not isinstance(raw, Mapping):
            problems.append(Problem(at, "type"))
            continue
        for key in sorted(set(raw) - set(_FIELDS)):
            problems.append(Problem(f"{at}.{key}", "unknown-field"))
        for key in ("name", "address"):
            if (rule := _text(raw.get(key))) is not None:
                problems.append(Problem(f"{at}.{key}", rule))
        for key in ("hours", "phone", "email"):
            if (rule := _text(raw.get(key), required=False)) is not None:
                problems.append(Problem(f"{at}.{key}", rule))
        if raw.get("kind") not in PROVIDER_KINDS:
            problems.append(Problem(f"{at}.kind", "unknown-kind"))
        phone, email = raw.get("phone"), raw.get("email")
        if isinstance(phone, str) and not _PHONE.fullmatch(phone):
            problems.append(Problem(f"{at}.phone", "format"))
        if isinstance(email, str) and not _EMAIL.fullmatch(email):
            problems.append(Problem(f"{at}.email", "format"))
        if not phone and not email:
            problems.append(Problem(f"{at}.phone", "a-phone-or-an-email"))
        lat, lon = raw.get("lat"), raw.get("lon")
        if (lat is None) != (lon is None):
            problems.append(Problem(f"{at}.lat", "both-or-neither"))
        place = {}
        for key, value, limit in (("lat", lat, 90.0), ("lon", lon, 180.0)):
            place[key] = _coordinate(value, limit)
            if value is not None and place[key] is None:
                problems.append(Problem(f"{at}.{key}", "range"))
        access = raw.get("accessibility", [])
        if not isinstance(access, list):
            problems.append(Problem(f"{at}.accessibility", "type"))
            access = []
        for j, code in enumerate(access):
            if not isinstance(code, str) or code not in ACCESSIBILITY:
                problems.append(Problem(f"{at}.accessibility[{j}]", "unknown-code"))
        access = [c for c in access if isinstance(c, str) and c in ACCESSIBILITY]
        pid = raw.get("id")
        if pid is None and isinstance(raw.get("name"), str):
            pid = provider_id(county, raw["name"])
        if not isinstance(pid, str) or not is_provider_id(pid):
            problems.append(Problem(f"{at}.id", "format"))
        elif pid in ids:
            problems.append(Problem(f"{at}.id", f"same-as-providers[{ids[pid]}]"))
        else:
            ids[pid] = i
        out.append({"id": pid, "county": county, "name": raw.get("name"), "kind": raw.get("kind"),
                    "address": raw.get("address"),
                    "lat": place["lat"], "lon": place["lon"],
                    "phone": phone or None, "email": email or None,
                    "accessibility": sorted(set(access)),
                    "hours": raw.get("hours")})
    return (out if not problems else []), problems


def version(providers: Iterable[Mapping[str, Any]]) -> str:
    """A directory's version: a digest of its providers (sorted by id), so tablets ask
    "has it changed since?" with one short string."""
    canonical = json.dumps(sorted((dict(p) for p in providers), key=lambda p: str(p["id"])),
                           sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.blake2b(canonical.encode(), digest_size=12).hexdigest()


def distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance (haversine, mean Earth radius)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6371.0088 * math.asin(min(1.0, math.sqrt(a)))


def nearest(providers: Sequence[Mapping[str, Any]], lat: float, lon: float, *,
            kind: str | None = None, accessibility: Iterable[str] = (),
            limit: int = 5) -> list[dict[str, Any]]:
    """The ``limit`` providers nearest to (``lat``, ``lon``) that are of ``kind`` (any
    when None) and offer every ``accessibility`` asked for, nearest first (ties by name,
    then id), each with ``distance_km`` (rounded to 0.1). A provider without coordinates
    is not ranked."""
    need = set(accessibility)
    found = [{**p, "distance_km": round(distance_km(lat, lon, p["lat"], p["lon"]), 1)}
             for p in providers
             if p.get("lat") is not None and p.get("lon") is not None
             and (kind is None or p["kind"] == kind)
             and need <= set(p.get("accessibility") or ())]
    found.sort(key=lambda p: (p["distance_km"], p["name"], p["id"]))
    return found[:limit]
