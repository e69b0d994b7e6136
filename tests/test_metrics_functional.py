"""What an operator sees (issue 14, part 2): Prometheus metrics on ``/metrics`` and
structured log lines, from a real server syncing real tablets, with no personal data
and no household or device ids in metric labels."""

from __future__ import annotations

import json
import logging

import aiohttp
import pytest
from _scenes import forge_write
from prometheus_client.parser import text_string_to_metric_families

from client_sdk import SyncClient
from sync_server.cli.logs import JsonFormatter

pytestmark = pytest.mark.functional


async def scrape(server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with aiohttp.ClientSession() as http, http.get(f"{server.http_url}/metrics") as r:
        assert r.status == 200
        text = await r.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_a_sync_and_a_refusal_show_in_metrics_and_logs(server, provision, caplog) -> None:
    """Before (issue 14): ``/metrics`` showed three projection gauges and the Python
    process, and the logs said nothing of sessions or refusals. Here one tablet registers
    a household, syncs, then sends a change under an actor no device registered: every
    figure an operator watches moves, and the label values name types and codes only."""
    caplog.set_level(logging.INFO, logger="sync_server")
    before = await scrape(server)
    ana = await provision.tablet("ana")
    h = ana.create_household(locality="54975", county="CJ", address="Str. Lunga 3")
    ana.save(h.household_id)
    hid = h.household_id
    assert not (await SyncClient(ana, server.url).sync()).rejected
    with ana.edit(hid) as mine:
        mine.append_activity("visit", "first visit")
    assert not (await SyncClient(ana, server.url).sync()).rejected
    await forge_write(provision, ana, hid, "Str. Zamfirescu 9")
    refused = await SyncClient(ana, server.url).sync()
    assert [r.code for r in refused.rejected] == ["actor-not-registered"]
    after = await scrape(server)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("vatra_sessions_opened_total") >= 2
    assert grew("vatra_messages_in_total", type="sync") > 0
    assert grew("vatra_messages_out_total", type="sync") > 0
    assert grew("vatra_bytes_in_total") > 0 and grew("vatra_bytes_out_total") > 0
    assert grew("vatra_refusals_total", code="actor-not-registered") >= 1
    assert grew("vatra_merge_seconds_count") > 0 and grew("vatra_check_seconds_count") > 0
    assert grew("vatra_persist_seconds_count") > 0
    assert grew("vatra_group_commit_batches_count") > 0
    assert grew("vatra_changes_persisted_total") > 0
    assert value(after, "vatra_households_resident") >= 1
    assert value(after, "vatra_quarantine_bytes") > 0  # the refused batch was kept
    assert ("vatra_db_pool_in_use", ()) in after
    device = ana.credentials.device_id
    for (_, labels) in after:
        for _, label in labels:
            assert hid not in label and device not in label and label != "ana"

    opened = [r for r in caplog.records if r.getMessage() == "session opened"]
    closed = [r for r in caplog.records if r.getMessage() == "session closed"]
    assert opened and closed and all(r.device_id == device for r in opened + closed)
    assert closed[-1].bytes_in > 0 and closed[-1].households >= 1
    [refusal] = [r for r in caplog.records if r.getMessage().startswith("batch refused")]
    assert refusal.code == "actor-not-registered" and refusal.household_id == hid
    logged = "\n".join(JsonFormatter().format(r) for r in caplog.records)
    assert "Zamfirescu" not in logged  # the refused value is in no log line


def test_a_json_log_line_is_one_object_with_the_attached_fields() -> None:
    record = logging.LogRecord("sync_server.gateway.endpoint", logging.INFO, __file__, 1,
                               "session closed", None, None)
    record.device_id, record.seconds, record.bytes_in = "dev-abc", 1.5, 123
    line = JsonFormatter().format(record)
    assert "\n" not in line
    got = json.loads(line)
    assert got["message"] == "session closed" and got["level"] == "INFO"
    assert (got["device_id"], got["seconds"], got["bytes_in"]) == ("dev-abc", 1.5, 123)
    assert got["logger"] == "sync_server.gateway.endpoint" and got["time"].endswith("+00:00")
