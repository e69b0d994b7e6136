"""Row-level security on the ``proj`` schema: a web-tier session scoped to a locality, a
county or the nation sees only its rows, in every table (real PostgreSQL)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from conflict import Household
from sync_server.projection.projector import Projector
from sync_server.store.aggregates import AGGREGATES, COUNTY_WIDE
from sync_server.store.contract import HouseholdRecord
from sync_server.store.tables import PROJ_TABLES, SCHEMA, WEB_ROLE
from sync_server.sync.apply import stored

#: Every table of the schema: the projection's and the per-locality aggregates.
TABLES = (*PROJ_TABLES, *AGGREGATES)

pytestmark = pytest.mark.functional

PLACES = [("54975", "CJ"), ("55012", "CJ"), ("32394", "BN")]


async def seed(store) -> dict[tuple[str, str], str]:
    """One household per place, each with every kind of row the projection has."""
    ids = {}
    for locality, county in PLACES:
        h = Household.create(locality=locality, county=county, address="Str. Mare 1",
                             author="ana", at="2026-01-05T09:00:00Z")
        pid = h.add_member("Ion", "Pop", "2014-02-03", "M", "child")
        aid = h.start_assessment(at="2026-01-06T09:00:00Z")
        h.record_answers(aid, pid, {"family_doctor_registered": False})
        h.complete_assessment(aid, at="2026-01-06T10:00:00Z")
        h.plan_service("information", pid, "child_no_family_doctor", "2026-01-20")
        h.request_change("remove_member", {"person_id": pid}, "moved",
                         at="2026-01-07T09:00:00Z")
        h.record_conflict(("address",), ["Str. Mare 1", "Str. Mare 2"], at="2026-01-08T09:00:00Z")
        h.open_case(identified_at="2026-01-05T09:00:00Z", at="2026-01-05T09:00:00Z")
        h.record_visit(visited_on="2026-01-06", place="home", purpose="initial assessment",
                       participants=[pid], synthesis="", at="2026-01-06T12:00:00Z")
        h.record_parent_abroad(pid, parent="mother", country="IT", since="2025-09-01",
                               carer_name="Ana Pop", carer_relation="bunica",
                               at="2026-01-06T12:00:00Z")
        h.refer({"id": "0b8e7c36-55a0-4d55-8a5e-3c8a3b0e0d11", "name": "DGASPC",
                 "kind": "child_protection", "phone": "0264 420 000"},
                reason="assessment", person_id=pid, at="2026-01-06T12:00:00Z")
        await store.create_household(HouseholdRecord(h.household_id, locality, county),
                                     stored(h.doc.get_changes([])))
        ids[(locality, county)] = h.household_id
    return ids


async def read_as(engine, statements: list[str], table: sa.Table) -> list[tuple[str, str]]:
    """(locality, county) of every row of ``table`` a web-tier session with ``statements``
    sees: the statements docs/projections.md tells the web tier to run."""
    async with engine.connect() as conn, conn.begin():
        await conn.exec_driver_sql(f"SET LOCAL ROLE {WEB_ROLE}")
        for statement in statements:
            await conn.exec_driver_sql(statement)
        rows = await conn.execute(sa.select(table.c.locality, table.c.county))
        return sorted({(r.locality, r.county) for r in rows})


def with_counties(table: sa.Table, places: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """``places`` and, in an aggregate table, their counties' own rows (locality "*")."""
    if table not in AGGREGATES:
        return places
    return sorted({*places, *((COUNTY_WIDE, c) for _, c in places)})


def county(code: str) -> list[str]:
    return [f"SELECT set_config('vatra.scope', 'county', true), "
            f"set_config('vatra.county', '{code}', true)"]


@pytest.fixture
async def projected(store, engine):
    ids = await seed(store)
    await Projector(engine, store).drain_all()
    async with engine.connect() as conn:  # the owner sees everything: both counties, everywhere
        for table in TABLES:
            counties = (await conn.execute(sa.select(table.c.county).distinct())).scalars()
            assert sorted(counties) == ["BN", "CJ"], table.name
    return ids


async def test_every_table_of_the_schema_is_under_row_level_security(engine, projected) -> None:
    async with engine.connect() as conn:
        names = (await conn.execute(sa.text(
            "SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = :s AND c.relkind = 'r' AND NOT c.relrowsecurity"),
            {"s": SCHEMA})).scalars().all()
        tables = (await conn.execute(sa.text(
            "SELECT count(*) FROM pg_tables WHERE schemaname = :s"), {"s": SCHEMA})).scalar()
    assert names == [] and tables == len(TABLES)


async def test_a_county_session_reads_only_its_county_in_every_table(engine, projected) -> None:
    for table in TABLES:
        assert await read_as(engine, county("CJ"), table) == \
            with_counties(table, [("54975", "CJ"), ("55012", "CJ")])
        assert await read_as(engine, county("BN"), table) == with_counties(table, [("32394", "BN")])
        # Asking for the other county's rows outright still returns nothing.
        async with engine.connect() as conn, conn.begin():
            await conn.exec_driver_sql(f"SET LOCAL ROLE {WEB_ROLE}")
            await conn.exec_driver_sql(county("CJ")[0])
            leaked = (await conn.execute(sa.select(sa.func.count()).select_from(table)
                                         .where(table.c.county == "BN"))).scalar()
        assert leaked == 0, table.name


async def test_locality_and_national_scopes(engine, projected) -> None:
    locality = ["SELECT set_config('vatra.scope', 'locality', true), "
                "set_config('vatra.localities', '55012,32394', true)"]
    national = ["SELECT set_config('vatra.scope', 'national', true)"]
    for table in TABLES:
        # (a county's own aggregate rows sum localities outside a locality scope: hidden)
        assert await read_as(engine, locality, table) == [("32394", "BN"), ("55012", "CJ")]
        assert len(await read_as(engine, national, table)) == (5 if table in AGGREGATES else 3)


async def test_a_session_without_a_scope_sees_nothing_and_writes_nothing(engine, projected) -> None:
    for table in TABLES:
        assert await read_as(engine, [], table) == []
        assert await read_as(engine, ["SELECT set_config('vatra.scope', 'planet', true)"],
                             table) == []
    with pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
        async with engine.connect() as conn, conn.begin():
            await conn.exec_driver_sql(f"SET LOCAL ROLE {WEB_ROLE}")
            await conn.exec_driver_sql(county("CJ")[0])
            await conn.exec_driver_sql("DELETE FROM proj.households")
    for private in ("changes", "household_keys", "users", "audit"):
        with pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
            async with engine.connect() as conn, conn.begin():
                await conn.exec_driver_sql(f"SET LOCAL ROLE {WEB_ROLE}")
                await conn.exec_driver_sql(f"SELECT count(*) FROM public.{private}")


async def test_the_scope_ends_with_the_transaction(engine, projected) -> None:
    async with engine.connect() as conn:
        async with conn.begin():
            await conn.exec_driver_sql(f"SET LOCAL ROLE {WEB_ROLE}")
            await conn.exec_driver_sql(county("CJ")[0])
        # The pooled connection goes back as its login role with no scope.
        role = (await conn.execute(sa.text("SELECT current_user"))).scalar()
        scope = (await conn.execute(sa.text(
            "SELECT current_setting('vatra.scope', true)"))).scalar()
    assert role != WEB_ROLE and scope in (None, "")
