"""The web tier's read model: queries over the ``proj`` tables, always inside a scope.

A :class:`Scope` says which households a caller may read: the whole nation, one county,
or a set of localities (:meth:`Scope.of` derives it from a user; admins and ops have
none). Every query runs in a transaction that :func:`scoped` opened with::

    SET LOCAL ROLE vatra_web;
    SELECT set_config('vatra.scope', :scope, true),        -- national | county | locality
           set_config('vatra.county', :county, true),      -- county scope: its code
           set_config('vatra.localities', :localities, true);  -- locality scope: "54975,55000"

so PostgreSQL's row-level security (migration 0007) hides every row outside the scope
even from a query that forgot a filter; the queries *also* filter by the scope
explicitly, which is what lets the planner use the ``(county, …)`` and
``(locality, …)`` indexes. Both end with the transaction.

The functions take an :class:`~sqlalchemy.ext.asyncio.AsyncConnection` in such a
transaction and return plain dicts and lists (dates and timestamps as
:mod:`datetime` values; the HTTP layer, :mod:`sync_server.api.read`, writes them as ISO
strings). "Overdue" is computed when the query runs: an open service whose deadline
is before ``current_date``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from conflict.case import load_rules
from conflict.catalogue import ADULT_AGE
from conflict.schema import OPEN_SERVICE
from sync_server.auth.identity import User
from sync_server.protocol.errors import ErrorCode, VatraError
from sync_server.store.aggregates import COUNTY_WIDE
from sync_server.store.tables import WEB_ROLE, proj_households, users
from sync_server.store.tables import proj_activity as activity
from sync_server.store.tables import proj_answers as answers
from sync_server.store.tables import proj_assessments as assessments
from sync_server.store.tables import proj_case_deadlines as case_deadlines
from sync_server.store.tables import proj_change_requests as change_requests
from sync_server.store.tables import proj_conflicts as conflicts
from sync_server.store.tables import proj_locality_services as locality_services
from sync_server.store.tables import proj_locality_summary as locality_summary
from sync_server.store.tables import proj_locality_vulnerabilities as locality_vulnerabilities
from sync_server.store.tables import proj_parents_abroad as parents_abroad
from sync_server.store.tables import proj_persons as persons
from sync_server.store.tables import proj_referrals as referrals
from sync_server.store.tables import proj_services as services
from sync_server.store.tables import proj_team as team
from sync_server.store.tables import proj_visits as visits
from sync_server.store.tables import proj_vulnerabilities as vulnerabilities

EN_DASH = "\u2013"
ScopeKind = Literal["national", "county", "locality"]
Level = Literal["national", "county", "locality"]
#: Which summary levels each scope may ask for (a narrower scope cannot see a whole area).
LEVELS: dict[str, tuple[str, ...]] = {"national": ("national", "county", "locality"),
                                      "county": ("county", "locality"),
                                      "locality": ("locality",)}


class NoReadScope(VatraError):
    """The user's role reads no household content (admin, ops)."""

    code = ErrorCode.FORBIDDEN


@dataclass(frozen=True, slots=True)
class Scope:
    kind: ScopeKind
    county: str | None = None
    localities: tuple[str, ...] = ()

    @classmethod
    def of(cls, user: User) -> Scope:
        """national → the nation; supervisor → their county; worker → their localities."""
        if user.role == "national":
            return cls("national")
        if user.role == "supervisor" and user.county is not None:
            return cls("county", county=user.county)
        if user.role == "worker":
            return cls("locality", localities=tuple(sorted({loc for loc, _ in user.localities})))
        raise NoReadScope(user.role)

    def settings(self) -> dict[str, str]:
        """The values of ``vatra.scope`` / ``vatra.county`` / ``vatra.localities``."""
        return {"scope": self.kind, "county": self.county or "",
                "localities": ",".join(self.localities)}

    def where(self, table: sa.Table) -> sa.ColumnElement[bool]:
        """The explicit filter that says what row-level security enforces."""
        if self.kind == "national":
            return sa.true()
        if self.kind == "county":
            return table.c.county == self.county
        if not self.localities:
            return sa.false()
        return table.c.locality.in_(self.localities)


_SET_ROLE = sa.text(f"SET LOCAL ROLE {WEB_ROLE}")
#: Dates compare with instants, and months are added, in UTC as in the household model,
#: whatever the server's TimeZone setting.
_SET_UTC = sa.text("SET LOCAL TIME ZONE 'UTC'")
_SET_SCOPE = sa.text("SELECT set_config('vatra.scope', :scope, true), "
                     "set_config('vatra.county', :county, true), "
                     "set_config('vatra.localities', :localities, true)")


async def scoped(conn: AsyncConnection, scope: Scope) -> None:
    """Take the web role and the scope for the rest of ``conn``'s current transaction
    (SQLAlchemy begins one if none is open; both settings end with it)."""
    await conn.execute(_SET_ROLE)
    await conn.execute(_SET_UTC)
    await conn.execute(_SET_SCOPE, scope.settings())


@contextlib.asynccontextmanager
async def reading(engine: AsyncEngine, scope: Scope) -> AsyncIterator[AsyncConnection]:
    """A connection in a transaction that took ``scope`` (:func:`scoped`)."""
    async with engine.connect() as conn, conn.begin():
        await scoped(conn, scope)
        yield conn


# --- the household list ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class ListFilter:
    county: str | None = None
    locality: str | None = None
    status: str | None = None
    q: str | None = None  # matched against the lower-case address and member names
    stage: str | None = None  # a case stage, or "none": no case open
    deadline: str | None = None  # a deadline code, or "any": one unmet and due ...
    due_before: dt.date | None = None  # ... before this day (None: before now, overdue)
    vulnerability: str | None = None  # a vulnerability code the household has
    overdue_service: bool | None = None  # with (True) or without (False) an overdue service
    worker: str | None = None  # a user id on the household's team
    sort: str = "updated"  # one of SORTS
    after: Position | None = None  # keyset: the last household of the previous page
    page: int = 1  # (offset pages; not used with ``after``)
    per_page: int = 20


@dataclass(frozen=True, slots=True)
class Position:
    """Where a household stands in a sorted list: its sort value and id (the value of
    the household the previous page ended with; None where it had none)."""

    value: dt.datetime | dt.date | None
    household_id: str


#: The household list's orders, each made total by the household id: newest change first
#: (the *_updated indexes' order), by id, by the earliest open service's deadline.
SORTS = ("updated", "id", "next_deadline")


def _sort_key(sort: str) -> sa.ColumnElement[Any] | None:
    h = proj_households
    return {"updated": h.c.updated_at, "next_deadline": h.c.next_deadline}.get(sort)


def _order(sort: str) -> tuple[sa.ColumnElement[Any], ...]:
    """``updated``: newest first, households without a change first (PostgreSQL's DESC
    puts NULLs first, as the index does); ``next_deadline``: soonest first, none last."""
    h = proj_households
    if sort == "updated":
        return h.c.updated_at.desc(), h.c.household_id
    if sort == "next_deadline":
        return h.c.next_deadline.asc().nulls_last(), h.c.household_id
    return (h.c.household_id,)


def _after(sort: str, at: Position) -> sa.ColumnElement[bool]:
    """The households that come after ``at`` in the order ``sort``. Written so that the
    sort value's bound is a plain comparison (``updated_at <= :v``): an index on the
    order is entered at the position, not walked from its start."""
    h = proj_households
    key, hid, v = _sort_key(sort), h.c.household_id, at.value
    later_id = hid > at.household_id
    if key is None:
        return later_id
    if sort == "updated":  # DESC, NULLs first
        if v is None:
            return sa.or_(key.is_not(None), sa.and_(key.is_(None), later_id))
        return sa.and_(key <= v, sa.or_(key < v, later_id))
    if v is None:  # next_deadline: ASC, NULLs last
        return sa.and_(key.is_(None), later_id)
    return sa.or_(key.is_(None), sa.and_(key >= v, sa.or_(key > v, later_id)))


def _overdue(service: sa.FromClause) -> sa.ColumnElement[bool]:
    # The statuses are written into the SQL, not sent as parameters: a cached generic plan
    # can then still prove the partial index's ``status IN (…)`` predicate and use it.
    open_: sa.BindParameter[list[str]] = sa.bindparam(
        "open_service", list(OPEN_SERVICE), expanding=True, literal_execute=True)
    return sa.and_(service.c.status.in_(open_), service.c.deadline < sa.func.current_date())


def _unmet(d: sa.FromClause) -> sa.ColumnElement[bool]:
    """An unmet deadline (not a minimum period): what can be due or overdue."""
    return sa.and_(d.c.met_at.is_(None), d.c.kind == sa.literal_column("'deadline'"))


def deadline_state(d: sa.FromClause) -> sa.ColumnElement[str]:
    """A deadline's state by the database's clock: what ``conflict.case.Due.state`` says by
    the tablet's (tests/test_case_webapi_functional.py checks they agree)."""
    return sa.case(
        (d.c.kind == "minimum", sa.case((sa.func.now() >= d.c.due, "complete"),
                                        else_="running")),
        (d.c.met_at.is_not(None), sa.case((d.c.met_at <= d.c.due, "met"), else_="met_late")),
        (sa.func.now() > d.c.due, "overdue"),
        else_="open").label("state")


def _like_pattern(text: str) -> str:
    escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def showing(first: int, count: int, total: int) -> str:
    """The list's position line as the field platform writes it: first and last position
    joined by an en dash, then the total (``"0 of 134"`` past the end)."""
    if count == 0:
        return f"0 of {total}"
    return f"{first}{EN_DASH}{first + count - 1} of {total}"


def household_filter(scope: Scope, f: ListFilter) -> sa.ColumnElement[bool]:
    """The household list's filter (its page aside): the scope and every criterion of ``f``."""
    h = proj_households
    conditions = [scope.where(h)]
    if f.county is not None:
        conditions.append(h.c.county == f.county)
    if f.locality is not None:
        conditions.append(h.c.locality == f.locality)
    if f.status is not None:
        conditions.append(h.c.status == f.status)
    if f.q and "\x00" in f.q:  # no text in PostgreSQL holds NUL: nothing matches
        conditions.append(sa.false())
    elif f.q:
        conditions.append(h.c.search.ilike(_like_pattern(f.q), escape="\\"))
    if f.stage == "none":
        conditions.append(h.c.case_stage.is_(None))
    elif f.stage is not None:
        conditions.append(h.c.case_stage == f.stage)
    if f.deadline is not None:
        d = case_deadlines.alias("d")
        due = sa.select(sa.literal(1)).select_from(d).where(
            d.c.household_id == h.c.household_id, _unmet(d),
            d.c.due < (sa.func.now() if f.due_before is None
                       else sa.cast(f.due_before, sa.Date)))
        if f.deadline != "any":
            due = due.where(d.c.code == f.deadline)
        conditions.append(due.exists())
    if f.vulnerability is not None:
        v = vulnerabilities.alias("v")
        conditions.append(sa.select(sa.literal(1)).select_from(v).where(
            v.c.household_id == h.c.household_id, v.c.vulnerability == f.vulnerability)
            .exists())
    if f.overdue_service is not None:
        so = services.alias("so")
        late = sa.select(sa.literal(1)).select_from(so).where(
            so.c.household_id == h.c.household_id, _overdue(so)).exists()
        conditions.append(late if f.overdue_service else sa.not_(late))
    if f.worker is not None:
        t = team.alias("t")
        conditions.append(sa.select(sa.literal(1)).select_from(t).where(
            t.c.household_id == h.c.household_id, t.c.user_id == f.worker).exists())
    return sa.and_(*conditions)


async def list_households(conn: AsyncConnection, scope: Scope, f: ListFilter) -> dict[str, Any]:
    h = proj_households
    s = services.alias("s")
    where = household_filter(scope, f)
    total = (await conn.execute(sa.select(sa.func.count()).select_from(h).where(where))).scalar_one()
    overdue = (sa.select(sa.func.count()).select_from(s)
               .where(s.c.household_id == h.c.household_id, _overdue(s))
               .scalar_subquery())
    order = _order(f.sort)
    # The page's ids first, walked in order from an index that holds every column the
    # filters (but the text) and the row-level security read, then only those rows.
    # One row more than the page: whether there is a next page is told by the rows read,
    # not by counts that statements before this one saw (a household projected meanwhile
    # would otherwise push the page's last row off and end the walk before it).
    if f.after is None:
        offset = (f.page - 1) * f.per_page
        page = (sa.select(h.c.household_id).where(where).order_by(*order)
                .limit(f.per_page + 1).offset(offset).subquery("page"))
    else:  # keyset: the households after the position, and how many there are in all
        beyond = sa.and_(where, _after(f.sort, f.after))
        offset = total - (await conn.execute(
            sa.select(sa.func.count()).select_from(h).where(beyond))).scalar_one()
        page = (sa.select(h.c.household_id).where(beyond).order_by(*order)
                .limit(f.per_page + 1).subquery("page"))
    rows = [dict(r) for r in (await conn.execute(
        sa.select(h.c.household_id.label("id"), h.c.locality, h.c.county, h.c.status, h.c.address,
                  h.c.members_present, h.c.members_total, h.c.vulnerabilities, h.c.services_open,
                  overdue.label("services_overdue"), h.c.next_deadline, h.c.last_assessment_at,
                  h.c.updated_at, h.c.updated_by, h.c.case_stage)
        .join_from(h, page, page.c.household_id == h.c.household_id)
        .order_by(*order))).mappings()]
    more = len(rows) > f.per_page
    rows = rows[:f.per_page]
    return {"total": total, "page": f.page if f.after is None else None, "per_page": f.per_page,
            "showing": showing(offset + 1, len(rows), total), "items": rows,
            "next": position(f.sort, rows[-1]) if more else None}


def position(sort: str, row: dict[str, Any]) -> Position:
    """Where the list row ``row`` stands in the order ``sort``."""
    key = {"updated": "updated_at", "next_deadline": "next_deadline"}.get(sort)
    return Position(None if key is None else row[key], row["id"])


#: The most rows a CSV export holds (a county has ~50,000 households; a national list is
#: read in pages or by county).
MAX_EXPORT_ROWS = 100_000


async def export_households(conn: AsyncConnection, scope: Scope, f: ListFilter
                            ) -> AsyncIterator[dict[str, Any]]:
    """Every household of the list ``f`` filters (its page ignored), in the list's order,
    at most :data:`MAX_EXPORT_ROWS`: the rows a CSV export writes, streamed."""
    h = proj_households
    where = household_filter(scope, f)
    query = (sa.select(h.c.household_id.label("id"), h.c.locality, h.c.county, h.c.status,
                       h.c.case_stage, h.c.address, h.c.members_present, h.c.members_total,
                       h.c.vulnerabilities, h.c.services_open, h.c.next_deadline,
                       h.c.last_assessment_at, h.c.updated_at, h.c.updated_by)
             .where(where).order_by(*_order(f.sort))
             .limit(MAX_EXPORT_ROWS + 1))  # one more: the caller says it was cut
    result = await conn.stream(query)
    async for row in result.mappings():
        yield dict(row)


def geojson_point(lon: float, lat: float, properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "Feature", "geometry": {"type": "Point", "coordinates": [lon, lat]},
            "properties": properties}


async def household_map(conn: AsyncConnection, scope: Scope, county: str | None,
                        locality: str | None, cell: float | None) -> dict[str, Any]:
    """The scope's households with a GPS fix as a GeoJSON FeatureCollection: one point
    each (``cell`` None), or, for the county and national zooms, one point per grid cell
    of ``cell`` degrees, at the cell's centre, with how many households it holds."""
    h = proj_households
    conditions = [scope.where(h), h.c.lat.is_not(None), h.c.lon.is_not(None)]
    if county is not None:
        conditions.append(h.c.county == county)
    if locality is not None:
        conditions.append(h.c.locality == locality)
    if cell is None:
        rows = await _rows(conn, sa.select(h.c.household_id, h.c.lat, h.c.lon, h.c.status,
                                           h.c.case_stage, h.c.vulnerabilities)
                           .where(*conditions).order_by(h.c.household_id))
        features = [geojson_point(r["lon"], r["lat"], {
            "id": r["household_id"], "status": r["status"], "case_stage": r["case_stage"],
            "vulnerabilities": r["vulnerabilities"]}) for r in rows]
    else:
        size = sa.literal(cell)
        gx, gy = sa.func.floor(h.c.lon / size), sa.func.floor(h.c.lat / size)
        rows = await _rows(conn, sa.select(gx.label("gx"), gy.label("gy"),
                                           sa.func.count().label("households"))
                           .where(*conditions).group_by(gx, gy).order_by(gx, gy))
        features = [geojson_point(round((r["gx"] + 0.5) * cell, 6),
                                  round((r["gy"] + 0.5) * cell, 6),
                                  {"households": r["households"], "cell_degrees": cell})
                    for r in rows]
    return {"type": "FeatureCollection", "features": features}


# --- one household's profile ------------------------------------------------

_HOUSEHOLD_COLUMNS = ("locality", "county", "status", "address", "lat", "lon", "members_present",
                      "members_total", "vulnerabilities", "services_open", "next_deadline",
                      "last_assessment_id", "last_assessment_at", "created_by", "created_at",
                      "updated_by", "updated_at", "projected_at", "case_stage",
                      "case_stage_since", "case_model")


def _columns(table: sa.Table, *skip: str) -> list[sa.Column[Any]]:
    return [c for c in table.c if c.name not in {"household_id", "locality", "county", *skip}]


async def _rows(conn: AsyncConnection, query: sa.Select[Any]) -> list[dict[str, Any]]:
    return [dict(r) for r in (await conn.execute(query)).mappings()]


async def household_place(conn: AsyncConnection, scope: Scope, household_id: str
                          ) -> dict[str, Any] | None:
    """A household's id, county and GPS fix (None outside the scope)."""
    h = proj_households
    row = (await conn.execute(sa.select(h.c.household_id, h.c.county, h.c.lat, h.c.lon).where(
        scope.where(h), h.c.household_id == household_id))).mappings().first()
    return None if row is None else dict(row)


async def household_profile(conn: AsyncConnection, scope: Scope,
                            household_id: str) -> dict[str, Any] | None:
    """Everything the web tier shows of one household, or None if it is not in the scope
    (or not there: the caller cannot tell the two apart)."""
    h = proj_households
    s = services
    overdue = (sa.select(sa.func.count()).select_from(s)
               .where(s.c.household_id == h.c.household_id, _overdue(s)).scalar_subquery())
    row = (await conn.execute(
        sa.select(h.c.household_id.label("id"), *(h.c[name] for name in _HOUSEHOLD_COLUMNS),
                  overdue.label("services_overdue"))
        .where(h.c.household_id == household_id, scope.where(h)))).mappings().first()
    if row is None:
        return None

    def of(table: sa.Table, *columns: Any, order: Any) -> sa.Select[Any]:
        return (sa.select(*columns).where(table.c.household_id == household_id, scope.where(table))
                .order_by(*order))

    return {
        "household": dict(row),
        "members": await _rows(conn, of(persons, *_columns(persons), order=[
            persons.c.last_name, persons.c.first_name, persons.c.person_id])),
        "answers": await _rows(conn, of(answers, *_columns(answers), order=[answers.c.person_id])),
        "assessments": await _rows(conn, of(assessments, *_columns(assessments), order=[
            assessments.c.completed_at.nulls_last(), assessments.c.started_at,
            assessments.c.assessment_id, assessments.c.person_id])),
        "vulnerabilities": await _rows(conn, of(vulnerabilities, *_columns(vulnerabilities), order=[
            vulnerabilities.c.vulnerability, vulnerabilities.c.subject])),
        "services": await _rows(conn, of(s, *_columns(s), _overdue(s).label("overdue"), order=[
            s.c.deadline.nulls_last(), s.c.service_id])),
        "activity": await _rows(conn, of(activity, *_columns(activity), order=[
            activity.c.position])),
        "change_requests": await _rows(conn, of(change_requests, *_columns(change_requests), order=[
            change_requests.c.requested_at.nulls_last(), change_requests.c.request_id])),
        "conflicts": await _rows(conn, of(conflicts, *_columns(conflicts), order=[
            conflicts.c.detected_at.nulls_last(), conflicts.c.conflict_id])),
        "case_deadlines": await _rows(conn, of(
            case_deadlines, *_columns(case_deadlines), deadline_state(case_deadlines),
            order=[case_deadlines.c.due, case_deadlines.c.code])),
        "visits": await _rows(conn, of(visits, *_columns(visits), order=[
            visits.c.visited_on.desc().nulls_last(), visits.c.visit_id])),
        "team": await _rows(conn, of(team, *_columns(team), order=[team.c.role])),
        "referrals": await _rows(conn, of(referrals, *_columns(referrals), order=[
            referrals.c.referred_on.desc().nulls_last(), referrals.c.referral_id])),
    }


async def county_supervisors(engine: AsyncEngine, county: str) -> list[str]:
    """The supervisors of a county (who decide its households' requests): read from the
    registry of users, outside the web role, for the household card."""
    async with engine.connect() as conn:
        return list((await conn.execute(
            sa.select(users.c.id).where(users.c.role == "supervisor", users.c.county == county,
                                        users.c.disabled_at.is_(None))
            .order_by(users.c.id))).scalars())


# --- persons across households ----------------------------------------------------

#: Months between re-assessments by a case's model (the latest case rule table's).
REASSESSMENT_MONTHS: dict[str, int] = next(
    dict(d.months_by_model) for d in load_rules().deadlines
    if d.code == "reassessment" and d.months_by_model is not None)
#: Stages in which a case is re-assessed (the same rule's).
REASSESSMENT_STAGES: tuple[str, ...] = next(
    d.in_stages or () for d in load_rules().deadlines if d.code == "reassessment")


@dataclass(frozen=True, slots=True)
class PersonFilter:
    county: str | None = None
    locality: str | None = None
    #: persons of households whose case re-assesses them (services, monitoring) whose own
    #: latest completed assessment falls due for re-assessment before this day
    reassessment_due_before: dt.date | None = None
    after: tuple[str, str] | None = None  # keyset: the last (household id, person id) seen
    per_page: int = 50


async def list_persons(conn: AsyncConnection, scope: Scope, f: PersonFilter) -> dict[str, Any]:
    """Members of the scope's households, ordered by (household id, person id), a page
    after ``f.after`` (keyset: a page's place does not move when rows are added before
    it). Each with the household's case stage, when the member was last assessed, and
    when their re-assessment falls due (from the household's case model; None without an
    open case in a stage that re-assesses)."""
    p, h = persons, proj_households
    last = (sa.select(assessments.c.household_id, assessments.c.person_id,
                      sa.func.max(assessments.c.completed_at).label("last_assessed_at"))
            .where(scope.where(assessments), assessments.c.completed_at.is_not(None),
                   # (an assessment holds an empty answer map for every member it did not
                   # reach: only the ones it answered for were assessed)
                   assessments.c.answers != sa.cast(sa.literal("{}"), postgresql.JSONB))
            .group_by(assessments.c.household_id, assessments.c.person_id).subquery("last"))
    months = sa.case(*((h.c.case_model == model, n) for model, n in REASSESSMENT_MONTHS.items()),
                     else_=None)
    due = sa.case(
        (h.c.case_stage.in_(REASSESSMENT_STAGES),
         last.c.last_assessed_at + sa.func.make_interval(0, months)),
        else_=None).label("reassessment_due")
    conditions = [scope.where(p), scope.where(h)]
    if f.county is not None:
        conditions.append(p.c.county == f.county)
    if f.locality is not None:
        conditions.append(p.c.locality == f.locality)
    if f.reassessment_due_before is not None:
        conditions += [h.c.case_stage.in_(REASSESSMENT_STAGES), p.c.presence == "present",
                       last.c.last_assessed_at + sa.func.make_interval(0, months)
                       < sa.cast(f.reassessment_due_before, sa.Date)]
    if f.after is not None:
        conditions.append(sa.tuple_(p.c.household_id, p.c.person_id) > sa.tuple_(*f.after))
    rows = await _rows(conn, sa.select(
        p.c.household_id, p.c.person_id, p.c.locality, p.c.county, p.c.first_name,
        p.c.last_name, p.c.birth_date, p.c.sex, p.c.presence, h.c.case_stage,
        last.c.last_assessed_at, due)
        .join_from(p, h, h.c.household_id == p.c.household_id)
        .outerjoin(last, sa.and_(last.c.household_id == p.c.household_id,
                                 last.c.person_id == p.c.person_id))
        .where(*conditions)
        .order_by(p.c.household_id, p.c.person_id).limit(f.per_page + 1))
    more = len(rows) > f.per_page
    rows = rows[:f.per_page]
    return {"items": rows, "next": f"{rows[-1]['household_id']}:{rows[-1]['person_id']}"
            if more else None}


# --- services across households ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServiceFilter:
    county: str | None = None
    locality: str | None = None
    status: str | None = None  # a service status
    overdue: bool | None = None  # open and past its deadline (True), or not (False)
    code: str | None = None  # a service code of the catalogue
    after: tuple[str, str] | None = None  # keyset: the last (household id, service id) seen
    per_page: int = 50


async def list_services(conn: AsyncConnection, scope: Scope, f: ServiceFilter
                        ) -> dict[str, Any]:
    """Planned services of the scope's households, by (household id, service id), a page
    after ``f.after`` (keyset), each with whether it is overdue by the database's clock."""
    s = services
    conditions = [scope.where(s)]
    if f.county is not None:
        conditions.append(s.c.county == f.county)
    if f.locality is not None:
        conditions.append(s.c.locality == f.locality)
    if f.status is not None:
        conditions.append(s.c.status == f.status)
    if f.code is not None:
        conditions.append(s.c.code == f.code)
    if f.overdue is not None:
        conditions.append(_overdue(s) if f.overdue else sa.not_(_overdue(s)))
    if f.after is not None:
        conditions.append(sa.tuple_(s.c.household_id, s.c.service_id) > sa.tuple_(*f.after))
    rows = await _rows(conn, sa.select(
        s.c.household_id, s.c.service_id, s.c.locality, s.c.county, s.c.code, s.c.person_id,
        s.c.vulnerability, s.c.deadline, s.c.status, s.c.delivered_at, s.c.delivered_by,
        _overdue(s).label("overdue"))
        .where(*conditions).order_by(s.c.household_id, s.c.service_id).limit(f.per_page + 1))
    more = len(rows) > f.per_page
    rows = rows[:f.per_page]
    return {"items": rows, "next": f"{rows[-1]['household_id']}:{rows[-1]['service_id']}"
            if more else None}


# --- comparing two assessments ------------------------------------------------------


def _instant_z(at: dt.datetime | None) -> str | None:
    return None if at is None else at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def household_assessments(conn: AsyncConnection, scope: Scope,
                                household_id: str) -> dict[str, Any] | None:
    """A household's members and assessments as plain values, rebuilt from the projections
    (what :func:`conflict.compare.compare_assessments` reads), or None outside the scope.
    An assessment that recorded no answer has no row, and is not there."""
    h = proj_households
    if (await conn.execute(sa.select(h.c.household_id).where(
            h.c.household_id == household_id, scope.where(h)))).first() is None:
        return None
    members = {r["person_id"]: {"birth_date": r["birth_date"].isoformat()
                                if r["birth_date"] is not None else None,
                                "sex": r["sex"], "presence": r["presence"],
                                "relation_to_head": r["relation_to_head"]}
               for r in await _rows(conn, sa.select(persons).where(
                   persons.c.household_id == household_id, scope.where(persons)))}
    found: dict[str, dict[str, Any]] = {}
    for r in await _rows(conn, sa.select(assessments).where(
            assessments.c.household_id == household_id, scope.where(assessments))):
        entry = found.setdefault(r["assessment_id"], {
            "started_at": _instant_z(r["started_at"]),
            "catalogue_version": r["catalogue_version"], "answers": {}})
        if r["completed_at"] is not None:
            entry["completed_at"] = _instant_z(r["completed_at"])
        entry["answers"][r["person_id"]] = r["answers"]
    return {"members": members, "assessments": found}


# --- the GD 691/2015 annex ----------------------------------------------------------


async def annex_rows(conn: AsyncConnection, scope: Scope, household_id: str
                     ) -> tuple[dict[str, Any], list[dict[str, Any]],
                                list[dict[str, Any]]] | None:
    """A household's row, its members and its parents abroad (sync_server/api/annex.py
    lays them out), or None outside the scope."""
    h = proj_households
    row = (await conn.execute(sa.select(h.c.household_id, h.c.locality, h.c.county,
                                        h.c.address)
                              .where(h.c.household_id == household_id, scope.where(h))
                              )).mappings().first()
    if row is None:
        return None
    members = await _rows(conn, sa.select(persons).where(
        persons.c.household_id == household_id, scope.where(persons)))
    abroad = await _rows(conn, sa.select(parents_abroad).where(
        parents_abroad.c.household_id == household_id, scope.where(parents_abroad)))
    return dict(row), members, abroad


# --- indicator summaries ------------------------------------------------------


def _area(scope: Scope, level: Level, code: str | None, table: sa.Table) -> sa.ColumnElement[bool]:
    if level == "locality":
        return sa.and_(scope.where(table), table.c.locality == code)
    if level == "county":
        return sa.and_(scope.where(table), table.c.county == code)
    return scope.where(table)


async def summary(conn: AsyncConnection, scope: Scope, level: Level,
                  code: str | None) -> dict[str, Any]:
    """Indicators of one locality, one county or the nation, within the scope (a county or
    locality outside it counts nothing): sums of the per-locality aggregates the projector
    keeps (sync_server/store/aggregates.py), a few rows per locality of the area."""
    ls, lv, lsv = locality_summary, locality_vulnerabilities, locality_services

    def area(table: sa.Table) -> sa.ColumnElement[bool]:
        """A locality's rows, or its county's own rows (one per county: the sums of its
        localities') for a county or the nation."""
        if level == "locality":
            return _area(scope, level, code, table)
        return sa.and_(_area(scope, level, code, table), table.c.locality == COUNTY_WIDE)

    def total(column: sa.ColumnElement[Any], table: sa.Table, *where: sa.ColumnElement[bool]
              ) -> sa.ScalarSelect[Any]:
        return (sa.select(sa.func.coalesce(sa.func.sum(column), 0))
                .where(area(table), *where).scalar_subquery())

    counts = (await conn.execute(sa.select(
        sa.func.current_date().label("as_of"),
        total(ls.c.households, ls).label("households"),
        total(ls.c.children_assessed, ls).label("children_assessed"),
        total(ls.c.vulnerable_children, ls).label("vulnerable_children"),
        total(lsv.c.services, lsv, lsv.c.deadline < sa.func.current_date())
        .label("overdue_services")))).mappings().one()
    per_code = await _rows(conn, sa.select(
        lv.c.vulnerability.label("code"),
        *(sa.cast(sa.func.sum(lv.c[m]), sa.Integer).label(m)
          for m in ("children", "adults", "households", "persons")))
        .where(area(lv))
        .group_by(lv.c.vulnerability).order_by(lv.c.vulnerability))
    return {"level": level, "code": code if level != "national" else None,
            **{k: v if k == "as_of" else int(v) for k, v in counts.items()},
            "vulnerabilities": per_code}


async def summary_from_rows(conn: AsyncConnection, scope: Scope, level: Level,
                            code: str | None) -> dict[str, Any]:
    """:func:`summary` counted from the projection rows themselves, as it was before the
    aggregates: what the tests and ``vatra_devtools.bench_summary`` check them against."""

    def area(table: sa.Table) -> sa.ColumnElement[bool]:
        return _area(scope, level, code, table)

    v, a, s = vulnerabilities, answers, services
    age = a.c.age_at_assessment

    def members(*where: sa.ColumnElement[bool]) -> sa.Select[Any]:
        """(household, person) of the area's answer rows that match ``where``."""
        return sa.select(a.c.household_id, a.c.person_id).where(area(a), *where)

    # A vulnerable child: a member under 18 on the assessment's day with any vulnerability
    # of their own (child-only ones, and "person" ones such as no health insurance).
    # No joins: an answer row and its person's vulnerabilities are matched by a hashed
    # ``IN (subquery)``, each table read once through its own area filter (all the rows of
    # a household carry its locality and county, so both are in the same area). A join is
    # planned from the row-level security's estimate (~0.5% of the rows): a nested loop,
    # one index probe per row.
    vulnerable = sa.tuple_(a.c.household_id, a.c.person_id).in_(
        sa.select(v.c.household_id, v.c.person_id).where(area(v), v.c.person_id.is_not(None)))
    children = (sa.select(sa.func.count().label("children_assessed"),
                          sa.func.count().filter(vulnerable).label("vulnerable_children"))
                .where(area(a), age < ADULT_AGE).subquery())
    counts = (await conn.execute(sa.select(
        sa.func.current_date().label("as_of"),
        sa.select(sa.func.count()).select_from(proj_households).where(area(proj_households))
        .scalar_subquery().label("households"),
        children.c.children_assessed, children.c.vulnerable_children,
        sa.select(sa.func.count()).select_from(s).where(area(s), _overdue(s))
        .scalar_subquery().label("overdue_services")))).mappings().one()

    # Only a "person" vulnerability needs its person's age at the assessment (answers).
    # Read in the (area, code, household) index's order: no sort for the distinct count.
    person = sa.tuple_(v.c.household_id, v.c.person_id)
    per_code = await _rows(conn, sa.select(
        v.c.vulnerability.label("code"),
        sa.func.count().filter(sa.or_(v.c.population == "child", sa.and_(
            v.c.population == "person", person.in_(members(age < ADULT_AGE))))).label("children"),
        sa.func.count().filter(sa.or_(v.c.population == "adult", sa.and_(
            v.c.population == "person", person.in_(members(age >= ADULT_AGE))))).label("adults"),
        sa.func.count(sa.distinct(v.c.household_id)).label("households"),
        sa.func.count(v.c.person_id).label("persons"))
        .where(area(v))
        .group_by(v.c.vulnerability).order_by(v.c.vulnerability))
    return {"level": level, "code": code if level != "national" else None, **counts,
            "vulnerabilities": per_code}
