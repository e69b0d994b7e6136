"""The operator's commands (issue 14, part 5): users, devices, the server key, as an
operator runs them (``vatra …`` in a process of its own, on a real PostgreSQL)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _scenes import joined
from conftest import TEST_MASTER_KEY

from client_sdk import ServerRejected, SyncClient
from sync_server.protocol import wire

pytestmark = pytest.mark.functional


def vatra_on(database_url: str, data_dir: Path, **more: str):
    env = {**os.environ, "DATABASE_URL": database_url, "VATRA_MASTER_KEY": TEST_MASTER_KEY,
           "VATRA_DATA_DIR": str(data_dir), **more}

    def vatra(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([sys.executable, "-m", "sync_server.cli", *args], env=env,
                              capture_output=True, text=True, timeout=120, check=False)
        assert "Traceback" not in done.stdout + done.stderr, done.stderr
        return done

    return vatra


async def test_an_operator_manages_users_and_every_mistake_is_one_line(
        database_url: str, tmp_path: Path) -> None:
    """Before (issue 14): no ``user list``, update or disable, no ``device list``, and
    adding a user twice printed an asyncpg traceback. Every command here runs as an
    operator runs it, and every mistake is one line naming its rule."""
    vatra = vatra_on(database_url, tmp_path / "data")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return vatra(*args)

    added = await asyncio.to_thread(run, "user", "add", "ana", "--role", "worker",
                                    "--locality", "54975:CJ")
    assert added.returncode == 0 and "user ana added as worker" in added.stdout
    again = await asyncio.to_thread(run, "user", "add", "ana", "--role", "worker")
    assert again.returncode == 1 and "refused (user-exists)" in again.stdout
    bad = await asyncio.to_thread(run, "user", "add", "ion", "--role", "worker",
                                  "--locality", "Cluj")
    assert bad.returncode == 1 and "refused (invalid-locality)" in bad.stdout

    updated = await asyncio.to_thread(run, "user", "update", "ana", "--add-locality",
                                      "54976:CJ")
    assert updated.returncode == 0 and "54975:CJ,54976:CJ" in updated.stdout
    wrong = await asyncio.to_thread(run, "user", "update", "ana", "--remove-locality",
                                    "11111:CJ")
    assert wrong.returncode == 1 and "refused (invalid-locality)" in wrong.stdout
    nobody = await asyncio.to_thread(run, "user", "update", "nobody", "--role", "worker")
    assert nobody.returncode == 1 and "refused (unknown-user)" in nobody.stdout
    supervisor = await asyncio.to_thread(run, "user", "update", "ana", "--role", "supervisor")
    assert supervisor.returncode == 1 and "refused (invalid-role)" in supervisor.stdout

    table = tmp_path / "users.csv"
    table.write_text("user_id,role,county,localities\n"
                     "maria,worker,,54975:CJ;54976:CJ\n"
                     "ana,worker,,54975:CJ\n"           # exists already
                     "sup,supervisor,,\n"               # a supervisor without a county
                     "dan,nurse,,54975:CJ\n"            # no such role
                     "ioana,supervisor,CJ,\n", encoding="utf-8")
    dry = await asyncio.to_thread(run, "user", "import", str(table), "--dry-run")
    assert dry.returncode == 1
    assert "line 3: rejected (user-exists)" in dry.stdout
    assert "line 4: rejected (invalid-role)" in dry.stdout
    assert "line 5: rejected (invalid-role)" in dry.stdout
    assert "2 user(s) would be added (dry run: nothing was); 3 row(s) rejected" in dry.stdout
    listed = await asyncio.to_thread(run, "user", "list")
    assert "maria" not in listed.stdout and "1 user(s)" in listed.stdout
    done = await asyncio.to_thread(run, "user", "import", str(table))
    assert "2 user(s) added; 3 row(s) rejected" in done.stdout
    listed = await asyncio.to_thread(run, "user", "list", "--county", "CJ")
    assert "3 user(s)" in listed.stdout
    assert "ioana  supervisor  CJ  active" in listed.stdout
    header = tmp_path / "bad.csv"
    header.write_text("name,role\nx,worker\n", encoding="utf-8")
    refused = await asyncio.to_thread(run, "user", "import", str(header))
    assert refused.returncode == 1 and "refused (bad-header)" in refused.stdout

    key = tmp_path / "keys" / "server.key"
    made = await asyncio.to_thread(run, "server-key", "generate", "--file", str(key))
    assert made.returncode == 0 and key.stat().st_size == 32
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    kept = await asyncio.to_thread(run, "server-key", "generate", "--file", str(key))
    assert kept.returncode == 1 and "refused (key-exists)" in kept.stdout
    missing = tmp_path / "keys" / "missing.key"
    serve = vatra_on(database_url, tmp_path / "data", VATRA_SERVER_KEY_FILE=str(missing))
    started = await asyncio.to_thread(serve, "serve", "--port", "0")
    assert started.returncode == 1  # before: only "not found", with no way to make one
    assert f"vatra server-key generate --file {missing}" in started.stderr


async def test_disabling_a_user_revokes_their_devices_and_cuts_live_sessions(
        server, provision, database_url: str, tmp_path: Path) -> None:
    """A worker leaves. Before (issue 14), the operator could not even list her devices
    to revoke them. ``vatra user disable`` revokes every device of hers, cuts her live
    sessions on the server, and no enrollment code enrolls another until she is
    enabled again."""
    vatra = vatra_on(database_url, tmp_path / "data")
    ana = await provision.tablet("ana")
    await provision.tablet("ana-phone", "ana")  # a second device of hers
    assert not (await SyncClient(ana, server.url).sync()).rejected
    listed = await asyncio.to_thread(vatra, "device", "list", "--user", "ana")
    assert "2 device(s)" in listed.stdout and listed.stdout.count(" active") == 2

    async with joined(server, ana) as channel:
        disabled = await asyncio.to_thread(vatra, "user", "disable", "ana", "--by", "op:ion")
        assert disabled.returncode == 0, disabled.stdout
        assert "2 device(s) revoked" in disabled.stdout
        frame = await asyncio.wait_for(channel.receive(), timeout=10)
        assert wire.decode(frame).code == "device-revoked"  # type: ignore[union-attr]

    with pytest.raises(ServerRejected) as info:
        await SyncClient(ana, server.url).sync()
    assert info.value.code == "device-revoked"
    code = await asyncio.to_thread(vatra, "device", "enroll-code", "--user", "ana")
    assert code.returncode == 1 and "refused (user-disabled)" in code.stdout
    again = await asyncio.to_thread(vatra, "user", "disable", "ana")
    assert again.returncode == 1 and "refused (user-disabled)" in again.stdout
    shown = await asyncio.to_thread(vatra, "user", "show", "ana")
    assert "disabled" in shown.stdout and shown.stdout.count("revoked") == 2
    assert (await asyncio.to_thread(vatra, "device", "list", "--active")).stdout.endswith(
        "0 device(s)\n")

    enabled = await asyncio.to_thread(vatra, "user", "enable", "ana", "--by", "op:ion")
    assert enabled.returncode == 0
    back = await provision.tablet("ana-new", "ana")  # a new code enrolls a new device
    assert not (await SyncClient(back, server.url).sync()).rejected


async def test_teams_are_imported_from_csv_through_the_pipeline(
        server, provision, database_url: str, tmp_path: Path) -> None:
    """Issue 14, part 5: an operator setting up a county could set a team only one
    household at a time, by an approved ``change_team`` request. ``vatra household
    import-teams`` sets many, checking every row first: a dry run reports and sets
    nothing; the real run sets the rows that pass, as the server's own change, while
    this server runs on the same database. A teammate named in the file then downloads
    the household, and the registering worker's tablet receives the new team."""
    vatra = vatra_on(database_url, tmp_path / "data")
    ana = await provision.tablet("ana")
    ion = await provision.tablet("ion")
    await provision.tablet("dan", localities=[("54984", "CJ")])  # another locality
    first = ana.create_household(locality="54975", county="CJ", address="Str. Lunga 3")
    second = ana.create_household(locality="54975", county="CJ", address="Str. Scurta 4")
    assert not (await SyncClient(ana, server.url).sync()).rejected
    assert (await SyncClient(ion, server.url).sync()).households_synced == 0
    teams = tmp_path / "teams.csv"
    teams.write_text(
        "household_id,social_worker,nurse\n"
        f"{first.household_id},ana,ion\n"
        f"{second.household_id},ana,dan\n"
        "HhNoSuchHouseholdAAAAAAAAAAA,ana,\n"
        f"{first.household_id},ana,\n")

    dry = await asyncio.to_thread(vatra, "household", "import-teams", str(teams), "--dry-run")
    report = dry.stdout.splitlines()
    assert report[0].startswith("line 3: rejected (invalid-team-member): nurse: not a worker")
    assert report[1].startswith("line 4: rejected (not-found)")
    assert report[2].startswith("line 5: rejected (duplicate-row)")
    assert report[3] == "1 team(s) would be set (dry run: nothing was); 3 row(s) rejected"
    assert dry.returncode == 1
    assert (await SyncClient(ion, server.url).sync()).households_synced == 0

    done = await asyncio.to_thread(vatra, "household", "import-teams", str(teams),
                                   "--by", "op:maria")
    assert done.stdout.splitlines()[:3] == report[:3]
    assert done.stdout.splitlines()[3] == "1 team(s) set; 3 row(s) rejected"
    assert (await SyncClient(ion, server.url).sync()).households_synced == 1
    assert ion.household(first.household_id).to_dict()["team"] == {
        "social_worker": "ana", "nurse": "ion"}
    assert not (await SyncClient(ana, server.url).sync()).rejected
    assert ana.household(first.household_id).to_dict()["team"]["nurse"] == "ion"
    assert "nurse" not in ana.household(second.household_id).to_dict()["team"]
