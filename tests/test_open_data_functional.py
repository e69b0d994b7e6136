"""The public export from real projections (real PostgreSQL, the projector, the
``vatra open-data`` command): counts per area, small cells suppressed, nothing personal."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import subprocess
import sys

import pytest
from conftest import TEST_MASTER_KEY

from conflict import Household
from sync_server.projection.opendata import export
from sync_server.projection.projector import Projector
from sync_server.store.contract import HouseholdRecord
from sync_server.sync.apply import stored

pytestmark = pytest.mark.functional

#: (county, locality) -> households; each has one child assessed without a family doctor
PLACES = {("CJ", "54975"): 6, ("CJ", "55012"): 2, ("BN", "32394"): 7}


@pytest.fixture
async def projected(store, engine) -> None:
    for (county, locality), n in PLACES.items():
        for i in range(n):
            h = Household.create(locality=locality, county=county,
                                 address=f"Str. Secreta {i}", author="ana",
                                 at="2026-01-05T09:00:00Z")
            pid = h.add_member("Ionela", "Secretaru", "2016-02-03", "F", "child")
            aid = h.start_assessment(at="2026-01-06T09:00:00Z")
            h.record_answers(aid, pid, {"family_doctor_registered": False})
            h.complete_assessment(aid, at="2026-01-06T10:00:00Z")
            await store.create_household(HouseholdRecord(h.household_id, locality, county),
                                         stored(h.doc.get_changes([])))
    await Projector(engine, store).drain_all()


def counts(document: dict, code: str) -> dict:
    return next(a["counts"] for a in document["areas"] if a["code"] == code)


async def test_small_localities_are_suppressed_and_their_sums_stay(engine, projected) -> None:
    document = await export(engine, threshold=5)
    assert counts(document, "RO")["households"] == 15
    assert counts(document, "CJ")["households"] == 8
    assert counts(document, "BN")["households"] == 7
    assert counts(document, "32394")["households"] == 7
    # 55012 (2) is small; 54975 (6) would then be CJ minus it: both are hidden
    assert counts(document, "55012")["households"] is None
    assert counts(document, "54975")["households"] is None
    assert counts(document, "CJ")["children_assessed"] == 8
    # every household has the vulnerability, every child assessed is vulnerable: published
    # next to the totals, these would say "all of them" (a difference of 0 < 5)
    assert counts(document, "RO")["vulnerability:child_no_family_doctor"] is None
    assert counts(document, "RO")["vulnerable_children"] is None
    published = [n for a in document["areas"] for n in a["counts"].values() if n is not None]
    assert published and min(published) >= 5


async def test_the_command_writes_json_and_csv_without_anything_personal(
        engine, projected, database_url, tmp_path) -> None:
    env = {**os.environ, "DATABASE_URL": database_url, "VATRA_MASTER_KEY": TEST_MASTER_KEY}

    def vatra(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "sync_server.cli", *args], env=env,
                              capture_output=True, text=True, timeout=120, check=False)

    done = await asyncio.to_thread(vatra, "open-data", str(tmp_path / "open.json"))
    assert done.returncode == 0, done.stderr
    assert "suppressed below 5" in done.stdout
    text = (tmp_path / "open.json").read_text()
    document = json.loads(text)
    assert document["threshold"] == 5 and counts(document, "RO")["households"] == 15
    for personal in ("Secret", "Ionela", "ana", "2016-02-03", "2026-01-06"):
        assert personal not in text
    done = await asyncio.to_thread(vatra, "open-data", str(tmp_path / "open.csv"), "--csv",
                                   "--threshold", "8")
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO((tmp_path / "open.csv").read_text())))
    by = {(r["code"], r["measure"]): r["count"] for r in rows}
    assert by[("RO", "households")] == "15" and by[("BN", "households")] == ""  # 7 < 8
    refused = await asyncio.to_thread(vatra, "open-data", str(tmp_path / "x.json"),
                                      "--threshold", "0")
    assert refused.returncode == 2 and "at least 1" in refused.stderr
