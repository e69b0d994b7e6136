"""Parents working abroad (GD 691/2015): recorded and checked on the tablet, enforced by
the server, and laid out as the annex in JSON and PDF by the read API (real server,
projector, signed HTTP; the PDF is read back with pypdf)."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from _scenes import web_get
from automerge.core import ROOT, ObjType, ScalarType
from pypdf import PdfReader

from client_sdk import SyncClient
from conflict import Household, InvalidValueError
from sync_server.app import PROJECTOR

pytestmark = pytest.mark.functional


async def get(server, tablet, path: str, **params: Any) -> tuple[int, bytes, Any]:
    return await web_get(server.http_url, tablet, path, **params)


@pytest.fixture
async def family(server, provision) -> dict[str, Any]:
    """Ștefan, 9, whose mother works in Italy (she notified the service before leaving)
    and whose father works in Germany (no notice); his grandmother cares for him."""
    ana = await provision.tablet("ana")
    cara = await provision.tablet("cara", localities=[("55000", "CJ")])
    hid = ana.create_household(locality="54975", county="CJ",
                               address="Str. Fântânii 12").household_id
    none = ana.create_household(locality="54975", county="CJ", address="Str. Mare 1").household_id
    with ana.edit(hid) as h:
        child = h.add_member("Ștefan", "Țurcanu", "2017-05-20", "M", "child")
        gran = h.add_member("Floarea", "Țurcanu", "1956-02-11", "F", "grandmother")
        h.record_parent_abroad(child, parent="mother", country="IT", since="2025-09-01",
                               carer_name="Floarea Țurcanu", carer_relation="bunica",
                               carer_person_id=gran, notified_on="2025-07-15")
    with ana.edit(hid) as h:
        h.record_parent_abroad(child, parent="father", country="DE", since="2026-02-10",
                               carer_name="Floarea Țurcanu", carer_relation="bunica")
    assert (await SyncClient(ana, server.url).sync()).rejected == []
    await server.app[PROJECTOR].drain_all()
    return {"ana": ana, "cara": cara, "hid": hid, "none": none, "child": child}


async def test_the_annex_as_data_and_as_a_pdf_say_the_same(server, family) -> None:
    hid = family["hid"]
    status, body, _ = await get(server, family["ana"], f"/v1/web/households/{hid}/annex-691")
    assert status == 200
    annex = json.loads(body)
    [child] = annex["children"]
    assert (child["first_name"], child["last_name"], child["birth_date"]) == \
        ("Ștefan", "Țurcanu", "2017-05-20")
    assert [(p["parent"], p["country"], p["since"], p["notified_on"], p["carer"]["name"])
            for p in child["parents_abroad"]] == [
        ("father", "DE", "2026-02-10", None, "Floarea Țurcanu"),
        ("mother", "IT", "2025-09-01", "2025-07-15", "Floarea Țurcanu")]
    status, pdf, headers = await get(server, family["ana"],
                                     f"/v1/web/households/{hid}/annex-691.pdf")
    assert status == 200 and headers["Content-Type"] == "application/pdf"
    assert headers["Cache-Control"] == "no-store"
    text = "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages)
    for fact in ("HG nr. 691/2015", "Fișa copilului", "Țurcanu Ștefan", "2017-05-20",
                 "mama", "IT", "2025-09-01", "2025-07-15", "tatăl", "DE", "2026-02-10",
                 "nu a fost făcută", "Floarea Țurcanu (bunica)", "Str. Fântânii 12", "54975"):
        assert fact in text, fact


async def test_no_annex_without_a_parent_abroad_nor_outside_the_scope(server, family) -> None:
    status, body, _ = await get(server, family["ana"],
                                f"/v1/web/households/{family['none']}/annex-691")
    assert status == 404 and b"no parent working abroad" in body
    status, _, _ = await get(server, family["cara"],
                             f"/v1/web/households/{family['hid']}/annex-691.pdf")
    assert status == 404


async def test_a_bad_record_is_stopped_on_the_tablet_and_refused_by_the_server(
        server, family) -> None:
    ana, hid, child = family["ana"], family["hid"], family["child"]
    h = ana.household(hid)
    for bad, rule in (({"country": "RO"}, "format"), ({"parent": "aunt"}, "enum"),
                      ({"since": "2099-01-01"}, "future-date")):
        args = {"parent": "father", "country": "ES", "since": "2026-01-01",
                "carer_name": "x", "carer_relation": "y", **bad}
        with pytest.raises(InvalidValueError) as err:
            h.record_parent_abroad(child, **args)
        assert err.value.rule == rule
    raw = Household(ana.household(hid).doc, hid, author="ana")  # a client past the SDK
    doc = raw.doc
    section = doc.get(ROOT, "parents_abroad")[1]
    with doc.transaction() as tx:
        entry = tx.put_object(section, "00000000-0000-4000-8000-000000000001", ObjType.Map)
        for key, value in (("child_id", child), ("parent", "father"), ("country", "RO"),
                           ("since", "2026-01-01"), ("carer_name", "x"),
                           ("carer_relation", "y"), ("by", "ana"),
                           ("recorded_at", "2026-01-02T10:00:00Z")):
            tx.put(entry, key, ScalarType.Str, value)
    ana.save(hid)
    rejected = (await SyncClient(ana, server.url).sync()).rejected
    assert {r.code for r in rejected} == {"schema-violation"}
    assert any("country: format" in r.message for r in rejected)
