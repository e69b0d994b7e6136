"""``vatra quarantine show`` states the rule and reads the refused changes, for every
refusal the server quarantines (a real server, enrolled tablets, the CLI as a process)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest
from _scenes import active_household, forge_write
from automerge.core import ROOT, ScalarType
from conftest import TEST_MASTER_KEY

from client_sdk import SyncClient
from conflict import Household
from sync_server.protocol.errors import RULES, ErrorCode
from sync_server.sync.pipeline import QUARANTINED

pytestmark = pytest.mark.functional


def test_every_quarantined_refusal_has_its_rule_in_words() -> None:
    assert set(RULES) >= QUARANTINED, sorted(QUARANTINED - set(RULES))
    assert all(len(RULES[code]) > 20 for code in QUARANTINED)


async def test_show_states_the_rule_and_reads_every_refused_batch(
        server, provision, database_url) -> None:
    """Before (issue 12, observation 7): ``vatra quarantine show`` applied the refused
    message to the household as stored now. A tablet that recovered from a refusal had
    since uploaded other changes under the refused ones' sequence numbers, so the binding
    refused the message and ``show`` labelled a valid batch "not a valid Automerge sync
    message". Reproduced with a protected-path refusal followed by the SDK's recovery and
    a second refusal. Now the changes are read from the message itself, and every
    quarantined refusal shows its rule in words and its changes."""
    hid, pid, (ana, nat) = await active_household(
        server, provision, ("nat", {"role": "national", "county": None}))
    raw = Household(ana.household(hid).doc, hid)  # no guard: a modified client
    raw.set_member_field(pid, "presence", "moved")
    ana.save(hid)
    assert [r.code for r in (await SyncClient(ana, server.url).sync()).rejected] == [
        "protected-path"]
    with ana.edit(hid) as h, h.doc.transaction() as tx:  # bypassing the typed API
        tx.put(ROOT, "favourite_colour", ScalarType.Str, "blue")
    assert [r.code for r in (await SyncClient(ana, server.url).sync()).rejected] == [
        "schema-violation"]
    await forge_write(provision, ana, hid, "Str. Falsa 9")
    assert [r.code for r in (await SyncClient(ana, server.url).sync()).rejected] == [
        "actor-not-registered"]
    with nat.edit(hid) as h:
        h.set_address("Str. Citita 1")
    assert [r.code for r in (await SyncClient(nat, server.url).sync()).rejected] == [
        "read-only"]
    elsewhere = ana.create_household(locality="55000", county="CJ", address="Str. Departe 2").household_id
    assert [r.code for r in (await SyncClient(ana, server.url).sync([elsewhere])).rejected] \
        == ["creation-refused"]

    env = {**os.environ, "DATABASE_URL": database_url, "VATRA_MASTER_KEY": TEST_MASTER_KEY}

    def vatra(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "sync_server.cli", "quarantine", *args],
                              env=env, capture_output=True, text=True, timeout=60, check=False)

    listing = await asyncio.to_thread(vatra, "list")  # the server runs on this loop
    assert listing.returncode == 0, listing.stderr
    rows = {line.split()[0]: line.split("rule=")[1] for line in listing.stdout.splitlines()}
    assert sorted(rows.values()) == ["actor-not-registered", "creation-refused",
                                     "protected-path", "read-only", "schema-violation"]
    for row_id, code in rows.items():
        shown = await asyncio.to_thread(vatra, "show", row_id)
        assert shown.returncode == 0, shown.stderr
        assert f"rule:       {code}: {RULES[ErrorCode(code)]}" in shown.stdout
        assert "not read" not in shown.stdout, shown.stdout
        assert " change(s)" in shown.stdout and " 0 change(s)" not in shown.stdout
        for content in ("Falsa", "Citita", "Departe", "blue", "moved"):
            assert content not in shown.stdout
        if code == "actor-not-registered":
            assert "NOT this device's actor" in shown.stdout
        else:
            assert "NOT this device's actor" not in shown.stdout
