"""Referrals end to end (issue 16, part 4), on a real server and PostgreSQL: an admin
imports a county's directory with ``vatra directory import``; a worker's tablet fetches
it (then ``304`` while unchanged), finds the nearest suitable provider offline, refers
a child and syncs; a teammate records the outcome; the web tier reads the referral on
the card and asks for the providers nearest to the household."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import aiohttp
import pytest
from _scenes import active_household, web_get
from conftest import TEST_MASTER_KEY

from client_sdk import ServerRejected, SyncClient, fetch_directory
from sync_server.app import PROJECTOR
from sync_server.protocol.http_auth import sign

pytestmark = pytest.mark.functional

DIRECTORY = [
    {"name": "DGASPC Cluj", "kind": "child_protection", "address": "Str. Motilor 7, Cluj-Napoca",
     "lat": 46.7693, "lon": 23.5814, "phone": "0264 420 000", "accessibility": ["wheelchair"]},
    {"name": "Serviciul de evaluare complexa Dej", "kind": "child_protection",
     "address": "Str. 1 Mai 2, Dej", "lat": 47.1422, "lon": 23.8745, "phone": "0264 211 000"},
    {"name": "Cabinet medical Gilau", "kind": "health", "address": "Str. Principala 10",
     "lat": 46.7535, "lon": 23.3800, "phone": "+40 264 371 111"},
]


def vatra(database_url: str, *args: str, status: int = 0) -> str:
    env = {**os.environ, "DATABASE_URL": database_url, "VATRA_MASTER_KEY": TEST_MASTER_KEY}
    done = subprocess.run([sys.executable, "-m", "sync_server.cli", *args], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == status, done.stdout + done.stderr
    return done.stdout + done.stderr


async def test_a_referral_from_the_directory_to_the_card(server, provision, database_url,
                                                          tmp_path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{**DIRECTORY[0], "kind": "spa"}, {"name": "x"}]))
    refused = await asyncio.to_thread(vatra, database_url, "directory", "import", str(bad),
                                      "--county", "CJ", status=1)
    assert "refused (unknown-kind): providers[0].kind" in refused
    assert "refused (missing): providers[1].address" in refused
    assert "nothing imported: " in refused
    good = tmp_path / "cj.json"
    good.write_text(json.dumps(DIRECTORY, ensure_ascii=False))
    done = await asyncio.to_thread(vatra, database_url, "directory", "import", str(good),
                                   "--county", "CJ")
    assert "directory of CJ: 3 added, 0 changed, 0 removed, 0 unchanged" in done

    hid, pid, [ana, bob] = await active_household(server, provision, ("bob", {}))
    assert await fetch_directory(ana, server.http_url) is True
    assert await fetch_directory(ana, server.http_url) is False  # 304: nothing new
    assert {p["name"] for p in ana.directory("CJ")} == {d["name"] for d in DIRECTORY}

    # Offline on the tablet: the household's GPS fix, the nearest child protection service.
    with ana.edit(hid) as h:
        h.set_gps(lat=46.7580, lon=23.3850, accuracy_m=8.0, captured_at="2026-03-01T09:00:00Z")
    [first, second] = ana.nearest_providers(hid, kind="child_protection")
    assert (first["name"], second["name"]) == ("DGASPC Cluj", "Serviciul de evaluare complexa Dej")
    with ana.edit(hid) as h:
        rid = h.refer(first, reason="suspected neglect", person_id=pid,
                      at="2026-03-01T10:00:00Z")
    await SyncClient(ana, server.url).sync()
    await SyncClient(bob, server.url).sync()
    with bob.edit(hid) as h:
        h.set_referral_status(rid, "accepted", outcome="assessment on 2026-03-05",
                              at="2026-03-02T10:00:00Z")
    await SyncClient(bob, server.url).sync()
    await server.app[PROJECTOR].drain_all()

    nat = await provision.tablet("nat", "nat", role="national", county=None, localities=())
    status, body, _ = await web_get(server.http_url, nat, f"/v1/web/households/{hid}")
    assert status == 200
    [card] = json.loads(body)["referrals"]
    assert card == {**card, "referral_id": rid, "person_id": pid, "provider_name": "DGASPC Cluj",
                    "provider_kind": "child_protection", "provider_contact": "0264 420 000",
                    "reason": "suspected neglect", "status": "accepted", "by": "ana",
                    "status_by": "bob", "outcome": "assessment on 2026-03-05"}

    status, body, _ = await web_get(server.http_url, nat, f"/v1/web/households/{hid}/providers",
                                    kind="child_protection", limit="1")
    found = json.loads(body)
    assert status == 200 and found["county"] == "CJ" and found["directory_version"]
    assert [p["name"] for p in found["providers"]] == ["DGASPC Cluj"]
    assert found["providers"][0]["distance_km"] == first["distance_km"]
    status, body, _ = await web_get(server.http_url, nat, f"/v1/web/households/{hid}/providers",
                                    accessibility="wheelchair")
    assert [p["name"] for p in json.loads(body)["providers"]] == ["DGASPC Cluj"]
    for params, rule in (({"kind": "spa"}, "kind-enum"), ({"accessibility": "lift"},
                                                          "accessibility-enum"),
                         ({"limit": "0"}, "limit-range")):
        status, body, _ = await web_get(server.http_url, nat,
                                        f"/v1/web/households/{hid}/providers", **params)
        assert (status, json.loads(body)["code"]) == (400, rule)

    # A household without a fix has no "nearest": a clear refusal, not an empty list.
    other, _, _ = await active_household(server, provision, tablet_prefix="x-")
    await server.app[PROJECTOR].drain_all()
    status, body, _ = await web_get(server.http_url, nat, f"/v1/web/households/{other}/providers")
    assert (status, json.loads(body)["code"]) == (409, "no-location")

    # The directory changes: the tablet gets the new one; the referral keeps its provider.
    good.write_text(json.dumps(DIRECTORY[1:], ensure_ascii=False))
    done = await asyncio.to_thread(vatra, database_url, "directory", "import", str(good),
                                   "--county", "CJ")
    assert "0 added, 0 changed, 1 removed, 2 unchanged" in done
    assert await fetch_directory(ana, server.http_url) is True
    assert "DGASPC Cluj" not in {p["name"] for p in ana.directory()}
    assert ana.household(hid).referrals()[rid]["provider_name"] == "DGASPC Cluj"
    shown = await asyncio.to_thread(vatra, database_url, "directory", "show", "--county", "CJ")
    assert "CJ: 2 provider(s)" in shown


async def test_who_reads_which_directory(server, provision, database_url, tmp_path) -> None:
    """A worker reads their localities' counties, a supervisor their county, a national
    user every county; admins and ops have none (403)."""
    for county, name in (("CJ", "DGASPC Cluj"), ("BV", "DGASPC Brasov")):
        path = tmp_path / f"{county}.json"
        path.write_text(json.dumps([{**DIRECTORY[0], "name": name}]))
        await asyncio.to_thread(vatra, database_url, "directory", "import", str(path),
                                "--county", county)
    readers = {
        "ana": ({"localities": [("54975", "CJ")]}, {"CJ"}),
        "sup": ({"role": "supervisor", "county": "BV", "localities": ()}, {"BV"}),
        "nat": ({"role": "national", "county": None, "localities": ()}, {"CJ", "BV"}),
    }
    for name, (kw, counties) in readers.items():
        tablet = await provision.tablet(name, name, **kw)
        assert await fetch_directory(tablet, server.http_url) is True
        got = {d["county"] for d in tablet.directory_state()["directories"]}
        assert got == counties, name
    # The ETag a proxy marked weak (W/) while compressing still matches: 304, no body.
    nat = await provision.tablet("nat2", "nat2", role="national", county=None, localities=())
    creds = nat.credentials
    async with aiohttp.ClientSession() as session:
        async with session.get(server.http_url + "/v1/directory", headers={
                "Authorization": sign(creds.device_id, creds.signing_key, "GET",
                                      "/v1/directory")}) as resp:
            tag = resp.headers["ETag"]
        async with session.get(server.http_url + "/v1/directory", headers={
                "Authorization": sign(creds.device_id, creds.signing_key, "GET",
                                      "/v1/directory"),
                "If-None-Match": "W/" + tag}) as resp:
            assert resp.status == 304 and await resp.read() == b""
        async with session.get(server.http_url + "/v1/directory", headers={
                "Authorization": sign(creds.device_id, creds.signing_key, "GET",
                                      "/v1/directory"),
                "If-None-Match": "*"}) as resp:  # "any version you have": 304 as well
            assert resp.status == 304
    admin = await provision.tablet("adm", "adm", role="admin", county=None, localities=())
    with pytest.raises(ServerRejected, match="forbidden"):
        await fetch_directory(admin, server.http_url)


async def refused(tablet, server, hid, write) -> str:
    """Write into the household's document directly (as a modified client would), sync,
    and return the code the server refused the batch with ("" if accepted)."""
    with tablet.edit(hid) as h, h.doc.transaction() as tx:
        write(h, tx)
    summary = await SyncClient(tablet, server.url).sync()
    return ",".join(sorted({str(r.code) for r in summary.rejected}))


async def test_a_referral_keeps_who_referred_whom_where_and_who_changed_it(server, provision
                                                                           ) -> None:
    """A review found that a teammate could set a referral's status under another user's
    name (status_by unchanged, or written as someone else), rewrite the provider the
    family was sent to, or delete the referral, and the server accepted each. Each is
    now refused and quarantined (`referral-record`, `forged-attribution`), and the
    server's copy keeps the referral as it was."""
    from automerge.core import ScalarType

    hid, pid, [ana, bob] = await active_household(server, provision, ("bob", {}))
    provider = {"id": "0b8e7c36-55a0-4d55-8a5e-3c8a3b0e0d11", "name": "DGASPC Cluj",
                "kind": "child_protection", "phone": "0264 420 000"}
    with ana.edit(hid) as h:
        rid = h.refer(provider, reason="suspected neglect", person_id=pid)
        h.set_referral_status(rid, "accepted")
    await SyncClient(ana, server.url).sync()
    await SyncClient(bob, server.url).sync()

    def as_ana(h, tx):  # bob cancels it and leaves status_by naming ana
        tx.put(h._entity("referrals", "referral", rid), "status", ScalarType.Str, "cancelled")

    def renamed(h, tx):
        tx.put(h._entity("referrals", "referral", rid), "provider_name", ScalarType.Str,
               "Somebody else")

    def deleted(h, tx):
        tx.delete(h._root_obj("referrals"), rid)

    for write in (as_ana, renamed, deleted):
        await SyncClient(bob, server.url).sync()  # start from the server's copy
        code = await refused(bob, server, hid, write)
        assert code in ("forged-attribution", "referral-record"), write.__name__
    await SyncClient(ana, server.url).sync()
    kept = ana.household(hid).referrals()[rid]
    assert (kept["status"], kept["status_by"], kept["provider_name"]) == \
        ("accepted", "ana", "DGASPC Cluj")
    with bob.edit(hid) as h:  # the way that names its writer is accepted
        h.set_referral_status(rid, "completed", outcome="assessed")
    done = await SyncClient(bob, server.url).sync()
    assert done.rejected == [] and done.recovered == {}, (done.rejected, done.recovered)
    await SyncClient(ana, server.url).sync()
    assert ana.household(hid).referrals()[rid]["status_by"] == "bob"


async def test_a_worker_reads_the_directory_of_a_caseload_household_elsewhere(
        server, provision, database_url, tmp_path) -> None:
    """A review found that a worker moved to another county's localities, still on the
    team of a household in the first, got only the new county's directory: the
    household's nearest providers were then empty on her tablet."""
    from sync_server.app import IDENTITY

    path = tmp_path / "cj.json"
    path.write_text(json.dumps(DIRECTORY))
    await asyncio.to_thread(vatra, database_url, "directory", "import", str(path),
                            "--county", "CJ")
    _, _, [ana] = await active_household(server, provision)  # on a CJ household's team
    await server.app[IDENTITY].update_user("ana", add=[("40198", "BV")],
                                           remove=[("54975", "CJ")])
    assert await fetch_directory(ana, server.http_url) is True
    assert {p["name"] for p in ana.directory("CJ")} == {d["name"] for d in DIRECTORY}


async def test_two_counties_claiming_one_provider_at_once(store, engine) -> None:
    """A review found that two imports of different counties running at once could both
    pass the "another county holds this id" check, and the second failed on the primary
    key with an unhandled error. Imports now take one lock: the second sees the first's
    provider and is refused by name."""
    import sqlalchemy as sa

    from conflict.directory import validate_directory
    from sync_server.store.directory import replace_directory
    from sync_server.store.tables import providers

    cj, _ = validate_directory("CJ", DIRECTORY[:1])
    async with engine.connect() as other:
        tx = await other.begin()  # an import of BV in progress, holding the imports' lock
        await other.execute(sa.select(sa.func.pg_advisory_xact_lock(0x6469_7200, 0)))
        await other.execute(sa.insert(providers), [{**cj[0], "county": "BV"}])
        task = asyncio.create_task(replace_directory(engine, "CJ", cj))
        await asyncio.sleep(1)
        assert not task.done()
        await tx.commit()
    with pytest.raises(ValueError, match="is in the directory of BV"):
        await task
