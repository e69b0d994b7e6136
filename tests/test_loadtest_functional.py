"""The load test, run for real and bounded (issue 14, part 3).

``python -m loadtests.provision`` provisions users, enrolled devices and caseloads on a
real server, as an operator would against staging; then ``locust --headless`` runs all
four scenarios against it for a few seconds with a couple of dozen users, in processes
of their own. Any failure of a Locust user (a refused sync, a failed HTTP call, a live
edit not acknowledged) makes Locust exit non-zero, and fails this test. The longer
runs and their figures are in docs/capacity.md.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import sys
from pathlib import Path

import aiohttp
import pytest
from conftest import TEST_MASTER_KEY

pytestmark = pytest.mark.functional

ROOT = Path(__file__).resolve().parents[1]
LOCUSTFILE = ROOT / "loadtests" / "locustfile.py"


async def run(*args: str, env: dict[str, str], seconds: float) -> tuple[int, str]:
    """A command in its own process, awaited without blocking the server in this loop."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *args, env=env, cwd=ROOT, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    try:
        async with asyncio.timeout(seconds):
            out, _ = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


def read_csv(path: str) -> list[dict[str, str]]:
    return list(csv.DictReader(Path(path).read_text().splitlines()))


def stats(prefix: Path) -> dict[tuple[str, str], dict[str, str]]:
    return {(row["Type"], row["Name"]): row for row in read_csv(f"{prefix}_stats.csv")}


async def changes_persisted(server) -> float:
    async with aiohttp.ClientSession() as http, http.get(f"{server.http_url}/metrics") as r:
        text = await r.text()
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("vatra_changes_persisted_total "))


async def provisioned(server, database_url: str, tmp_path: Path, *counts: str
                      ) -> tuple[Path, dict[str, str]]:
    """``python -m loadtests.provision`` against ``server``: the plan, and the environment
    (the server's database and master key) the commands run in."""
    env = {**os.environ, "DATABASE_URL": database_url, "VATRA_MASTER_KEY": TEST_MASTER_KEY,
           "VATRA_DATA_DIR": str(tmp_path / "provisioning")}
    plan = tmp_path / "plan"
    code, out = await run("-m", "loadtests.provision", str(plan), "--server", server.http_url,
                          *counts, env=env, seconds=180)
    assert code == 0, out
    return plan, env


async def test_a_bounded_locust_run_of_every_scenario_has_no_failure(
        server, database_url: str, tmp_path: Path) -> None:
    plan, env = await provisioned(server, database_url, tmp_path, "--tablets", "14",
                                  "--households", "3", "--pairs", "3", "--supervisors", "1",
                                  "--readers", "3")
    assert len(json.loads((plan / "plan.json").read_text())["devices"]) == 24
    before = await changes_persisted(server)

    prefix = tmp_path / "locust"
    code, out = await run(
        "-m", "locust", "-f", str(LOCUSTFILE), "--vatra-plan", str(plan), "--headless",
        "-u", "24", "-r", "24", "-t", "20s", "--stop-timeout", "10", "--only-summary",
        "--csv", str(prefix), "--vatra-return-every", "6", "--vatra-request-share", "1",
        env=env, seconds=240)
    assert code == 0, out[-6000:]
    rows = stats(prefix)
    total = rows[("", "Aggregated")]
    assert total["Failure Count"] == "0", out[-6000:]

    def count(kind: str, name: str) -> int:
        return int(rows.get((kind, name), {}).get("Request Count", "0"))

    assert count("sync", "tablet returns") >= 14      # every tablet came back at least once
    assert count("live", "edit saved") > 0
    assert count("live", "teammate received") > 0     # a teammate's session got the push
    assert count("GET", "supervisor: pending requests") > 0
    assert count("POST", "supervisor: approve") > 0   # requests filed by tablets, decided
    assert count("GET", "web: household list") > 0
    assert count("server", "projection lag (sampled 1/s)") > 0
    assert float(rows[("sync", "tablet returns")]["Average Content Size"]) > 0  # bytes counted
    assert await changes_persisted(server) > before   # the edits reached the database


async def test_a_refused_device_fails_the_run(server, database_url: str, provision,
                                              tmp_path: Path) -> None:
    """The bounded run must be able to fail: a plan whose only tablet was revoked after
    provisioning makes every sync refused, and Locust exits with status 1, the refusal
    named in its failures."""
    plan, env = await provisioned(server, database_url, tmp_path, "--tablets", "1",
                                  "--households", "1", "--pairs", "0", "--supervisors", "0",
                                  "--readers", "0")
    [device] = await provision.identity.devices("lt-sw-0001")
    await provision.identity.revoke_device(device.id)

    prefix = tmp_path / "locust"
    code, out = await run(
        "-m", "locust", "-f", str(LOCUSTFILE), "--vatra-plan", str(plan), "--headless",
        "-u", "1", "-r", "1", "-t", "4s", "--only-summary", "--csv", str(prefix),
        env=env, seconds=120)
    assert code == 1, out[-4000:]
    failures = read_csv(f"{prefix}_failures.csv")
    assert failures and any("revoked" in row["Error"] or "unauthorized" in row["Error"]
                            or "handshake" in row["Error"] for row in failures), failures


async def test_provisioning_mistakes_are_one_line_and_write_no_plan(
        server, database_url: str, tmp_path: Path) -> None:
    """Found reviewing issue 14: ``loadtests.provision`` given a server that is not an
    HTTP base, or one that does not answer, ended in a Python traceback. Each is now one
    line; no plan is written, so no Locust run starts on half a provisioning."""
    env = {**os.environ, "DATABASE_URL": database_url, "VATRA_MASTER_KEY": TEST_MASTER_KEY,
           "VATRA_DATA_DIR": str(tmp_path / "provisioning")}
    code, out = await run("-m", "loadtests.provision", str(tmp_path / "a"), "--server",
                          "staging:8080", env=env, seconds=60)
    assert code == 2 and "is not an HTTP base such as http://host:8080" in out, out
    code, out = await run("-m", "loadtests.provision", str(tmp_path / "b"), "--server",
                          "http://127.0.0.1:9", "--tablets", "1", "--pairs", "0",
                          "--supervisors", "0", "--readers", "0", env=env, seconds=60)
    assert code == 1 and "Traceback" not in out, out
    assert out.startswith("provisioning failed (") and "no plan was written" in out, out
    assert not (tmp_path / "b" / "plan.json").exists()
