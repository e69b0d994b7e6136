"""A big household's batch does not hold up the rest of the server (issue 13, fault 6):
real server, real PostgreSQL, enrolled tablets."""

from __future__ import annotations

import asyncio
import threading

import aiohttp
import pytest
from _scenes import until

from client_sdk import SyncClient
from sync_server.app import STORE
from sync_server.sync import cpu, pipeline

pytestmark = pytest.mark.functional

#: How long the gated check waits for the test to open it before it gives up.
GATE_SECONDS = 30


async def test_a_big_batch_is_checked_while_the_server_serves_everyone_else(
        server, provision, monkeypatch) -> None:
    """Issue 13, fault 6: a household growing to 50,000 changes by batches of 2,000 took
    12-19 s a batch, and ``/healthz`` stalled 11-16 s for every tablet meanwhile: the
    batch's Automerge work (apply, check) ran on the event loop, which serves every
    session.

    Reproduced without timing: the check of a big batch (a message over
    ``cpu.OFFLOAD_BYTES``) is held at a gate until another tablet has registered a
    household of its own and ``/healthz`` has answered. Held on the event loop, the gate
    would stop the loop itself, neither could happen, and the gate would give up after
    30 s and fail the batch. In a worker thread both go through, then the batch lands."""
    ana = await provision.tablet("ana")
    ion = await provision.tablet("ion")
    big = ana.create_household(locality="54975", county="CJ", address="Str. Lunga 3")
    ana.save(big.household_id)
    assert not (await SyncClient(ana, server.url).sync()).rejected
    for i in range(600):
        big.append_activity("visit", f"entry {i}")
    ana.save(big.household_id)

    held, gate = threading.Event(), threading.Event()
    gave_up: list[str] = []
    checked = pipeline._apply_and_check

    def gated(actor, fork, state, data, *rest):  # type: ignore[no-untyped-def]
        if len(data) > cpu.OFFLOAD_BYTES and not gate.is_set():
            held.set()
            if not gate.wait(GATE_SECONDS):
                gave_up.append(threading.current_thread().name)
                raise RuntimeError("the gate was never opened: the event loop stood still")
        return checked(actor, fork, state, data, *rest)

    monkeypatch.setattr(pipeline, "_apply_and_check", gated)
    landing = asyncio.create_task(SyncClient(ana, server.url).sync())

    async def is_held() -> bool:
        return held.is_set()

    await until(is_held, "the big batch reached its check", patience=GATE_SECONDS)
    small = ion.create_household(locality="54975", county="CJ", address="Str. Scurta 1")
    ion.save(small.household_id)
    meanwhile = await SyncClient(ion, server.url).sync()
    async with aiohttp.ClientSession() as http, http.get(f"{server.http_url}/healthz") as r:
        assert r.status == 200
    assert not gave_up, f"the check held the event loop ({gave_up[0]})"
    assert not landing.done()  # the big batch is still held at its check
    gate.set()

    landed = await landing
    assert not meanwhile.rejected and not landed.rejected
    assert landed.changes_sent >= 600
    store = server.app[STORE]
    assert await store.household(small.household_id) is not None
    assert await store.change_count(big.household_id) == len(big.doc.get_changes([]))


async def test_a_cancelled_caller_waits_for_its_worker() -> None:
    """The household's lock is released only when no worker still uses what it
    protects: a caller cancelled while its work runs in a worker thread (its session
    closed, the server stopping) waits for the worker before the cancellation goes on."""
    started, release = threading.Event(), threading.Event()
    finished = []

    def work() -> str:
        started.set()
        release.wait(GATE_SECONDS)
        finished.append(True)
        return "done"

    caller = asyncio.create_task(cpu.offload(work))
    while not started.is_set():  # noqa: ASYNC110 (a thread's event)
        await asyncio.sleep(0.01)
    caller.cancel()
    await asyncio.sleep(0.05)
    assert not caller.done()  # cancelled, but its worker still runs
    caller.cancel()  # and again: still waits
    await asyncio.sleep(0.05)
    assert not caller.done()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert finished == [True]
