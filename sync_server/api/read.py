"""The web tier's read API: household lists, profiles and indicator summaries (JSON).

    GET /v1/web/households[.csv]               county, locality, status, q, stage, deadline,
                                               due_before, vulnerability, overdue_service,
                                               worker, sort, after, page, per_page
    GET /v1/web/households/{household_id}      one household's profile
    GET /v1/web/households/{household_id}/assessments/compare   a, b: two assessment ids
    GET /v1/web/households/{household_id}/annex-691[.pdf]   the GD 691/2015 annex
    GET /v1/web/households/{household_id}/providers   kind, accessibility, limit: the
                                               county directory's nearest providers
    GET /v1/web/map                            county, locality, cell
    GET /v1/web/services[.csv]                 county, locality, status, overdue, code,
                                               after, per_page
    GET /v1/web/persons[.csv]                  county, locality, reassessment_due_before,
                                               after, per_page
    GET /v1/web/summary                        level (locality | county | national), code

Every call is signed by an enrolled device (:mod:`sync_server.api.auth`; unsigned or
badly signed: ``401``) and answered within the caller's scope
(:class:`~sync_server.projection.readmodel.Scope`): a national user reads the nation, a
supervisor their county, a
worker their localities; admins and ops read no household content (``403``). The
database enforces the scope too (row-level security, see :mod:`sync_server.projection.readmodel`),
so a filter naming another county finds nothing rather than failing, and a household
outside the scope answers ``404`` exactly like one that does not exist. A parameter
that breaks a rule answers ``400`` with ``{"code": <rule>, "message": …}``.

Answers carry personal data: they are marked ``Cache-Control: no-store``, and nothing
here logs a parameter or a row. :data:`PATHS` and :data:`SCHEMAS` are this API's part
of the OpenAPI document (sync_server/api/openapi.py).
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import functools
import io
import json
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar, cast

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from conflict.answers import known_services, known_vulnerabilities
from conflict.case import load_rules
from conflict.compare import UnknownAssessment, compare_assessments
from conflict.directory import ACCESSIBILITY, PROVIDER_KINDS, nearest
from conflict.ids import is_entity_id, is_household_id
from conflict.schema import CASE_STAGES, HOUSEHOLD_STATUSES, SERVICE_STATUSES
from sync_server.api import annex
from sync_server.api.auth import SignedRequests
from sync_server.api.errors import http_error
from sync_server.projection import readmodel
from sync_server.projection.readmodel import (
    ListFilter,
    NoReadScope,
    PersonFilter,
    Scope,
    ServiceFilter,
)
from sync_server.protocol.errors import ErrorCode
from sync_server.store.directory import read_directories

T = TypeVar("T")
F = TypeVar("F")
NO_STORE = {"Cache-Control": "no-store"}
MAX_PER_PAGE = 100
MAX_PAGE = 1_000_000
MAX_QUERY = 100
_LOCALITY = re.compile(r"[0-9]{1,6}")    # SIRUTA code
_COUNTY = re.compile(r"[A-Z]{1,2}")      # county code
_AREA = re.compile(r"[0-9]{1,6}|[A-Z]{1,2}")
_NUMBER = re.compile(r"[0-9]{1,7}")
_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
#: A keyset position: any household id and person id shaped string orders (it need not
#: name a row that exists).
_AFTER = re.compile(r"[1-9A-HJ-NP-Za-km-z]{1,64}:[0-9a-f-]{1,36}")
_ENTITY_ID_PATTERN = "^[0-9a-f]{8}-[0-9a-f]{4}-[47][0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"
STAGES = (*CASE_STAGES, "none")
DEADLINES = ("any", *(d.code for d in load_rules().deadlines if d.kind == "deadline"))
_USER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}")  # conflict.schema's user_id
_LOCALITY_RULE = "a SIRUTA code (1 to 6 digits)"
_COUNTY_RULE = "a county code (1 or 2 capital letters)"


def _error(status: int, code: ErrorCode, message: str) -> web.HTTPException:
    return http_error(status, code, message, headers=NO_STORE)


def _iso(value: object) -> str:
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def _answer(data: dict[str, Any]) -> web.Response:
    return web.json_response(data, headers=NO_STORE,
                             dumps=functools.partial(json.dumps, default=_iso))


def _text(request: web.Request, name: str, pattern: re.Pattern[str], expected: str) -> str | None:
    value = request.query.get(name)
    if value is None:
        return None
    if not pattern.fullmatch(value):
        raise _error(400, ErrorCode(f"{name}-format"), f"{name}: {expected}")
    return value


def _day(request: web.Request, name: str) -> dt.date | None:
    value = request.query.get(name)
    if value is None:
        return None
    try:
        if not _DAY.fullmatch(value):
            raise ValueError(value)
        return dt.date.fromisoformat(value)
    except ValueError:
        raise _error(400, ErrorCode(f"{name.replace('_', '-')}-format"),
                     f"{name}: a date, YYYY-MM-DD") from None


#: The columns of the household list's CSV export (the list's own, and the next deadline).
CSV_COLUMNS = ("id", "locality", "county", "status", "case_stage", "address",
               "members_present", "members_total", "vulnerabilities", "services_open",
               "next_deadline", "last_assessment_at", "updated_at", "updated_by")
PERSON_CSV_COLUMNS = ("household_id", "person_id", "locality", "county", "first_name",
                      "last_name", "birth_date", "sex", "presence", "case_stage",
                      "last_assessed_at", "reassessment_due")
SERVICE_CSV_COLUMNS = ("household_id", "service_id", "locality", "county", "code", "person_id",
                       "vulnerability", "deadline", "status", "delivered_at", "delivered_by",
                       "overdue")
MIN_CELL, MAX_CELL = 0.01, 5.0
#: CSV exports written at once by one instance (each holds its rows in memory).
MAX_EXPORTS = 2
#: What a spreadsheet may take for the start of a formula (OWASP's list).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _csv_row(values: Any) -> bytes:
    """One CSV line. A text that a spreadsheet would run as a formula (``=``, ``+``,
    ``-``, ``@``, a tab or a carriage return first) is written with a leading apostrophe:
    an address is typed on a tablet, and the export is opened in a spreadsheet."""
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerow([
        ("'" + v if isinstance(v, str) and v[:1] in _FORMULA_START else
         v.isoformat() if isinstance(v, dt.date | dt.datetime) else "" if v is None else v)
        for v in values])
    return out.getvalue().encode()


def _cursor(request: web.Request) -> tuple[str, str] | None:
    """A keyset list's ``after``: the previous page's ``next``."""
    after = request.query.get("after")
    if after is None:
        return None
    if not _AFTER.fullmatch(after):
        raise _error(400, ErrorCode.AFTER_FORMAT, "after: the 'next' of the previous page")
    hid, _, entity = after.partition(":")
    return hid, entity


#: The household list's ``after``: the sort value of the household the previous page
#: ended with (microseconds or days since 1970-01-01 UTC, ``n`` for none), a dot, its id.
#: Any string of this shape orders, so it is never refused for naming no household.
_POSITION = re.compile(r"(n|-?[0-9]{1,18})\.([1-9A-HJ-NP-Za-km-z]{1,64})")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_EPOCH_DAY = _EPOCH.date()
_US = dt.timedelta(microseconds=1)


def position_text(sort: str, at: readmodel.Position) -> str:
    """``at`` as the ``after`` a client sends back (:data:`_POSITION`)."""
    v = at.value
    if isinstance(v, dt.datetime):
        value = str((v - _EPOCH) // dt.timedelta(microseconds=1))
    elif isinstance(v, dt.date):
        value = str((v - _EPOCH_DAY).days)
    else:
        value = "n"
    return f"{value}.{at.household_id}"


def _position(request: web.Request, sort: str) -> readmodel.Position | None:
    after = request.query.get("after")
    if after is None:
        return None
    m = _POSITION.fullmatch(after)
    if m is None:
        raise _error(400, ErrorCode.AFTER_FORMAT, "after: the 'next' of the previous page")
    raw, hid = m.groups()
    value: dt.datetime | dt.date | None = None
    if raw != "n" and sort == "updated":  # (beyond the calendar: clamped, nothing is there)
        us = min(max(int(raw), (dt.datetime(1, 1, 2, tzinfo=dt.UTC) - _EPOCH) // _US),
                 (dt.datetime(9999, 12, 30, tzinfo=dt.UTC) - _EPOCH) // _US)
        value = _EPOCH + dt.timedelta(microseconds=us)
    elif raw != "n" and sort == "next_deadline":
        days = min(max(int(raw), (dt.date.min - _EPOCH_DAY).days),
                   (dt.date.max - _EPOCH_DAY).days)
        value = _EPOCH_DAY + dt.timedelta(days=days)
    return readmodel.Position(value, hid)


def _number(request: web.Request, name: str, default: int, maximum: int) -> int:
    value = request.query.get(name)
    if value is None:
        return default
    if not _NUMBER.fullmatch(value) or not 1 <= int(value) <= maximum:
        raise _error(400, ErrorCode(f"{name.replace('_', '-')}-range"),
                     f"{name}: a whole number from 1 to {maximum}")
    return int(value)


def routes(engine: AsyncEngine, signed: SignedRequests) -> list[web.RouteDef]:
    exports = asyncio.Semaphore(MAX_EXPORTS)

    async def _scope(request: web.Request) -> Scope:
        device, _ = await signed.authenticate(request)
        try:
            return Scope.of(device.user)
        except NoReadScope as err:
            raise _error(403, ErrorCode.FORBIDDEN,
                         f"the {err} role does not read household content") from err

    def _list_filter(request: web.Request) -> ListFilter:
        status = request.query.get("status")
        if status is not None and status not in HOUSEHOLD_STATUSES:
            raise _error(400, ErrorCode.STATUS_ENUM, f"status: one of {', '.join(HOUSEHOLD_STATUSES)}")
        q = request.query.get("q")
        if q is not None and len(q) > MAX_QUERY:
            raise _error(400, ErrorCode.Q_LENGTH, f"q: at most {MAX_QUERY} characters")
        stage = request.query.get("stage")
        if stage is not None and stage not in STAGES:
            raise _error(400, ErrorCode.STAGE_ENUM, f"stage: one of {', '.join(STAGES)}")
        deadline = request.query.get("deadline")
        if deadline is not None and deadline not in DEADLINES:
            raise _error(400, ErrorCode.DEADLINE_ENUM,
                         f"deadline: one of {', '.join(DEADLINES)}")
        due_before = _day(request, "due_before")
        vulnerability = request.query.get("vulnerability")
        if vulnerability is not None and vulnerability not in known_vulnerabilities():
            raise _error(400, ErrorCode.VULNERABILITY_ENUM,
                         "vulnerability: a vulnerability code of the indicator catalogue")
        overdue = request.query.get("overdue_service")
        if overdue is not None and overdue not in ("true", "false"):
            raise _error(400, ErrorCode.OVERDUE_SERVICE_ENUM, "overdue_service: true or false")
        worker = _text(request, "worker", _USER_ID, "a user id")
        sort = request.query.get("sort", "updated")
        if sort not in readmodel.SORTS:
            raise _error(400, ErrorCode.SORT_ENUM, f"sort: one of {', '.join(readmodel.SORTS)}")
        wanted = ListFilter(county=_text(request, "county", _COUNTY, _COUNTY_RULE),
                            locality=_text(request, "locality", _LOCALITY, _LOCALITY_RULE),
                            status=status, q=q, stage=stage,
                            deadline=deadline if deadline is not None or due_before is None
                            else "any", due_before=due_before,
                            vulnerability=vulnerability,
                            overdue_service=None if overdue is None else overdue == "true",
                            worker=worker, sort=sort, after=_position(request, sort),
                            page=_number(request, "page", 1, MAX_PAGE),
                            per_page=_number(request, "per_page", 20, MAX_PER_PAGE))
        return wanted

    async def list_households(request: web.Request) -> web.Response:
        scope = await _scope(request)
        wanted = _list_filter(request)
        async with readmodel.reading(engine, scope) as conn:
            found = await readmodel.list_households(conn, scope, wanted)
        if found["next"] is not None:
            found["next"] = position_text(wanted.sort, found["next"])
        return _answer(found)

    async def _csv(request: web.Request, scope: Scope, name: str, columns: Sequence[str],
                   read: Callable[[AsyncConnection], Awaitable[tuple[list[dict[str, Any]], bool]]]
                   ) -> web.StreamResponse:
        """A list as CSV: ``read`` gives its rows (at most MAX_EXPORT_ROWS) and whether
        there were more, in one short transaction; then they are written, so a slow
        reader holds memory, never a database connection."""
        if exports.locked():
            raise _error(503, ErrorCode.EXPORT_BUSY,
                         f"{MAX_EXPORTS} exports are being written; retry in a minute")
        async with exports:
            async with readmodel.reading(engine, scope) as conn:
                rows, truncated = await read(conn)
            response = web.StreamResponse(headers={
                **NO_STORE, "Content-Type": "text/csv; charset=utf-8",
                "Content-Disposition": f'attachment; filename="{name}.csv"',
                "X-Vatra-Truncated": "true" if truncated else "false"})
            await response.prepare(request)
            await response.write(_csv_row(columns))
            for row in rows:
                await response.write(_csv_row([row[c] for c in columns]))
            await response.write_eof()
            return response

    async def households_csv(request: web.Request) -> web.StreamResponse:
        scope = await _scope(request)
        wanted = _list_filter(request)  # (page, per_page and after, if given, are not used)

        async def read(conn: AsyncConnection) -> tuple[list[dict[str, Any]], bool]:
            rows = [row async for row in readmodel.export_households(conn, scope, wanted)]
            return rows[:readmodel.MAX_EXPORT_ROWS], len(rows) > readmodel.MAX_EXPORT_ROWS

        return await _csv(request, scope, "households", CSV_COLUMNS, read)

    async def _keyset_csv(request: web.Request, name: str, columns: Sequence[str],
                          wanted: Callable[[web.Request, int], F],
                          read: Callable[[AsyncConnection, Scope, F], Awaitable[dict[str, Any]]]
                          ) -> web.StreamResponse:
        """A keyset list (persons, services) as CSV: its filters, one page of
        MAX_EXPORT_ROWS."""
        scope = await _scope(request)
        f = wanted(request, readmodel.MAX_EXPORT_ROWS)

        async def rows(conn: AsyncConnection) -> tuple[list[dict[str, Any]], bool]:
            found = await read(conn, scope, f)
            return found["items"], found["next"] is not None

        return await _csv(request, scope, name, columns, rows)

    async def household_map(request: web.Request) -> web.Response:
        scope = await _scope(request)
        raw = request.query.get("cell")
        cell = None
        if raw is not None:
            try:
                cell = float(raw)
            except ValueError:
                cell = -1.0
            if not MIN_CELL <= cell <= MAX_CELL:
                raise _error(400, ErrorCode.CELL_RANGE,
                             f"cell: degrees, from {MIN_CELL} to {MAX_CELL}")
        county = _text(request, "county", _COUNTY, _COUNTY_RULE)
        locality = _text(request, "locality", _LOCALITY, _LOCALITY_RULE)
        async with readmodel.reading(engine, scope) as conn:
            return _answer(await readmodel.household_map(conn, scope, county, locality, cell))


    async def _of_household(request: web.Request, scope: Scope,
                            read: Callable[[AsyncConnection, Scope, str], Awaitable[T | None]]
                            ) -> T:
        """What ``read`` finds of the household the path names, within ``scope``; ``404``
        when it is not there or outside the scope (the caller cannot tell the two apart)."""
        hid = request.match_info["household_id"]
        found = None
        if is_household_id(hid):
            async with readmodel.reading(engine, scope) as conn:
                found = await read(conn, scope, hid)
        if found is None:
            raise _error(404, ErrorCode.NOT_FOUND, "no such household")
        return found

    async def household_profile(request: web.Request) -> web.Response:
        profile = await _of_household(request, await _scope(request),
                                      readmodel.household_profile)
        profile["supervisors"] = await readmodel.county_supervisors(
            engine, profile["household"]["county"])
        return _answer(profile)


    async def nearest_providers(request: web.Request) -> web.Response:
        """The county directory's providers nearest to the household (its GPS fix)."""
        scope = await _scope(request)
        kind = request.query.get("kind")
        if kind is not None and kind not in PROVIDER_KINDS:
            raise _error(400, ErrorCode.KIND_ENUM, f"kind: one of {', '.join(PROVIDER_KINDS)}")
        access = [a for a in request.query.get("accessibility", "").split(",") if a]
        if any(a not in ACCESSIBILITY for a in access):
            raise _error(400, ErrorCode.ACCESSIBILITY_ENUM,
                         f"accessibility: comma-separated, of {', '.join(ACCESSIBILITY)}")
        limit = _number(request, "limit", 5, MAX_PER_PAGE)
        place = await _of_household(request, scope, readmodel.household_place)
        if place["lat"] is None or place["lon"] is None:
            raise _error(409, ErrorCode.NO_LOCATION,
                         "the household has no GPS fix: capture one on the tablet")
        async with readmodel.reading(engine, scope) as conn:
            found = await read_directories(conn, [place["county"]])
        listed = found[0]["providers"] if found else []
        return _answer({"household_id": place["household_id"], "county": place["county"],
                        "directory_version": found[0]["version"] if found else None,
                        "providers": nearest(listed, place["lat"], place["lon"], kind=kind,
                                             accessibility=access, limit=limit)})

    async def compare(request: web.Request) -> web.Response:
        scope = await _scope(request)
        ids = []
        for name in ("a", "b"):
            value = request.query.get(name)
            if value is None or not is_entity_id(value):
                raise _error(400, ErrorCode(f"{name}-format"),
                             f"{name}: an assessment id (a UUID)")
            ids.append(value)
        household = await _of_household(request, scope, readmodel.household_assessments)
        try:
            return _answer(compare_assessments(household, ids[0], ids[1]).to_json())
        except UnknownAssessment:
            raise _error(404, ErrorCode.NOT_FOUND,
                         "no such assessment with answers in this household") from None

    async def _annex(request: web.Request) -> dict[str, Any]:
        rows = await _of_household(request, await _scope(request), readmodel.annex_rows)
        if not rows[2]:
            raise _error(404, ErrorCode.NOT_FOUND,
                         "no parent working abroad is recorded for this household")
        return annex.content(*rows)

    async def annex_json(request: web.Request) -> web.Response:
        return _answer(await _annex(request))

    async def annex_pdf(request: web.Request) -> web.Response:
        document = await _annex(request)
        body = await asyncio.to_thread(annex.render_pdf, document)  # CPU: off the loop
        return web.Response(body=body, content_type="application/pdf", headers={
            **NO_STORE, "Content-Disposition":
                f'attachment; filename="anexa-691-{document["household"]["id"]}.pdf"'})

    def _service_filter(request: web.Request, per_page: int | None = None) -> ServiceFilter:
        status = request.query.get("status")
        if status is not None and status not in SERVICE_STATUSES:
            raise _error(400, ErrorCode.STATUS_ENUM,
                         f"status: one of {', '.join(SERVICE_STATUSES)}")
        overdue = request.query.get("overdue")
        if overdue is not None and overdue not in ("true", "false"):
            raise _error(400, ErrorCode.OVERDUE_ENUM, "overdue: true or false")
        code = request.query.get("code")
        if code is not None and code not in known_services():
            raise _error(400, ErrorCode.CODE_ENUM, "code: a service code of the catalogue")
        return ServiceFilter(county=_text(request, "county", _COUNTY, _COUNTY_RULE),
                             locality=_text(request, "locality", _LOCALITY, _LOCALITY_RULE),
                             status=status, code=code,
                             overdue=None if overdue is None else overdue == "true",
                             after=_cursor(request),
                             per_page=per_page or _number(request, "per_page", 50, MAX_PER_PAGE))

    def _person_filter(request: web.Request, per_page: int | None = None) -> PersonFilter:
        return PersonFilter(county=_text(request, "county", _COUNTY, _COUNTY_RULE),
                            locality=_text(request, "locality", _LOCALITY, _LOCALITY_RULE),
                            reassessment_due_before=_day(request, "reassessment_due_before"),
                            after=_cursor(request),
                            per_page=per_page or _number(request, "per_page", 50, MAX_PER_PAGE))

    async def list_services(request: web.Request) -> web.Response:
        scope = await _scope(request)
        wanted = _service_filter(request)
        async with readmodel.reading(engine, scope) as conn:
            return _answer(await readmodel.list_services(conn, scope, wanted))

    async def services_csv(request: web.Request) -> web.StreamResponse:
        return await _keyset_csv(request, "services", SERVICE_CSV_COLUMNS, _service_filter,
                                 readmodel.list_services)

    async def list_persons(request: web.Request) -> web.Response:
        scope = await _scope(request)
        wanted = _person_filter(request)
        async with readmodel.reading(engine, scope) as conn:
            return _answer(await readmodel.list_persons(conn, scope, wanted))

    async def persons_csv(request: web.Request) -> web.StreamResponse:
        return await _keyset_csv(request, "persons", PERSON_CSV_COLUMNS, _person_filter,
                                 readmodel.list_persons)

    async def summary(request: web.Request) -> web.Response:
        scope = await _scope(request)
        level = request.query.get("level")
        if level not in readmodel.LEVELS:
            raise _error(400, ErrorCode.LEVEL_ENUM, "level: one of locality, county, national")
        code = _text(request, "code", _AREA, f"{_LOCALITY_RULE}, or {_COUNTY_RULE}")
        if level != "national" and code is None:
            raise _error(400, ErrorCode.CODE_REQUIRED, f"code: the {level}'s code is required")
        if level not in readmodel.LEVELS[scope.kind]:
            raise _error(403, ErrorCode.LEVEL_OUTSIDE_SCOPE,
                         f"a {scope.kind} scope has no {level} summary")
        async with readmodel.reading(engine, scope) as conn:
            return _answer(await readmodel.summary(conn, scope, cast(readmodel.Level, level), code))

    return [web.get("/v1/web/households", list_households),
            web.get("/v1/web/households.csv", households_csv),
            web.get("/v1/web/map", household_map),
            web.get("/v1/web/households/{household_id}", household_profile),
            web.get("/v1/web/households/{household_id}/assessments/compare", compare),
            web.get("/v1/web/households/{household_id}/providers", nearest_providers),
            web.get("/v1/web/persons", list_persons),
            web.get("/v1/web/persons.csv", persons_csv),
            web.get("/v1/web/services", list_services),
            web.get("/v1/web/services.csv", services_csv),
            web.get("/v1/web/households/{household_id}/annex-691", annex_json),
            web.get("/v1/web/households/{household_id}/annex-691.pdf", annex_pdf),
            web.get("/v1/web/summary", summary)]


# --- OpenAPI --------------------------------------------------------------------------

def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _object(**properties: Any) -> dict[str, Any]:
    """A closed object whose properties are all required (nullable where they may be null)."""
    return {"type": "object", "additionalProperties": False, "required": list(properties),
            "properties": properties}


def _s(fmt: str | None = None, nullable: bool = True) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    if fmt is not None:
        schema["format"] = fmt
    if nullable:
        schema["nullable"] = True
    return schema


_STR = {"type": "string"}
_INT = {"type": "integer", "minimum": 0}
_ANY: dict[str, Any] = {}  # any JSON value (a JSONB column)
_ERR = {"description": "refused", "headers": {"Cache-Control": {"schema": {"type": "string"}}},
        "content": {"application/json": {"schema": _ref("Error")}}}
_SIGNED: list[dict[str, list[str]]] = [{"device": []}]
_LOCALITY_SCHEMA = {"type": "string", "pattern": "^[0-9]{1,6}$"}
_COUNTY_SCHEMA = {"type": "string", "pattern": "^[A-Z]{1,2}$"}
_HOUSEHOLD_ID = {"name": "household_id", "in": "path", "required": True,
                 "schema": {"type": "string", "pattern": "^[1-9A-HJ-NP-Za-km-z]{1,64}$"}}


def _ok(description: str, schema: str) -> dict[str, Any]:
    return {"description": description,
            "headers": {"Cache-Control": {"required": True, "schema": {
                "type": "string", "enum": ["no-store"]}}},
            "content": {"application/json": {"schema": _ref(schema)}}}


def _query(name: str, schema: dict[str, Any], description: str,
           required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "description": description,
            "schema": schema}


_HOUSEHOLD_ITEM = dict(
    id=_STR, locality=_STR, county=_STR, status=_s(), address=_s(),
    members_present=_INT, members_total=_INT, vulnerabilities=_INT, services_open=_INT,
    services_overdue=_INT, next_deadline=_s("date"), last_assessment_at=_s("date-time"),
    updated_at=_s("date-time"),
    updated_by=_s(), case_stage={"type": "string", "nullable": True,
                                 "enum": [*CASE_STAGES, None],
                                 "description": "null: no case open"})

SCHEMAS: dict[str, Any] = {
    "WebHouseholdItem": _object(**_HOUSEHOLD_ITEM),
    "WebHouseholdList": _object(
        total=_INT, page={"type": "integer", "minimum": 1, "nullable": True,
                          "description": "null for a keyset page (after=)"},
        per_page={"type": "integer", "minimum": 1, "maximum": MAX_PER_PAGE},
        showing={"type": "string",
                 "description": f'e.g. "21{readmodel.EN_DASH}40 of 134"; "0 of 134" past the end'},
        items={"type": "array", "items": _ref("WebHouseholdItem")},
        next={"type": "string", "nullable": True,
              "description": "give as after= (with the same sort) for the next page; "
                             "null on the last"}),
    "WebHousehold": _object(**{
        **_HOUSEHOLD_ITEM, "lat": {"type": "number", "nullable": True},
        "lon": {"type": "number", "nullable": True}, "next_deadline": _s("date"),
        "last_assessment_id": _s(), "created_by": _s(), "created_at": _s("date-time"),
        "projected_at": _s("date-time", nullable=False),
        "case_stage_since": _s("date-time"), "case_model": _s()}),
    "WebCaseDeadline": _object(
        code=_STR, kind={"type": "string", "enum": ["deadline", "minimum"]},
        due=_s("date-time", False), met_at=_s("date-time"),
        state={"type": "string", "enum": ["met", "met_late", "open", "overdue", "running",
                                          "complete"],
               "description": "by the server's clock when answered"}),
    "WebVisit": _object(visit_id=_STR, visited_on=_s("date"), place=_s(), purpose=_s(),
                        participants=_ANY, synthesis=_s(), next_visit=_s("date"), by=_s(),
                        recorded_at=_s("date-time")),
    "WebPerson": _object(person_id=_STR, first_name=_s(), last_name=_s(),
                         birth_date=_s("date"), sex=_s(), relation_to_head=_s(), presence=_s()),
    "WebAnswers": _object(person_id=_STR, assessment_id=_STR, assessed_at=_s("date-time"),
                          age_at_assessment={"type": "integer", "nullable": True},
                          answers={"type": "object", "description": "indicator code -> answer"}),
    "WebAssessment": _object(
        assessment_id=_STR, person_id=_STR, started_at=_s("date-time"),
        completed_at=_s("date-time"), by=_s(), catalogue_version=_INT,
        age_at_assessment={"type": "integer", "nullable": True},
        answers={"type": "object", "description": "indicator code -> answer, as recorded"}),
    "WebVulnerability": _object(
        vulnerability=_STR, subject={"type": "string", "description": 'a person id or "household"'},
        person_id=_s(), population={"type": "string",
                                    "enum": ["child", "adult", "person", "household"]},
        assessment_id=_STR, identified_on=_s("date")),
    "WebService": _object(service_id=_STR, code=_s(), person_id=_s(), vulnerability=_s(),
                          deadline=_s("date"), status=_s(), delivered_at=_s("date-time"),
                          delivered_by=_s(), note=_s(),
                          overdue={"type": "boolean",
                                   "description": "open and its deadline is before today"}),
    "WebActivity": _object(position=_INT, at=_s("date-time"), by=_s(), kind=_s(), text=_s()),
    "WebChangeRequest": _object(request_id=_STR, kind=_s(), payload=_ANY, reason=_s(),
                                requested_by=_s(), requested_at=_s("date-time"), status=_s(),
                                decided_by=_s(), decided_at=_s("date-time"), decision_note=_s()),
    "WebConflict": _object(conflict_id=_STR, path=_ANY, values=_ANY, written=_ANY,
                           detected_at=_s("date-time"), resolved_by=_s(), resolution=_ANY),
    "WebProfile": _object(
        household=_ref("WebHousehold"),
        **{name: {"type": "array", "items": _ref(item)} for name, item in (
            ("members", "WebPerson"), ("answers", "WebAnswers"),
            ("assessments", "WebAssessment"),
            ("vulnerabilities", "WebVulnerability"), ("services", "WebService"),
            ("activity", "WebActivity"), ("change_requests", "WebChangeRequest"),
            ("conflicts", "WebConflict"), ("case_deadlines", "WebCaseDeadline"),
            ("visits", "WebVisit"), ("team", "WebTeamMember"), ("referrals", "WebReferral"))},
        supervisors={"type": "array", "items": _STR,
                     "description": "the county's supervisors (who decide its requests)"}),
    "WebTeamMember": _object(role=_STR, user_id=_STR),
    "WebReferral": _object(
        referral_id=_STR, person_id=_s(), provider_id=_s(), provider_name=_s(),
        provider_kind=_s(), provider_contact=_s(), reason=_s(), status=_s(), outcome=_s(),
        referred_on=_s("date"), by=_s(), recorded_at=_s("date-time"), status_by=_s(),
        status_at=_s("date-time")),
    "WebProvider": _object(
        id=_STR, county=_STR, name=_STR, kind=_STR, address=_STR,
        lat={"type": "number", "nullable": True}, lon={"type": "number", "nullable": True},
        phone=_s(), email=_s(), accessibility={"type": "array", "items": _STR}, hours=_s(),
        distance_km={"type": "number", "description": "from the household's GPS fix"}),
    "WebProviders": _object(
        household_id=_STR, county=_STR, directory_version={**_s(), "description":
                                                           "null: no directory imported"},
        providers={"type": "array", "items": _ref("WebProvider")}),
    "WebComparedSubject": _object(
        subject={"type": "string", "description": 'a person id, or "household"'},
        changed={"type": "array", "items": _object(indicator=_STR, before=_ANY, after=_ANY)},
        gained={"type": "array", "items": _STR}, lost={"type": "array", "items": _STR}),
    "WebComparison": _object(
        earlier=_STR, later=_STR, earlier_at=_STR, later_at=_STR,
        subjects={"type": "array", "items": _ref("WebComparedSubject")}),
    "WebPersonItem": _object(
        household_id=_STR, person_id=_STR, locality=_STR, county=_STR, first_name=_s(),
        last_name=_s(), birth_date=_s("date"), sex=_s(), presence=_s(), case_stage=_s(),
        last_assessed_at=_s("date-time"),
        reassessment_due={**_s("date-time"), "description":
                          "the member's latest completed assessment plus the case model's "
                          "interval; null without an open case that re-assesses"}),
    "WebServiceItem": _object(
        household_id=_STR, service_id=_STR, locality=_STR, county=_STR, code=_s(),
        person_id=_s(), vulnerability=_s(), deadline=_s("date"), status=_s(),
        delivered_at=_s("date-time"), delivered_by=_s(),
        overdue={"type": "boolean", "description": "open and its deadline is before today"}),
    "WebServiceList": _object(
        items={"type": "array", "items": _ref("WebServiceItem")},
        next={"type": "string", "nullable": True,
              "description": "give as after= for the next page; null on the last"}),
    "WebPersonList": _object(
        items={"type": "array", "items": _ref("WebPersonItem")},
        next={"type": "string", "nullable": True,
              "description": "give as after= for the next page; null on the last"}),
    "WebAnnexParent": _object(
        parent={"type": "string", "enum": ["mother", "father"]}, country=_STR,
        since=_s("date"), notified_on=_s("date"),
        carer=_object(name=_s(), relation=_s(), person_id=_s()), recorded_by=_s()),
    "WebAnnexChild": _object(
        person_id=_s(), first_name=_s(), last_name=_s(), birth_date=_s("date"),
        parents_abroad={"type": "array", "items": _ref("WebAnnexParent")}),
    "WebAnnex691": _object(
        form=_STR, title=_STR, generated_on=_s("date", False),
        household=_object(id=_STR, county=_STR, locality=_STR, address=_s()),
        children={"type": "array", "items": _ref("WebAnnexChild")}),
    "WebMap": _object(
        type={"type": "string", "enum": ["FeatureCollection"]},
        features={"type": "array", "items": _object(
            type={"type": "string", "enum": ["Feature"]},
            geometry=_object(type={"type": "string", "enum": ["Point"]},
                             coordinates={"type": "array", "items": {"type": "number"},
                                          "minItems": 2, "maxItems": 2}),
            properties={"type": "object"})}),
    "WebVulnerabilityCount": _object(
        code=_STR, children=_INT, adults=_INT, households=_INT,
        persons={**_INT, "description": "person subjects (children, adults, unknown age)"}),
    "WebSummary": _object(
        level={"type": "string", "enum": list(readmodel.LEVELS)}, code=_s(), as_of=_s("date", False),
        households=_INT, children_assessed={**_INT, "description": "assessed under 18"},
        vulnerable_children={**_INT, "description": "children with a child vulnerability"},
        overdue_services=_INT,
        vulnerabilities={"type": "array", "items": _ref("WebVulnerabilityCount")}),
}

PATHS: dict[str, Any] = {
    "/v1/web/households": {"get": {
        "summary": "households of the caller's scope, newest change first (or as sort says)",
        "security": _SIGNED,
        "parameters": [
            _query("county", _COUNTY_SCHEMA, "county code (another county than the scope's "
                   "finds nothing)"),
            _query("locality", _LOCALITY_SCHEMA, "SIRUTA locality code"),
            _query("status", {"type": "string", "enum": list(HOUSEHOLD_STATUSES)}, "status"),
            _query("q", {"type": "string", "maxLength": MAX_QUERY},
                   "text in the address or a member's name (case-insensitive)"),
            _query("stage", {"type": "string", "enum": list(STAGES)},
                   'the case\'s stage ("none": no case open)'),
            _query("deadline", {"type": "string", "enum": list(DEADLINES)},
                   "households with this case deadline (any: any) unmet and due before "
                   "due_before, or overdue now when due_before is not given"),
            _query("due_before", {"type": "string", "format": "date"},
                   "with deadline: due before this day (alone: any deadline)"),
            _query("vulnerability", {"type": "string", "enum": sorted(known_vulnerabilities())},
                   "households with this vulnerability"),
            _query("overdue_service", {"type": "string", "enum": ["true", "false"]},
                   "households with (true) or without (false) an overdue service"),
            _query("worker", {"type": "string", "pattern": f"^{_USER_ID.pattern}$"},
                   "households with this user on their team"),
            _query("sort", {"type": "string", "enum": list(readmodel.SORTS),
                            "default": "updated"},
                   "updated: newest change first; id; next_deadline: the earliest open "
                   "service's deadline first, none last (ties by id: a total order)"),
            _query("after", {"type": "string", "pattern": f"^{_POSITION.pattern}$"},
                   "keyset page: the previous page's next (page is then not used)"),
            _query("page", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 1},
                   "page number, from 1"),
            _query("per_page", {"type": "integer", "minimum": 1, "maximum": MAX_PER_PAGE,
                                "default": 20}, "households per page")],
        "responses": {"200": _ok("a page of households", "WebHouseholdList"),
                      "400": _ERR, "401": _ERR, "403": _ERR}}},
    "/v1/web/households/{household_id}": {"get": {
        "summary": "one household's profile (404 outside the caller's scope)",
        "security": _SIGNED,
        "parameters": [_HOUSEHOLD_ID],
        "responses": {"200": _ok("the profile", "WebProfile"),
                      "401": _ERR, "403": _ERR, "404": _ERR}}},
    "/v1/web/households/{household_id}/assessments/compare": {"get": {
        "summary": "what changed between two assessments of a household (in either order): "
                   "indicators, vulnerabilities gained and lost",
        "security": _SIGNED,
        "parameters": [
            _HOUSEHOLD_ID,
            _query("a", {"type": "string", "pattern": _ENTITY_ID_PATTERN}, "an assessment id",
                   required=True),
            _query("b", {"type": "string", "pattern": _ENTITY_ID_PATTERN},
                   "another (or the same)", required=True)],
        "responses": {"200": _ok("the comparison", "WebComparison"),
                      "400": _ERR, "401": _ERR, "403": _ERR, "404": _ERR}}},
    "/v1/web/households/{household_id}/annex-691": {"get": {
        "summary": "the GD 691/2015 annex of a household: its children with a parent "
                   "working abroad (404 when none is recorded)",
        "security": _SIGNED,
        "parameters": [_HOUSEHOLD_ID],
        "responses": {"200": _ok("the annex, as data", "WebAnnex691"),
                      "401": _ERR, "403": _ERR, "404": _ERR}}},
    "/v1/web/households/{household_id}/annex-691.pdf": {"get": {
        "summary": "the same annex as a PDF to print and file",
        "security": _SIGNED,
        "parameters": [_HOUSEHOLD_ID],
        "responses": {"200": {"description": "the annex", "headers": {"Cache-Control": {
            "required": True, "schema": {"type": "string", "enum": ["no-store"]}}},
            "content": {"application/pdf": {"schema": {"type": "string",
                                                       "format": "binary"}}}},
                      "401": _ERR, "403": _ERR, "404": _ERR}}},
    "/v1/web/households/{household_id}/providers": {"get": {
        "summary": "the county directory's providers nearest to the household's GPS fix, "
                   "nearest first (409 no-location without a fix)",
        "security": _SIGNED,
        "parameters": [
            _HOUSEHOLD_ID,
            _query("kind", {"type": "string", "enum": list(PROVIDER_KINDS)},
                   "only providers of this kind"),
            _query("accessibility", {"type": "string", "pattern":
                                     f"^({'|'.join(ACCESSIBILITY)})(,({'|'.join(ACCESSIBILITY)}))*$"},
                   "comma-separated: providers offering all of these"),
            _query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_PER_PAGE,
                             "default": 5}, "how many")],
        "responses": {"200": _ok("the nearest providers", "WebProviders"),
                      "400": _ERR, "401": _ERR, "403": _ERR, "404": _ERR, "409": _ERR}}},
    "/v1/web/map": {"get": {
        "summary": "the scope's households with a GPS fix, as GeoJSON: one point each, or "
                   "with cell, one point per grid cell with a count (county and national "
                   "zooms)",
        "security": _SIGNED,
        "parameters": [
            _query("county", _COUNTY_SCHEMA, "county code"),
            _query("locality", _LOCALITY_SCHEMA, "SIRUTA locality code"),
            _query("cell", {"type": "number", "minimum": MIN_CELL, "maximum": MAX_CELL},
                   "grid cell size in degrees (absent: one point per household)")],
        "responses": {"200": _ok("a GeoJSON FeatureCollection", "WebMap"),
                      "400": _ERR, "401": _ERR, "403": _ERR}}},
    "/v1/web/services": {"get": {
        "summary": "planned services of the caller's scope's households, by household and "
                   "service id",
        "security": _SIGNED,
        "parameters": [
            _query("county", _COUNTY_SCHEMA, "county code"),
            _query("locality", _LOCALITY_SCHEMA, "SIRUTA locality code"),
            _query("status", {"type": "string", "enum": list(SERVICE_STATUSES)}, "status"),
            _query("overdue", {"type": "string", "enum": ["true", "false"]},
                   "open and past its deadline (true), or not (false)"),
            _query("code", {"type": "string", "enum": sorted(known_services())},
                   "a service code of the catalogue"),
            _query("after", {"type": "string", "pattern": f"^{_AFTER.pattern}$"},
                   "the previous page's next"),
            _query("per_page", {"type": "integer", "minimum": 1, "maximum": MAX_PER_PAGE,
                                "default": 50}, "services per page")],
        "responses": {"200": _ok("a page of services", "WebServiceList"),
                      "400": _ERR, "401": _ERR, "403": _ERR}}},
    "/v1/web/persons": {"get": {
        "summary": "members of the caller's scope's households, by household and person id",
        "security": _SIGNED,
        "parameters": [
            _query("county", _COUNTY_SCHEMA, "county code"),
            _query("locality", _LOCALITY_SCHEMA, "SIRUTA locality code"),
            _query("reassessment_due_before", {"type": "string", "format": "date"},
                   "present members whose re-assessment falls due before this day"),
            _query("after", {"type": "string", "pattern": f"^{_AFTER.pattern}$"},
                   "the previous page's next"),
            _query("per_page", {"type": "integer", "minimum": 1, "maximum": MAX_PER_PAGE,
                                "default": 50}, "members per page")],
        "responses": {"200": _ok("a page of members", "WebPersonList"),
                      "400": _ERR, "401": _ERR, "403": _ERR}}},
    "/v1/web/summary": {"get": {
        "summary": "indicators of a locality, a county or the nation, within the caller's scope",
        "description": "code is required for the locality and county levels and ignored for "
                       "the national one; a code outside the scope counts nothing. A level "
                       "wider than the scope (a worker's county) is refused (403).",
        "security": _SIGNED,
        "parameters": [
            _query("level", {"type": "string", "enum": list(readmodel.LEVELS)}, "level",
                   required=True),
            _query("code", {"type": "string", "pattern": "^([0-9]{1,6}|[A-Z]{1,2})$"},
                   "SIRUTA code (locality level) or county code (county level)")],
        "responses": {"200": _ok("indicator counts", "WebSummary"),
                      "400": _ERR, "401": _ERR, "403": _ERR}}},
}

# The CSV export takes the list's filters, not its page.


def _csv_path(listed: str, what: str, unused: tuple[str, ...]) -> dict[str, Any]:
    """The CSV export of the list at ``listed``: its parameters but ``unused``."""
    return {"get": {
        "summary": f"the {what} list as CSV: every row the same filters select, in the "
                   f"list's order (at most {readmodel.MAX_EXPORT_ROWS:,})",
        "security": _SIGNED,
        "parameters": [q for q in PATHS[listed]["get"]["parameters"] if q["name"] not in unused],
        "responses": {"200": {"description": f"the {what}; X-Vatra-Truncated says whether "
                                             "the limit cut the list",
                              "headers": {"Cache-Control": {
            "required": True, "schema": {"type": "string", "enum": ["no-store"]}}},
            "content": {"text/csv": {"schema": {"type": "string"}}}},
                      "400": _ERR, "401": _ERR, "403": _ERR, "503": _ERR}}}


PATHS["/v1/web/households.csv"] = _csv_path("/v1/web/households", "household",
                                            ("page", "per_page", "after"))
PATHS["/v1/web/persons.csv"] = _csv_path("/v1/web/persons", "member", ("per_page",))
PATHS["/v1/web/services.csv"] = _csv_path("/v1/web/services", "service", ("per_page",))
