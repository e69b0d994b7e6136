"""Comparing two assessments and listing members due for re-assessment, through the web
tier's read API (real server, projector, row-level security, signed HTTP)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from _scenes import web_get

from client_sdk import SyncClient
from conflict.compare import compare_assessments
from sync_server.app import PROJECTOR

pytestmark = pytest.mark.functional

UNKNOWN = "00000000-0000-4000-8000-000000000000"


async def get(server, tablet, path: str, **params: Any) -> tuple[int, Any]:
    status, body, _ = await web_get(server.http_url, tablet, path, **params)
    return status, json.loads(body)


@pytest.fixture
async def family(server, provision) -> dict[str, Any]:
    """A father and a child assessed in March; the child alone re-assessed in September;
    the case in monitoring (Aurora model: re-assessed every nine months). A second
    household with no case."""
    ana = await provision.tablet("ana")
    cara = await provision.tablet("cara", localities=[("55000", "CJ")])
    hid = ana.create_household(locality="54975", county="CJ", address="Str. Lunga 3").household_id
    other = ana.create_household(locality="54975", county="CJ", address="Str. Mare 1").household_id
    with ana.edit(hid) as h:
        father = h.add_member("Ion", "Pop", "1980-05-10", "M", "head")
        child = h.add_member("Ana", "Pop", "2015-04-01", "F", "child")
        march = h.start_assessment(at="2026-03-01T09:00:00Z")
        h.record_answers(march, father, {"family_doctor_registered": False,
                                         "employment_status": "unemployed"})
        h.record_answers(march, child, {"family_doctor_registered": False})
        h.complete_assessment(march, at="2026-03-01T10:00:00Z")
        september = h.start_assessment(at="2026-09-01T09:00:00Z")
        h.record_answers(september, child, {"family_doctor_registered": True,
                                            "vaccination_status": "incomplete"})
        h.complete_assessment(september, at="2026-09-01T10:00:00Z")
        h.open_case(identified_at="2026-02-27T10:00:00Z")
        for stage in ("detailed_assessment", "planning", "services", "monitoring"):
            h.move_stage(stage)
    with ana.edit(other) as h:
        h.add_member("Dan", "Stan", "1970-01-01", "M", "head")
    assert (await SyncClient(ana, server.url).sync()).rejected == []
    await server.app[PROJECTOR].drain_all()
    return {"ana": ana, "cara": cara, "hid": hid, "other": other, "father": father,
            "child": child, "march": march, "september": september}


async def test_the_comparison_served_is_the_one_the_tablet_computes(server, family) -> None:
    hid = family["hid"]
    status, served = await get(server, family["ana"],
                               f"/v1/web/households/{hid}/assessments/compare",
                               a=family["september"], b=family["march"])
    assert status == 200
    local = compare_assessments(family["ana"].household(hid).to_dict(), family["march"],
                                family["september"]).to_json()
    assert served == local
    [child] = served["subjects"]
    assert (child["subject"], child["gained"], child["lost"]) == \
        (family["child"], ["incomplete_vaccination"], ["child_no_family_doctor"])
    assert {c["indicator"]: (c["before"], c["after"]) for c in child["changed"]} == {
        "family_doctor_registered": (False, True), "vaccination_status": (None, "incomplete")}


@pytest.mark.parametrize(("who", "params", "status", "code"), [
    ("ana", {"a": "march", "b": UNKNOWN}, 404, "not-found"),
    ("ana", {"a": "not-an-id", "b": "march"}, 400, "a-format"),
    ("ana", {"a": "march"}, 400, "b-format"),
    ("cara", {"a": "march", "b": "september"}, 404, "not-found"),  # outside her scope
])
async def test_a_comparison_that_cannot_be_made_says_why(server, family, who, params, status,
                                                          code) -> None:
    params = {k: family.get(v, v) for k, v in params.items()}
    got = await get(server, family[who],
                    f"/v1/web/households/{family['hid']}/assessments/compare", **params)
    assert (got[0], got[1]["code"]) == (status, code)


async def test_members_due_for_reassessment_are_listed_by_their_own_last_assessment(
        server, family) -> None:
    """The father was last assessed in March (due in December), the child in September
    (due next June); the household without a case re-assesses no one."""
    async def due_before(day: str) -> list[str]:
        status, answer = await get(server, family["ana"], "/v1/web/persons",
                                   reassessment_due_before=day)
        assert status == 200
        return sorted(item["person_id"] for item in answer["items"])

    assert await due_before("2026-11-30") == []
    assert await due_before("2027-01-01") == [family["father"]]
    assert await due_before("2027-07-01") == sorted([family["father"], family["child"]])


async def test_members_come_in_keyset_pages_that_cover_everyone_once(server, family) -> None:
    seen, after = [], None
    for _ in range(5):
        params: dict[str, Any] = {"per_page": 1}
        if after is not None:
            params["after"] = after
        status, page = await get(server, family["ana"], "/v1/web/persons", **params)
        assert status == 200 and len(page["items"]) <= 1
        seen += [(i["household_id"], i["person_id"]) for i in page["items"]]
        after = page["next"]
        if after is None:
            break
    assert len(seen) == len(set(seen)) == 3 and seen == sorted(seen)
    child = next(i for i in (await get(server, family["ana"], "/v1/web/persons"))[1]["items"]
                 if i["person_id"] == family["child"])
    assert (child["case_stage"], child["last_assessed_at"][:10], child["reassessment_due"][:10]) \
        == ("monitoring", "2026-09-01", "2027-06-01")
    status, answer = await get(server, family["ana"], "/v1/web/persons", after="nonsense")
    assert (status, answer["code"]) == (400, "after-format")


async def test_household_answers_are_read_from_the_head_as_on_the_tablet(server,
                                                                        provision) -> None:
    """Found in review: the API rebuilt members without ``relation_to_head``, so answers
    about the household were taken from whichever member came first instead of the
    head, and a single-parent household lost in a re-assessment showed no change."""
    ana = await provision.tablet("ana")
    hid = ana.create_household(locality="54975", county="CJ", address="Str. A 1").household_id
    with ana.edit(hid) as h:
        head = h.add_member("Ion", "Pop", "1980-05-10", "M", "head",
                            person_id="ffffffff-0000-4000-8000-000000000000")
        other = h.add_member("Maria", "Pop", "1982-05-10", "F", "spouse",
                             person_id="00000000-0000-4000-8000-000000000001")
        first = h.start_assessment(at="2026-03-01T09:00:00Z")
        h.record_answers(first, head, {"single_parent": True})
        h.record_answers(first, other, {"single_parent": False})
        h.complete_assessment(first, at="2026-03-01T10:00:00Z")
        second = h.start_assessment(at="2026-04-01T09:00:00Z")
        h.record_answers(second, head, {"single_parent": False})
        h.complete_assessment(second, at="2026-04-01T10:00:00Z")
    assert (await SyncClient(ana, server.url).sync()).rejected == []
    await server.app[PROJECTOR].drain_all()
    local = compare_assessments(ana.household(hid).to_dict(), first, second).to_json()
    status, served = await get(server, ana, f"/v1/web/households/{hid}/assessments/compare",
                               a=first, b=second)
    assert status == 200 and served == local
    assert {"subject": "household", "changed": [], "gained": [],
            "lost": ["single_parent_household"]} in served["subjects"]
