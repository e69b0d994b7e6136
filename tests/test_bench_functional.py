"""``vatra bench`` with tiny parameters, through the CLI, against this test's database.

Not a timing test: it checks that every figure is reported and that the
workloads did what they claim (the changes table grew by exactly the edits
made, and the raw baseline absorbed the same changes). Workload (a)'s tablets
run in the ``vatra_devtools.bench_tablets`` child process; no sync may stall
(the Bloom false-positive livelock is fixed, see
``test_changes_queued_behind_a_bloom_false_positive_are_kept``).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import TEST_MASTER_KEY

from sync_server.store.database import make_engine
from sync_server.store.tables import changes
from vatra_devtools.bench import SETUP_CHANGES_PER_HOUSEHOLD

pytestmark = pytest.mark.functional

TABLETS, HOUSEHOLDS, EDITS, LIVE = 2, 1, 2, 5

FIGURES = ("wall_s", "changes_per_s", "latency_p50_s", "latency_p99_s", "raw_changes_per_s",
           "ratio", "persisted_changes", "process_cpu_s")


async def test_bench_reports_figures_and_persists_every_edit(database_url: str,
                                                             tmp_path: Path) -> None:
    env = {**os.environ, "DATABASE_URL": database_url, "COLUMNS": "120",
           "VATRA_MASTER_KEY": TEST_MASTER_KEY}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sync_server.cli", "bench",
        "--tablets", str(TABLETS), "--households", str(HOUSEHOLDS), "--edits", str(EDITS),
        "--live-changes", str(LIVE), "--data-dir", str(tmp_path / "data"),
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=240)
    stdout = out.decode()
    assert stdout.strip(), err.decode()
    report = json.loads(stdout.strip().splitlines()[-1])  # the machine-readable line
    assert "ratio e2e / raw" in stdout  # the human-readable table came first

    a, b = report["tablets_return"], report["live_session"]
    for section in (a, b):
        for figure in FIGURES:
            assert isinstance(section[figure], int | float), (figure, section)
        assert section["changes_per_s"] > 0 and section["raw_changes_per_s"] > 0
        assert section["latency_p50_s"] <= section["latency_p99_s"]

    assert a["worker_cpu_s"] > 0  # the tablets ran in their own process and reported it

    expected = TABLETS * HOUSEHOLDS * EDITS
    assert a["expected_changes"] == expected
    assert a["raw_changes"] == expected  # the baseline absorbed exactly the same edits
    assert b["persisted_changes"] == b["persisted_counter"] == b["raw_changes"] == LIVE

    # Independent check, straight from the database the server wrote to.
    engine = make_engine(database_url)
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(
                sa.select(sa.func.count()).select_from(changes))).scalar_one()
    finally:
        await engine.dispose()
    setup = (TABLETS * HOUSEHOLDS + 1) * SETUP_CHANGES_PER_HOUSEHOLD  # +1: the live household

    assert proc.returncode == 0, err.decode()
    assert report["ok"] is True
    assert a["persisted_changes"] == a["persisted_counter"] == expected
    assert a["stalled_tablets"] == 0 and a["rejected"] == 0
    assert rows == setup + expected + LIVE
