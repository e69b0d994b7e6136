"""The web tier's read API over signed HTTP: lists, profiles and summaries, each within
the caller's scope (real server, real PostgreSQL, row-level security on)."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import pytest
import sqlalchemy as sa
from aiohttp import web
from yarl import URL

from client_sdk import SyncClient
from sync_server.app import ENGINE, PROJECTOR
from sync_server.auth.identity import User
from sync_server.projection.readmodel import NoReadScope, Scope, scoped
from sync_server.protocol.http_auth import sign
from sync_server.store.tables import proj_households

pytestmark = pytest.mark.functional

ASSESSED = "2026-03-01"
TODAY = dt.date.today()
PAST, FUTURE = "2020-01-10", "2099-01-01"  # far from today: no flake at midnight


@dataclass
class Member:
    first: str
    last: str
    born: str
    relation: str
    answers: dict[str, Any] = field(default_factory=dict)
    #: what the catalogue derives from the answers: (vulnerability, population)
    expect: list[tuple[str, str]] = field(default_factory=list)

    @property
    def age(self) -> int:
        born, on = dt.date.fromisoformat(self.born), dt.date.fromisoformat(ASSESSED)
        return on.year - born.year - ((on.month, on.day) < (born.month, born.day))


@dataclass
class Spec:
    key: str
    worker: str
    locality: str
    county: str
    address: str
    status: str
    members: list[Member]
    household_expect: list[str] = field(default_factory=list)  # household-level vulnerabilities
    services: list[tuple[int, str, str]] = field(default_factory=list)  # member, deadline, status
    request: bool = False


SPECS = [
    Spec("h1", "ana", "54975", "CJ", "Str. Lunga 3", "active", [
        Member("Ion", "Pop", "1980-05-10", "head",
               {"family_doctor_registered": False, "employment_status": "unemployed",
                "single_parent": True},
               [("adult_no_family_doctor", "adult"), ("unemployment", "adult")]),
        Member("Ana", "Pop", "2015-04-01", "child",
               {"family_doctor_registered": False, "vaccination_status": "complete"},
               [("child_no_family_doctor", "child")])],
        household_expect=["single_parent_household"],
        services=[(1, PAST, "planned"), (0, FUTURE, "planned"), (1, PAST, "delivered")],
        request=True),
    Spec("h2", "ana", "55000", "CJ", "Str. Mare 10", "registration", [
        Member("Maria", "Ionescu", "2012-06-15", "child",
               {"health_insurance": False, "vaccination_status": "incomplete"},
               [("incomplete_vaccination", "child"), ("no_health_insurance", "person")]),
        Member("Elena", "Ionescu", "1990-01-01", "head", {"health_insurance": False},
               [("no_health_insurance", "person")])],
        services=[(0, PAST, "in_progress")]),
    Spec("h3", "ana", "54975", "CJ", "Bd. Unirii 7", "closed", [
        Member("Vasile", "Rus", "1950-03-03", "head")]),
    Spec("h4", "bob", "40198", "BV", "Str. Brasov 1", "active", [
        Member("Dan", "Stan", "2010-02-02", "child", {"family_doctor_registered": False},
               [("child_no_family_doctor", "child")])],
        services=[(0, PAST, "planned")]),
    Spec("h5", "bob", "40198", "BV", "Str. Lunga 9", "registration", [
        Member("Ana", "Lungu", "2001-07-07", "head")]),
]
WORKERS = {"ana": [("54975", "CJ"), ("55000", "CJ")], "bob": [("40198", "BV")],
           "cara": [("55000", "CJ")]}
OTHERS = {"nat": {"role": "national", "county": None}, "sup-cj": {"role": "supervisor"},
          "sup-bv": {"role": "supervisor", "county": "BV"},
          "adm": {"role": "admin", "county": None}, "op": {"role": "ops", "county": None}}


@dataclass
class World:
    http_url: str
    tablets: dict[str, Any]
    ids: dict[str, str]                      # spec key -> household id
    people: dict[str, list[str]]             # spec key -> person ids (in member order)
    services: dict[str, list[str]]
    requests: dict[str, str]
    server_url: str = ""
    drain: Any = None  # the projector's drain_all

    def key_of(self, hid: str) -> str:
        return next(k for k, v in self.ids.items() if v == hid)

    async def get(self, who: str | None, path: str, **params: Any) -> tuple[int, Any, Any]:
        """A GET signed by ``who``'s device (unsigned when None); the answer as JSON."""
        status, text, headers = await self.get_text(who, path, **params)
        return status, json.loads(text), headers

    async def get_text(self, who: str | None, path: str, **params: Any) -> tuple[int, str, Any]:
        """A GET signed by ``who``'s device (unsigned when None); the answer as text."""
        path_qs = path + ("?" + urlencode(params, quote_via=quote) if params else "")
        headers = {}
        if who is not None:
            creds = self.tablets[who].credentials
            headers["Authorization"] = sign(creds.device_id, creds.signing_key, "GET", path_qs)
        async with aiohttp.ClientSession() as session, session.get(
                URL(self.http_url + path_qs, encoded=True), headers=headers) as resp:
            return resp.status, await resp.text(), resp.headers


@pytest.fixture
async def world(server, provision) -> World:
    tablets = {}
    for name, places in WORKERS.items():
        tablets[name] = await provision.tablet(name, localities=places)
    for name, kw in OTHERS.items():
        tablets[name] = await provision.tablet(name, **kw)
    ids, people, services, requests = {}, {}, {}, {}
    for spec in SPECS:
        tablet = tablets[spec.worker]
        hid = tablet.create_household(locality=spec.locality, county=spec.county,
                                      address=spec.address).household_id
        with tablet.edit(hid) as e:
            pids = [e.add_member(m.first, m.last, m.born, "F", m.relation) for m in spec.members]
            if any(m.answers for m in spec.members):
                aid = e.start_assessment(at=f"{ASSESSED}T09:00:00Z")
                for pid, m in zip(pids, spec.members, strict=True):
                    if m.answers:
                        e.record_answers(aid, pid, m.answers)
                e.complete_assessment(aid, at=f"{ASSESSED}T10:00:00Z")
            services[spec.key] = []
            for who, deadline, status in spec.services:
                sid = e.plan_service("information", pids[who], "child_no_family_doctor", deadline)
                if status != "planned":
                    e.set_service_status(sid, status, at="2026-03-02T10:00:00Z")
                services[spec.key].append(sid)
            if spec.request:
                requests[spec.key] = e.request_change(
                    "change_presence", {"person_id": pids[0], "presence": "moved"},
                    "moved away")
            e.set_status(spec.status)
        ids[spec.key], people[spec.key] = hid, pids
    for name in WORKERS:
        await SyncClient(tablets[name], server.url).sync()
    await server.app[PROJECTOR].drain_all()
    return World(server.http_url, tablets, ids, people, services, requests, server.url,
                 server.app[PROJECTOR].drain_all)


def expected_summary(specs: list[Spec]) -> dict[str, Any]:
    """The summary's numbers, counted from the specs (not from the database)."""
    per_code: dict[str, dict[str, set]] = defaultdict(lambda: defaultdict(set))
    children_assessed = 0
    vulnerable_children = set()
    for spec in specs:
        for code in spec.household_expect:
            per_code[code]["households"].add(spec.key)
        for i, m in enumerate(spec.members):
            children_assessed += bool(m.answers) and m.age < 18
            for code, population in m.expect:
                subject = (spec.key, i)
                per_code[code]["households"].add(spec.key)
                per_code[code]["persons"].add(subject)
                per_code[code]["children" if m.age < 18 else "adults"].add(subject)
                if population == "child":
                    vulnerable_children.add(subject)
    overdue = sum(1 for spec in specs for _, deadline, status in spec.services
                  if status in ("planned", "in_progress")
                  and dt.date.fromisoformat(deadline) < TODAY)
    return {"households": len(specs), "children_assessed": children_assessed,
            "vulnerable_children": len(vulnerable_children), "overdue_services": overdue,
            "vulnerabilities": [{"code": code, **{k: len(counts[k]) for k in (
                "children", "adults", "households", "persons")}}
                for code, counts in sorted(per_code.items())]}


def keys(world: World, answer: dict[str, Any]) -> list[str]:
    return [world.key_of(item["id"]) for item in answer["items"]]


async def test_national_lists_everything_newest_first_in_pages(world: World) -> None:
    status, answer, headers = await world.get("nat", "/v1/web/households")
    assert status == 200 and headers["Cache-Control"] == "no-store"
    assert (answer["total"], answer["page"], answer["per_page"]) == (5, 1, 20)
    assert answer["showing"] == "1\u20135 of 5"
    items = answer["items"]
    assert sorted(keys(world, answer)) == ["h1", "h2", "h3", "h4", "h5"]
    assert [i["id"] for i in items] == [i["id"] for i in sorted(
        sorted(items, key=lambda i: i["id"]), key=lambda i: i["updated_at"], reverse=True)]

    pages = []
    for page, showing in ((1, "1\u20132 of 5"), (2, "3\u20134 of 5"), (3, "5\u20135 of 5"),
                          (4, "0 of 5")):
        status, answer, _ = await world.get("nat", "/v1/web/households", page=page, per_page=2)
        assert status == 200 and (answer["showing"], answer["total"]) == (showing, 5)
        pages += [i["id"] for i in answer["items"]]
    assert pages == [i["id"] for i in items]  # the pages cut the same order

    h1 = next(i for i in items if i["id"] == world.ids["h1"])
    assert h1 == {**h1, "locality": "54975", "county": "CJ", "status": "active",
                  "address": "Str. Lunga 3", "members_present": 2, "members_total": 2,
                  "vulnerabilities": 4, "services_open": 2, "services_overdue": 1,
                  "updated_by": "ana"}
    assert h1["last_assessment_at"].startswith(f"{ASSESSED}T10:00:00")
    assert dt.datetime.fromisoformat(h1["updated_at"]).tzinfo is not None


SORTED = {
    "updated": lambda i: (-dt.datetime.fromisoformat(i["updated_at"]).timestamp(), i["id"]),
    "id": lambda i: i["id"],
    "next_deadline": lambda i: (i["next_deadline"] is None, i["next_deadline"] or "", i["id"]),
}


async def test_the_list_sorts_and_pages_by_keyset(world: World, subtests) -> None:
    """Each order is total (ties by id); walking it with after= gives every household
    once, in that order, with the same showing as offset pages, and a household that
    moves to the top meanwhile does not make a later page repeat or skip another."""
    for sort, key in SORTED.items():
        with subtests.test(sort=sort):
            status, whole, _ = await world.get("nat", "/v1/web/households", sort=sort)
            assert status == 200 and whole["next"] is None
            assert [i["id"] for i in whole["items"]] == \
                [i["id"] for i in sorted(whole["items"], key=key)]
            seen, showings, after = [], [], None
            for _ in range(5):
                params: dict[str, Any] = {"sort": sort, "per_page": 2,
                                          **({"after": after} if after else {})}
                status, page, _ = await world.get("nat", "/v1/web/households", **params)
                assert status == 200 and page["page"] == (None if after else 1)
                seen += [i["id"] for i in page["items"]]
                showings.append(page["showing"])
                after = page["next"]
                if after is None:
                    break
            assert seen == [i["id"] for i in whole["items"]]
            assert showings == ["1\u20132 of 5", "3\u20134 of 5", "5\u20135 of 5"]
    status, first, _ = await world.get("nat", "/v1/web/households", per_page=2)
    ahead = first["items"][0]["id"]
    tablet = world.tablets[next(s.worker for s in SPECS if world.ids[s.key] == ahead)]
    with tablet.edit(ahead) as h:
        h.set_notes("seen again")
    await SyncClient(tablet, world.server_url).sync()
    await world.drain()
    status, rest, _ = await world.get("nat", "/v1/web/households", per_page=10,
                                      after=first["next"])
    later = [i["id"] for i in rest["items"]]
    assert ahead not in later and len(later) == 3
    assert set(later) | {i["id"] for i in first["items"]} == set(world.ids.values())


FILTERS = [
    ({"county": "BV"}, ["h4", "h5"]),
    ({"county": "CJ", "locality": "54975"}, ["h1", "h3"]),
    ({"locality": "55000"}, ["h2"]),
    ({"status": "registration"}, ["h2", "h5"]),
    ({"status": "active", "county": "CJ"}, ["h1"]),
    ({"q": "lunga"}, ["h1", "h5"]),         # the address
    ({"q": "POP"}, ["h1"]),                 # a member's name, any case
    ({"q": "lungu"}, ["h5"]),
    ({"q": "str. m"}, ["h2"]),
    ({"q": "%"}, []), ({"q": "_"}, []),     # LIKE wildcards are escaped: plain characters
    ({"q": "\\"}, []),
    ({"county": "SB"}, []),
    ({"vulnerability": "unemployment"}, ["h1"]),
    ({"vulnerability": "no_health_insurance"}, ["h2"]),
    ({"overdue_service": "true"}, ["h1", "h2", "h4"]),
    ({"overdue_service": "false"}, ["h3", "h5"]),
    ({"worker": "bob"}, ["h4", "h5"]),
    ({"worker": "ana", "status": "active"}, ["h1"]),
    ({"worker": "nobody"}, []),
]


async def test_filters(world: World, subtests) -> None:
    for params, expected in FILTERS:
        with subtests.test(**params):
            status, answer, _ = await world.get("nat", "/v1/web/households", **params)
            assert status == 200
            assert sorted(keys(world, answer)) == expected
            assert answer["total"] == len(expected)
            assert answer["showing"] == (f"1\u2013{len(expected)} of {len(expected)}"
                                         if expected else "0 of 0")


async def test_a_profile_has_everything_the_projection_holds(world: World) -> None:
    hid = world.ids["h1"]
    status, p, headers = await world.get("ana", f"/v1/web/households/{hid}")
    assert status == 200 and headers["Cache-Control"] == "no-store"
    assert p["household"] == {**p["household"], "id": hid, "status": "active",
                              "address": "Str. Lunga 3", "services_open": 2,
                              "services_overdue": 1, "next_deadline": PAST,
                              "created_by": "ana", "members_total": 2}
    ion, ana = world.people["h1"]
    assert [(m["person_id"], m["first_name"], m["last_name"], m["birth_date"])
            for m in p["members"]] == [(ana, "Ana", "Pop", "2015-04-01"),
                                       (ion, "Ion", "Pop", "1980-05-10")]
    answers = {a["person_id"]: a for a in p["answers"]}
    assert answers[ana]["answers"] == SPECS[0].members[1].answers
    assert (answers[ana]["age_at_assessment"], answers[ion]["age_at_assessment"]) == (10, 45)
    assert sorted((v["vulnerability"], v["person_id"], v["population"])
                  for v in p["vulnerabilities"]) == sorted([
        ("adult_no_family_doctor", ion, "adult"), ("unemployment", ion, "adult"),
        ("child_no_family_doctor", ana, "child"), ("single_parent_household", None, "household")])
    assert all(v["identified_on"] == ASSESSED for v in p["vulnerabilities"])
    overdue, later, delivered = world.services["h1"]
    assert {s["service_id"]: (s["status"], s["overdue"]) for s in p["services"]} == {
        overdue: ("planned", True), later: ("planned", False), delivered: ("delivered", False)}
    assert next(s for s in p["services"] if s["service_id"] == delivered)["delivered_at"] \
        .startswith("2026-03-02T10:00:00")
    assert p["activity"][0]["kind"] == "registered"
    assert [a["position"] for a in p["activity"]] == list(range(len(p["activity"])))
    [req] = p["change_requests"]
    assert (req["request_id"], req["kind"], req["status"], req["reason"]) == \
        (world.requests["h1"], "change_presence", "pending", "moved away")
    assert req["payload"] == {"person_id": ion, "presence": "moved"}
    assert p["conflicts"] == []


VISIBLE = {"ana": ["h1", "h2", "h3"], "cara": ["h2"], "bob": ["h4", "h5"],
           "sup-cj": ["h1", "h2", "h3"], "sup-bv": ["h4", "h5"],
           "nat": ["h1", "h2", "h3", "h4", "h5"]}


async def test_each_role_reads_only_its_scope(world: World, subtests) -> None:
    """A worker reads their localities, a supervisor their county, national all; a
    household outside the scope answers exactly like one that does not exist."""
    missing = await world.get("nat", "/v1/web/households/2LEMvtjTyQ4BhbvJAoULAvGxfMTq")
    assert missing[:2] == (404, {"code": "not-found", "message": "no such household"})
    assert (await world.get("nat", "/v1/web/households/not-an-id"))[:2] == missing[:2]
    county_of = {s.key: s.county for s in SPECS}
    for who, visible in VISIBLE.items():
        with subtests.test(who=who):
            _, answer, _ = await world.get(who, "/v1/web/households")
            assert sorted(keys(world, answer)) == visible and answer["total"] == len(visible)
            # Asking for another county's households finds nothing; it is not an error.
            for county in ("CJ", "BV"):
                status, answer, _ = await world.get(who, "/v1/web/households", county=county)
                assert status == 200
                assert sorted(keys(world, answer)) == [k for k in visible
                                                       if county_of[k] == county]
            for key, hid in world.ids.items():
                status, answer, _ = await world.get(who, f"/v1/web/households/{hid}")
                if key in visible:
                    assert status == 200 and answer["household"]["id"] == hid
                else:
                    assert (status, answer) == missing[:2]


SUMMARIES = [
    ("nat", "national", None, ["h1", "h2", "h3", "h4", "h5"]),
    ("nat", "county", "CJ", ["h1", "h2", "h3"]),
    ("nat", "locality", "54975", ["h1", "h3"]),
    ("sup-cj", "county", "CJ", ["h1", "h2", "h3"]),
    ("sup-cj", "locality", "55000", ["h2"]),
    ("sup-bv", "county", "BV", ["h4", "h5"]),
    ("sup-bv", "county", "CJ", []),          # another county: counts nothing
    ("ana", "locality", "55000", ["h2"]),
    ("cara", "locality", "54975", []),       # not one of hers
]


async def test_summaries_count_what_was_recorded(world: World, subtests) -> None:
    for who, level, code, included in SUMMARIES:
        with subtests.test(who=who, level=level, code=code):
            params = {"level": level, **({"code": code} if code else {})}
            status, answer, headers = await world.get(who, "/v1/web/summary", **params)
            assert status == 200 and headers["Cache-Control"] == "no-store"
            expected = expected_summary([s for s in SPECS if s.key in included])
            assert {k: answer[k] for k in expected} == expected
            assert (answer["level"], answer["code"]) == (level, code)
            assert abs(dt.date.fromisoformat(answer["as_of"]) - TODAY) <= dt.timedelta(days=1)


BAD_PARAMETERS = [
    ("/v1/web/households", {"status": "bogus"}, "status-enum"),
    ("/v1/web/households", {"vulnerability": "bogus"}, "vulnerability-enum"),
    ("/v1/web/households", {"overdue_service": "yes"}, "overdue-service-enum"),
    ("/v1/web/households", {"worker": "no one"}, "worker-format"),
    ("/v1/web/households.csv", {"status": "bogus"}, "status-enum"),
    ("/v1/web/map", {"cell": "9"}, "cell-range"),
    ("/v1/web/services", {"status": "done"}, "status-enum"),
    ("/v1/web/services", {"overdue": "maybe"}, "overdue-enum"),
    ("/v1/web/services", {"code": "haircut"}, "code-enum"),
    ("/v1/web/services", {"after": "x y"}, "after-format"),
    ("/v1/web/households", {"sort": "address"}, "sort-enum"),
    ("/v1/web/households", {"after": "x y"}, "after-format"),
    ("/v1/web/households", {"after": "1.0OIl"}, "after-format"),  # not base58
    ("/v1/web/map", {"cell": "wide"}, "cell-range"),
    ("/v1/web/households", {"page": "0"}, "page-range"),
    ("/v1/web/households", {"page": "two"}, "page-range"),
    ("/v1/web/households", {"page": "-1"}, "page-range"),
    ("/v1/web/households", {"per_page": "101"}, "per-page-range"),
    ("/v1/web/households", {"per_page": "0"}, "per-page-range"),
    ("/v1/web/households", {"per_page": " 5"}, "per-page-range"),
    ("/v1/web/households", {"county": "cj"}, "county-format"),
    ("/v1/web/households", {"locality": "54975x"}, "locality-format"),
    ("/v1/web/households", {"q": "x" * 101}, "q-length"),
    ("/v1/web/summary", {}, "level-enum"),
    ("/v1/web/summary", {"level": "planet"}, "level-enum"),
    ("/v1/web/summary", {"level": "county"}, "code-required"),
    ("/v1/web/summary", {"level": "locality", "code": "54 975"}, "code-format"),
]


async def test_refusals(world: World, subtests) -> None:
    """Wider summaries than the scope (403), admins / ops (403), unsigned or badly signed
    calls (401) and parameters that break a rule (400, the rule named)."""
    for who, level, code in (("ana", "county", "CJ"), ("sup-cj", "national", None),
                             ("cara", "national", None)):
        params = {"level": level, **({"code": code} if code else {})}
        status, answer, _ = await world.get(who, "/v1/web/summary", **params)
        assert (status, answer["code"]) == (403, "level-outside-scope")
    paths = [("/v1/web/households", {}), (f"/v1/web/households/{world.ids['h1']}", {}),
             ("/v1/web/summary", {"level": "national"})]
    for path, params in paths:
        for who in ("adm", "op"):
            status, answer, _ = await world.get(who, path, **params)
            assert (status, answer["code"]) == (403, "forbidden")
        status, answer, _ = await world.get(None, path, **params)
        assert (status, answer["code"]) == (401, "unauthorized")
    # A signature for one query does not cover another.
    creds = world.tablets["nat"].credentials
    header = sign(creds.device_id, creds.signing_key, "GET", "/v1/web/households?county=CJ")
    async with aiohttp.ClientSession() as session, session.get(
            f"{world.http_url}/v1/web/households?county=BV",
            headers={"Authorization": header}) as resp:
        assert resp.status == 401
    for path, params, rule in BAD_PARAMETERS:
        with subtests.test(path=path, **params):
            status, answer, _ = await world.get("nat", path, **params)
            assert (status, answer["code"]) == (400, rule)
            assert answer["message"]



async def test_row_level_security_holds_without_a_filter(server, world: World) -> None:
    """A query that forgets the scope's filter still sees only the scope's rows: the
    database enforces it once the transaction took the web role and the scope."""
    engine = server.app[ENGINE]
    for scope, expected in ((Scope("county", county="BV"), {"h4", "h5"}),
                            (Scope("locality", localities=("55000", "54975")), {"h1", "h2", "h3"}),
                            (Scope("locality"), set()),
                            (Scope("national"), {"h1", "h2", "h3", "h4", "h5"})):
        async with engine.connect() as conn, conn.begin():
            await scoped(conn, scope)
            seen = (await conn.execute(sa.select(proj_households.c.household_id))).scalars()
            assert {world.key_of(h) for h in seen} == expected
    async with engine.connect() as conn, conn.begin():  # the web role and no scope: nothing
        await conn.execute(sa.text("SET LOCAL ROLE vatra_web"))
        assert (await conn.execute(sa.select(sa.func.count()).select_from(proj_households))
                ).scalar_one() == 0


def test_scopes_of_users() -> None:
    assert Scope.of(User("n", "national", None)) == Scope("national")
    assert Scope.of(User("s", "supervisor", "CJ")) == Scope("county", county="CJ")
    assert Scope.of(User("w", "worker", None, (("55000", "CJ"), ("54975", "CJ")))) == \
        Scope("locality", localities=("54975", "55000"))
    for role in ("admin", "ops"):
        with pytest.raises(NoReadScope):
            Scope.of(User("a", role, None))


async def test_the_openapi_document_has_the_web_api(server) -> None:
    async with aiohttp.ClientSession() as session, session.get(
            f"{server.http_url}/v1/openapi.json") as resp:
        doc = await resp.json()
    assert {"/v1/web/households", "/v1/web/households/{household_id}",
            "/v1/web/summary"} <= set(doc["paths"])
    assert "/v1/requests" in doc["paths"]  # merged, not replaced
    assert doc["paths"]["/v1/web/summary"]["get"]["security"] == [{"device": []}]


def test_the_access_log_leaves_out_query_strings(caplog) -> None:
    """A list filter may hold a person's name: the access log writes the path only."""
    from aiohttp.test_utils import make_mocked_request

    from sync_server.app import AccessLogger

    logger = logging.getLogger("test.access")
    request = make_mocked_request("GET", "/v1/web/households?q=Maria+Popescu")
    with caplog.at_level(logging.INFO, logger="test.access"):
        AccessLogger(logger, "").log(request, web.Response(status=200), 0.0123)
    assert caplog.messages == ["GET /v1/web/households 200 12.3 ms"]


async def test_the_card_names_the_team_and_the_countys_supervisors(world: World) -> None:
    status, p, _ = await world.get("sup-cj", f"/v1/web/households/{world.ids['h1']}")
    assert status == 200
    assert p["team"] == [{"role": "social_worker", "user_id": "ana"}]
    assert p["supervisors"] == ["sup-cj"]


async def test_the_list_exports_as_csv_with_its_filters(world: World) -> None:
    """Every household the filters select, in the list's order; a text a spreadsheet
    would run as a formula starts with an apostrophe."""
    creds = world.tablets["nat"].credentials
    path = "/v1/web/households.csv?county=CJ"
    async with aiohttp.ClientSession() as session, session.get(
            world.http_url + path, headers={"Authorization": sign(
                creds.device_id, creds.signing_key, "GET", path)}) as resp:
        assert resp.status == 200 and resp.headers["Cache-Control"] == "no-store"
        assert resp.headers["Content-Type"].startswith("text/csv")
        text = await resp.text()
    rows = list(csv.DictReader(io.StringIO(text)))
    status, listed, _ = await world.get("nat", "/v1/web/households", county="CJ")
    assert status == 200
    assert [r["id"] for r in rows] == [i["id"] for i in listed["items"]]
    h1 = next(r for r in rows if r["id"] == world.ids["h1"])
    assert (h1["address"], h1["status"], h1["services_open"]) == ("Str. Lunga 3", "active", "2")
    from sync_server.api.read import _csv_row
    assert _csv_row(["=HYPERLINK(1)", "-1", "plain", None]) == b"'=HYPERLINK(1),'-1,plain,\r\n"
    assert _csv_row(["\t=1+1", "\r=1"]) == b"'\t=1+1,\"'\r=1\"\r\n"  # found in review
    assert resp.headers["X-Vatra-Truncated"] == "false"
    # Sorted otherwise, the export follows the same order as the list.
    status, by_id, _ = await world.get("nat", "/v1/web/households", sort="id")
    assert [r["id"] for r in await csv_of(world, "/v1/web/households.csv", sort="id")] == \
        [i["id"] for i in by_id["items"]]


async def csv_of(world: World, path: str, **params: Any) -> list[dict[str, str]]:
    status, text, headers = await world.get_text("nat", path, **params)
    assert status == 200 and headers["Cache-Control"] == "no-store"
    assert headers["Content-Type"].startswith("text/csv")
    assert headers["X-Vatra-Truncated"] == "false"
    return list(csv.DictReader(io.StringIO(text)))


async def test_persons_and_services_export_as_csv_with_their_filters(world: World) -> None:
    """The member and service lists as CSV: the rows the same filters list, all pages."""
    for path, params, key in (
            ("/v1/web/persons", {}, "person_id"),
            ("/v1/web/persons", {"county": "BV"}, "person_id"),
            ("/v1/web/services", {"overdue": "true"}, "service_id"),
            ("/v1/web/services", {"locality": "54975"}, "service_id")):
        status, listed, _ = await world.get("nat", path, per_page=100, **params)
        assert status == 200 and listed["next"] is None and listed["items"]
        rows = await csv_of(world, path + ".csv", **params)
        assert [r[key] for r in rows] == [i[key] for i in listed["items"]], (path, params)
    rows = await csv_of(world, "/v1/web/services.csv")
    assert {r["overdue"] for r in rows} == {"True", "False"}
    status, answer, _ = await world.get("nat", "/v1/web/persons.csv", reassessment_due_before="x")
    assert (status, answer["code"]) == (400, "reassessment-due-before-format")


async def test_the_map_has_points_and_cells_within_the_scope(world: World) -> None:
    tablet = world.tablets["ana"]
    for key, (lat, lon) in (("h1", (46.770, 23.590)), ("h2", (46.771, 23.591)),
                            ("h3", (46.600, 23.100))):
        with tablet.edit(world.ids[key]) as h:
            h.set_gps(lat=lat, lon=lon, accuracy_m=5.0, captured_at="2026-03-01T09:00:00Z")
    with world.tablets["bob"].edit(world.ids["h4"]) as h:
        h.set_gps(lat=45.650, lon=25.600, accuracy_m=5.0, captured_at="2026-03-01T09:00:00Z")
    for name in ("ana", "bob"):
        await SyncClient(world.tablets[name], world.server_url).sync()
    await world.drain()
    status, points, _ = await world.get("ana", "/v1/web/map")
    assert status == 200 and points["type"] == "FeatureCollection"
    assert sorted(f["properties"]["id"] for f in points["features"]) == \
        sorted(world.ids[k] for k in ("h1", "h2", "h3"))  # bob's BV household is not hers
    h1 = next(f for f in points["features"] if f["properties"]["id"] == world.ids["h1"])
    assert h1["geometry"] == {"type": "Point", "coordinates": [23.59, 46.77]}
    status, cells, _ = await world.get("nat", "/v1/web/map", cell="0.1")
    counts = sorted(f["properties"]["households"] for f in cells["features"])
    assert counts == [1, 1, 2]  # h1 and h2 share a cell; h3 and h4 each have their own
    assert all("id" not in f["properties"] for f in cells["features"])


async def test_services_across_households_in_keyset_pages(world: World) -> None:
    """Every planned service of the scope, each with its household and whether it is
    overdue; filters by status and overdue; pages that cover everyone once."""
    status, answer, _ = await world.get("nat", "/v1/web/services")
    assert status == 200 and answer["next"] is None
    expected = {sid for key in world.services for sid in world.services[key]}
    assert {i["service_id"] for i in answer["items"]} == expected
    overdue = {i["service_id"] for i in answer["items"] if i["overdue"]}
    assert overdue == {world.services["h1"][0], world.services["h2"][0],
                       world.services["h4"][0]}
    status, late, _ = await world.get("nat", "/v1/web/services", overdue="true")
    assert {i["service_id"] for i in late["items"]} == overdue
    status, delivered, _ = await world.get("nat", "/v1/web/services", status="delivered")
    assert [i["service_id"] for i in delivered["items"]] == [world.services["h1"][2]]
    status, bv, _ = await world.get("sup-bv", "/v1/web/services")
    assert {i["household_id"] for i in bv["items"]} == {world.ids["h4"]}  # its county only
    seen, after = [], None
    for _ in range(10):
        params: dict[str, Any] = {"per_page": 2, **({"after": after} if after else {})}
        status, page, _ = await world.get("nat", "/v1/web/services", **params)
        seen += [(i["household_id"], i["service_id"]) for i in page["items"]]
        after = page["next"]
        if after is None:
            break
    assert len(seen) == len(set(seen)) == len(expected) and seen == sorted(seen)


class _AfterStatement:
    """A connection that runs ``hook`` once, right after its ``n``-th statement."""

    def __init__(self, conn, n: int, hook) -> None:
        self._conn, self._n, self._hook, self._calls = conn, n, hook, 0

    async def execute(self, *args, **kwargs):
        result = await self._conn.execute(*args, **kwargs)
        self._calls += 1
        if self._calls == self._n:
            await self._hook()
        return result

    def __getattr__(self, name):
        return getattr(self._conn, name)


async def test_a_household_projected_during_a_page_does_not_end_the_walk(store, engine) -> None:
    """A review found that a keyset page decided whether a next page exists from counts
    that earlier statements of its transaction saw: a household a projector committed
    between the count and the page, landing between the position and the old rows,
    pushed the page's last row off and the answer said "no next page", so a household
    listed all along was never shown. Reproduced by committing it right after the count
    (page 2 of 2 by id: [X, D], next null, E never listed)."""
    from sync_server.projection import readmodel
    from sync_server.projection.projector import Projector
    from sync_server.store.contract import HouseholdRecord
    from sync_server.store.tables import households
    from sync_server.sync.apply import stored
    from vatra_devtools.seed import generate

    for h in generate(5, seed=3, today=dt.date(2026, 5, 1), counties=("CJ",)):
        await store.create_household(HouseholdRecord(h.household_id, str(h.locality),
                                                     str(h.county)), stored(h.doc.get_changes([])))
    async with engine.connect() as conn:  # PostgreSQL's order of the ids
        a, b, x, d, e = (await conn.execute(
            sa.select(households.c.id).order_by(households.c.id))).scalars().all()
    projector = Projector(engine, store)
    await projector.project([a, b, d, e])
    scope = readmodel.Scope("national")
    async with readmodel.reading(engine, scope) as conn:
        first = await readmodel.list_households(conn, scope,
                                                readmodel.ListFilter(sort="id", per_page=2))
    assert [i["id"] for i in first["items"]] == [a, b]

    async def projector_commits_x() -> None:
        assert [p.household_id for p in await projector.project([x])] == [x]

    seen = [a, b]
    after = first["next"]
    async with readmodel.reading(engine, scope) as conn:
        page = await readmodel.list_households(  # statements: total, count after, page
            _AfterStatement(conn, 2, projector_commits_x), scope,
            readmodel.ListFilter(sort="id", per_page=2, after=after))
    seen += [i["id"] for i in page["items"]]
    while page["next"] is not None:
        async with readmodel.reading(engine, scope) as conn:
            page = await readmodel.list_households(
                conn, scope, readmodel.ListFilter(sort="id", per_page=2, after=page["next"]))
        seen += [i["id"] for i in page["items"]]
    assert seen == [a, b, x, d, e]
