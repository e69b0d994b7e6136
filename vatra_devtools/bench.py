"""``vatra bench``: throughput and latency of the sync pipeline, end to end.

A real :class:`~sync_server.app.VatraServer` runs in this process on a free
port, on the embedded PostgreSQL in a temporary data directory (or on
``DATABASE_URL``), exactly as ``vatra serve`` runs it. Two workloads:

(a) *tablets return* — N tablets (each its own :class:`client_sdk.Replica`)
    hold H households each. They run in a child process,
    :mod:`vatra_devtools.bench_tablets`, talking to the server over loopback, as
    tablets are separate devices. This process makes one user per tablet and
    one enrollment code each and hands the codes to the worker. Setup
    (untimed) enrolls the tablets, creates and syncs their households; each
    tablet then makes E offline edits on each household and the worker says
    ``ready``. The parent sends ``go``; all tablets sync at once
    (``asyncio.gather`` of ``SyncClient.sync()``) and the worker answers with
    one JSON line. Reported: changes accepted *and persisted* (rows that
    landed in ``changes``) per second of wall time from ``go`` to that
    answer, per-tablet sync latency p50/p99, and the CPU of the server
    process and of the worker separately.
(b) *live session* — one enrolled tablet's WebSocket session in this process,
    through the end-to-end encrypted session (handshake, then sealed frames:
    :func:`sync_server.protocol.session.open_session`; join, then for
    each of K changes: one edit, one ``sync``, wait until the server's
    advertised heads include it). Serial, one commit per change: it measures
    commit latency, not throughput. Reported: changes/s and per-change
    latency p50/p99.

Raw baseline, same run, same changes, no network and no database: a fork of
the server's own pre-sync document absorbs exactly those changes through
``receive_sync_message`` with a fresh ``SyncState`` and answers with
``generate_sync_message`` — the Automerge part of what
:meth:`Synchronizer._merge` does per message. For (a) the tablets' documents
are loaded from the worker's replica directories after ``ready`` and the
tablet side of the in-memory exchange is timed separately; for (b) the exact
sync messages the live client sent are replayed. ``ratio = end-to-end changes/s ÷ raw server-side changes/s``.

Output: a ``rich`` table, then one JSON line (the last line of stdout).
Exit status 0, or 1 when the persisted-change count is not what the
workload must produce (a correctness failure, not a timing).
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import dataclasses
import json
import math
import os
import platform
import pstats
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import sqlalchemy as sa
from automerge.core import Document, Message, SyncState
from prometheus_client import REGISTRY

from client_sdk import Replica, SyncClient
from client_sdk._transport import ClientChannel
from sync_server.app import ENGINE, IDENTITY, PROJECTOR, STORE, SYNCHRONIZER, VatraServer
from sync_server.config import Settings
from sync_server.protocol import wire
from sync_server.protocol.session import open_session
from sync_server.store.tables import changes as changes_table
from sync_server.sync.pipeline import Synchronizer
from vatra_devtools.bench_tablets import MAX_ROUNDS_PER_HOUSEHOLD, PIN, tablet_dir, tablet_user
from vatra_devtools.provision import Provisioner

#: Changes each household gets in the untimed setup: create, add_member, start_assessment.
SETUP_CHANGES_PER_HOUSEHOLD = 3


# -- small helpers ----------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def _rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else math.nan


def _postgres_cpu_seconds(data_dir: Path, embedded: bool) -> float | None:
    """CPU seconds used so far by the embedded PostgreSQL (postmaster and its backends).

    Linux only, best effort; ``None`` for an external DATABASE_URL or when /proc says nothing.
    """
    if not embedded:
        return None
    try:
        postmaster = int((data_dir / "postgres" / "postmaster.pid").read_text().split()[0])
        tick = os.sysconf("SC_CLK_TCK")
        total = 0
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                raw = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            fields = raw[raw.rindex(")") + 2:].split()
            pid, ppid = int(entry.name), int(fields[1])
            if pid == postmaster:  # its own time and that of backends already gone
                total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
            elif ppid == postmaster:
                total += int(fields[11]) + int(fields[12])
        return total / tick
    except (OSError, ValueError, IndexError):
        return None


@contextlib.contextmanager
def _profiled(directory: Path | None, name: str, report: dict[str, Any]) -> Iterator[None]:
    """cProfile the block when ``directory`` is set; keep the top functions by own time."""
    if directory is None:
        yield
        return
    prof = cProfile.Profile()
    prof.enable()
    try:
        yield
    finally:
        prof.disable()
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{name}.prof"
        prof.dump_stats(str(path))
        stats = pstats.Stats(prof)
        total = stats.total_tt  # type: ignore[attr-defined]
        rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)  # type: ignore[attr-defined]
        report[name] = {
            "file": str(path),
            "total_s": round(total, 3),
            "top_tottime": [
                {"function": f"{fn[0].rsplit('/', 1)[-1]}:{fn[1]}({fn[2]})",
                 "tottime_s": round(st[2], 3), "calls": st[1]}
                for fn, st in rows[:15]
            ],
        }


async def _count_changes(server: VatraServer) -> int:
    assert server.app is not None
    async with server.app[ENGINE].connect() as conn:
        return (await conn.execute(
            sa.select(sa.func.count()).select_from(changes_table))).scalar_one()


async def _server_doc(sync: Synchronizer, household_id: str) -> Document:
    """A fork of the server's current (committed) document for ``household_id``."""
    actor = sync.registry.resident(household_id) or await sync.registry.get(household_id)
    if actor is None:
        raise RuntimeError(f"household {household_id} is not on the server after setup")
    return actor.doc.fork()


# -- workload (a): tablets return ---------------------------------------------------------


def _raw_exchange(server_doc: Document, tablet_doc: Document) -> tuple[float, float, int]:
    """In-memory sync between a fork of the server's pre-sync document and the tablet's
    post-edit document, both with fresh SyncStates, messages encoded and decoded as on
    the wire. Returns (server-side seconds, tablet-side seconds, changes absorbed)."""
    before = server_doc.get_heads()
    s_state, t_state = SyncState(), SyncState()
    server_s = tablet_s = 0.0
    for _ in range(100):
        progressed = False
        t0 = time.perf_counter()
        m = tablet_doc.generate_sync_message(t_state)
        data = m.encode() if m is not None else None
        t1 = time.perf_counter()
        tablet_s += t1 - t0
        if data is not None:
            server_doc.receive_sync_message(s_state, Message.decode(data))
            progressed = True
        r = server_doc.generate_sync_message(s_state)
        reply = r.encode() if r is not None else None
        t2 = time.perf_counter()
        server_s += t2 - t1
        if reply is not None:
            tablet_doc.receive_sync_message(t_state, Message.decode(reply))
            progressed = True
        tablet_s += time.perf_counter() - t2
        if not progressed:
            break
    if sorted(server_doc.get_heads()) != sorted(tablet_doc.get_heads()):
        raise RuntimeError("raw baseline: in-memory sync did not converge")
    return server_s, tablet_s, len(server_doc.get_changes(before))


async def _start_tablets(server: VatraServer, root: Path, n_tablets: int, n_households: int,
                         n_edits: int) -> asyncio.subprocess.Process:
    """Make the tablets' users and one enrollment code per tablet, start the tablet worker
    (:mod:`vatra_devtools.bench_tablets`) and hand it the codes on stdin (not on its command
    line, which other users of the machine can read); return once it is ready."""
    assert server.app is not None
    provision = Provisioner(server.app[IDENTITY], server.http_url)
    codes = []
    for t in range(n_tablets):
        await provision.user(tablet_user(t))
        codes.append(await provision.code(tablet_user(t)))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vatra_devtools.bench_tablets", server.url, server.http_url,
        str(root), str(n_tablets), str(n_households), str(n_edits),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=1 << 24)
    try:
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(codes).encode() + b"\n")
        await proc.stdin.drain()
        if await _worker_line(proc) != "ready":
            raise RuntimeError("tablet worker: expected 'ready'")
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    return proc


async def _worker_line(proc: asyncio.subprocess.Process) -> str:
    assert proc.stdout is not None
    line = await proc.stdout.readline()
    if not line:
        raise RuntimeError(f"tablet worker exited with status {await proc.wait()} "
                           "(its stderr is above)")
    return line.decode().strip()


async def _workload_tablets(server: VatraServer, root: Path, n_tablets: int, n_households: int,
                            n_edits: int, pg_cpu: Callable[[], float | None], profile_dir: Path | None,
                            profiles: dict[str, Any]) -> dict[str, Any]:
    assert server.app is not None
    sync: Synchronizer = server.app[SYNCHRONIZER]
    proc = await _start_tablets(server, root, n_tablets, n_households, n_edits)
    try:
        # Raw-baseline inputs: the server's committed documents before the timed sync, and
        # the tablets' post-edit documents as the worker saved them.
        tablet_after: dict[str, Document] = {}
        for t in range(n_tablets):
            replica = Replica(tablet_dir(root, t), pin=PIN)
            for hid in replica.household_ids():
                tablet_after[hid] = replica.household(hid).doc
        server_before = {hid: await _server_doc(sync, hid) for hid in tablet_after}

        rows_before = await _count_changes(server)
        counter_before = _metric("vatra_changes_persisted_total")
        persist_before = _metric("vatra_persist_seconds_sum")
        checks_before = _metric("vatra_check_seconds_sum")
        checked_before = _metric("vatra_check_seconds_count")
        lags_before = len(server.app[PROJECTOR].lags)
        pg_before = pg_cpu()
        assert proc.stdin is not None
        with _profiled(profile_dir, "tablets_return", profiles):
            cpu0, wall0 = time.process_time(), time.perf_counter()
            proc.stdin.write(b"go\n")
            await proc.stdin.drain()
            line = await _worker_line(proc)
            wall = time.perf_counter() - wall0
            cpu = time.process_time() - cpu0
        pg_after = pg_cpu()
        worker = json.loads(line)
        if await proc.wait() != 0:
            raise RuntimeError(f"tablet worker exited with status {proc.returncode}")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    rows = await _count_changes(server) - rows_before
    counted = _metric("vatra_changes_persisted_total") - counter_before
    latencies, stalled = worker["latencies_s"], worker["stalled_households"]

    raw_server = raw_tablet = 0.0
    raw_changes = 0
    for hid, sdoc in server_before.items():
        server_s, tablet_s, n = _raw_exchange(sdoc, tablet_after[hid])
        raw_server += server_s
        raw_tablet += tablet_s
        raw_changes += n

    expected = n_tablets * n_households * n_edits
    e2e_rate = _rate(rows, wall)
    raw_rate = _rate(raw_changes, raw_server)
    return {
        "tablets": n_tablets, "households_per_tablet": n_households, "edits": n_edits,
        "expected_changes": expected,
        "persisted_changes": rows,
        "persisted_counter": counted,
        "changes_sent": worker["changes_sent"],
        "rejected": worker["rejected"],
        "stalled_tablets": n_tablets - len(latencies),
        "stalled_households": stalled,
        "wall_s": wall,
        "changes_per_s": e2e_rate,
        "latency_p50_s": percentile(latencies, 50),
        "latency_p99_s": percentile(latencies, 99),
        "latency_max_s": max(latencies) if latencies else math.nan,
        "process_cpu_s": cpu,
        "worker_cpu_s": worker["cpu_s"],
        "worker_wall_s": worker["wall_s"],
        "postgres_cpu_s": None if pg_before is None or pg_after is None else pg_after - pg_before,
        **_per_change(cpu, pg_before, pg_after, rows),
        "persist_s": _metric("vatra_persist_seconds_sum") - persist_before,
        **_check_figures(checks_before, checked_before, wall),
        **(await _projection_figures(server, lags_before)),
        "raw_changes": raw_changes,
        "raw_server_s": raw_server,
        "raw_tablet_s": raw_tablet,
        "raw_changes_per_s": raw_rate,
        "ratio": e2e_rate / raw_rate if raw_rate > 0 else math.nan,
        # The ratio a server saturating one core would reach: Automerge's share of its CPU.
        "raw_share_of_server_cpu": raw_server / cpu if cpu > 0 else math.nan,
        "ok": (rows == expected and raw_changes == expected and not worker["rejected"]
               and not stalled),
    }


def _per_change(cpu: float, pg_before: float | None, pg_after: float | None,
                changes: int) -> dict[str, float | None]:
    """CPU milliseconds per persisted change: the server process's, PostgreSQL's and both
    (the figure issue 15 compares with the reference server's)."""
    pg = None if pg_before is None or pg_after is None else pg_after - pg_before
    n = max(changes, 1)
    return {"server_cpu_ms_per_change": 1000 * cpu / n,
            "postgres_cpu_ms_per_change": None if pg is None else 1000 * pg / n,
            "server_and_postgres_cpu_ms_per_change": None if pg is None
            else 1000 * (cpu + pg) / n}


# -- workload (b): live session -------------------------------------------------------------


async def _workload_live(server: VatraServer, root: Path, k: int,
                         pg_cpu: Callable[[], float | None],
                         profile_dir: Path | None, profiles: dict[str, Any]) -> dict[str, Any]:
    assert server.app is not None
    sync: Synchronizer = server.app[SYNCHRONIZER]
    provision = Provisioner(server.app[IDENTITY], server.http_url)
    replica = await provision.tablet(root / "live-tablet", "sw-live")
    creds = replica.credentials
    assert creds is not None
    h = replica.create_household(locality="54975", county="CJ", address="Str. Live 1")
    h.add_member("Ion", "Pop", "2012-02-02", "M", "child")
    h.start_assessment()
    replica.save(h.household_id)
    hid = h.household_id
    await SyncClient(replica, server.url).sync()
    server_before = await _server_doc(sync, hid)
    doc = h.doc
    peer_id = replica.peer_id
    sent: list[bytes] = []
    latencies: list[float] = []

    rows_before = await _count_changes(server)
    counter_before = _metric("vatra_changes_persisted_total")
    persist_before = _metric("vatra_persist_seconds_sum")
    checks_before = _metric("vatra_check_seconds_sum")
    checked_before = _metric("vatra_check_seconds_count")
    lags_before = len(server.app[PROJECTOR].lags)
    async with aiohttp.ClientSession() as session, session.ws_connect(
            server.url, max_msg_size=server.settings.max_frame_bytes + 64 * 1024) as ws:
        # The session handshake (and its Ed25519/X25519 work) is outside the timed loop,
        # as a tablet opens one session per sync; every frame below is sealed/opened.
        channel = await open_session(ClientChannel(ws), creds.device_id, creds.signing_key,
                                     creds.server_key)

        async def receive() -> wire.Message:
            frame = await asyncio.wait_for(channel.receive(), 30)
            if frame is None:
                raise RuntimeError("live session: the server closed the connection")
            msg = wire.decode(frame)
            if isinstance(msg, wire.Error):
                raise RuntimeError(f"live session: server error {msg.code}: {msg.message}")
            return msg

        async def send_sync(m: Any) -> None:
            data = m.encode()
            sent.append(data)
            await channel.send(wire.encode(wire.Sync(peer_id, server_id, hid, data)))

        async def until_server_has(target: set[bytes]) -> None:
            while True:
                msg = await receive()
                if not isinstance(msg, wire.Sync) or msg.document_id != hid:
                    continue
                doc.receive_sync_message(state, Message.decode(msg.data))
                if target <= set(wire.sync_message_heads(msg.data)):
                    return
                reply = doc.generate_sync_message(state)
                if reply is not None:
                    await send_sync(reply)

        await channel.send(wire.encode(wire.Join(peer_id, metadata={"isEphemeral": False})))
        peer = await receive()
        if not isinstance(peer, wire.Peer):
            raise RuntimeError(f"live session: expected 'peer', got '{peer.type}'")
        server_id = peer.sender_id
        state = SyncState()
        await send_sync(doc.generate_sync_message(state))
        await until_server_has(set(doc.get_heads()))
        handshake_messages = len(sent)

        pg_before = pg_cpu()
        with _profiled(profile_dir, "live_session", profiles):
            cpu0, wall0 = time.process_time(), time.perf_counter()
            for i in range(k):
                started = time.perf_counter()
                if i % 2:
                    h.set_address(f"Str. Live nr. {i}")
                else:
                    h.append_activity("call", f"live change {i}")
                m = doc.generate_sync_message(state)
                if m is None:
                    raise RuntimeError("live session: an edit produced no sync message")
                await send_sync(m)
                await until_server_has(set(doc.get_heads()))
                latencies.append(time.perf_counter() - started)
            wall = time.perf_counter() - wall0
            cpu = time.process_time() - cpu0
        pg_after = pg_cpu()
    rows = await _count_changes(server) - rows_before
    counted = _metric("vatra_changes_persisted_total") - counter_before

    # Raw: replay exactly the frames this client sent into a fork of the server's
    # pre-session document, fresh SyncState, answering each as the pipeline does.
    state_raw = SyncState()
    raw_before = server_before.get_heads()
    t0 = time.perf_counter()
    for data in sent:
        server_before.receive_sync_message(state_raw, Message.decode(data))
        reply = server_before.generate_sync_message(state_raw)
        if reply is not None:
            reply.encode()
    raw_s = time.perf_counter() - t0
    raw_changes = len(server_before.get_changes(raw_before))
    if sorted(server_before.get_heads()) != sorted(doc.get_heads()):
        raise RuntimeError("raw baseline: replay did not reach the client's heads")

    e2e_rate = _rate(rows, wall)
    raw_rate = _rate(raw_changes, raw_s)
    return {
        "changes": k,
        "persisted_changes": rows,
        "persisted_counter": counted,
        "syncs_sent": len(sent) - handshake_messages,
        "wall_s": wall,
        "changes_per_s": e2e_rate,
        "latency_p50_s": percentile(latencies, 50),
        "latency_p99_s": percentile(latencies, 99),
        "latency_max_s": max(latencies) if latencies else math.nan,
        "process_cpu_s": cpu,
        "postgres_cpu_s": None if pg_before is None or pg_after is None else pg_after - pg_before,
        **_per_change(cpu, pg_before, pg_after, rows),
        "persist_s": _metric("vatra_persist_seconds_sum") - persist_before,
        **_check_figures(checks_before, checked_before, wall),
        **(await _projection_figures(server, lags_before)),
        "raw_changes": raw_changes,
        "raw_server_s": raw_s,
        "raw_changes_per_s": raw_rate,
        "ratio": e2e_rate / raw_rate if raw_rate > 0 else math.nan,
        "ok": rows == k and raw_changes == k,
    }


async def _projection_figures(server: VatraServer, lags_before: int) -> dict[str, Any]:
    """Projection lag in a timed phase: wait (at most a minute) until the projector has
    caught up, then the p50 / p99 of the lags of the households it projected since
    ``lags_before`` (from a household's oldest pending change to its projection's commit),
    and how long after the phase the last one was projected."""
    assert server.app is not None
    projector = server.app[PROJECTOR]
    store = server.app[STORE]
    if not server.settings.projector:  # VATRA_PROJECTOR=0: nothing to wait for
        return {"projections": 0, "projection_lag_p50_s": math.nan,
                "projection_lag_p99_s": math.nan, "projection_lag_max_s": math.nan,
                "projection_caught_up_after_s": math.nan,
                "projection_pending_after": len(await store.outbox_pending(1000))}
    t0 = time.perf_counter()
    while await store.outbox_pending(1) and time.perf_counter() - t0 < 60:  # noqa: ASYNC110 (the database is the state)
        await asyncio.sleep(0.02)
    caught_up = time.perf_counter() - t0
    lags = list(projector.lags)[lags_before:]
    return {"projections": len(lags),
            "projection_lag_p50_s": percentile(lags, 50),
            "projection_lag_p99_s": percentile(lags, 99),
            "projection_lag_max_s": max(lags) if lags else math.nan,
            "projection_caught_up_after_s": caught_up,
            "projection_pending_after": len(await store.outbox_pending(1000))}


def _metric(name: str) -> float:
    """A sample of the server's Prometheus metrics (the server runs in this process)."""
    return REGISTRY.get_sample_value(name) or 0.0


def _check_figures(seconds_before: float, batches_before: float,
                   wall: float) -> dict[str, Any]:
    """What the per-batch checks (rules, schema, lattice, conflict detection) cost in a
    timed phase: in total, per batch, and as a share of the phase's wall time. In (b)
    one change is in flight at a time, so the share is the throughput the checks take."""
    seconds = _metric("vatra_check_seconds_sum") - seconds_before
    batches = _metric("vatra_check_seconds_count") - batches_before
    return {"checks_s": seconds, "checked_batches": batches,
            "checks_per_batch_s": seconds / batches if batches else math.nan,
            "checks_share_of_wall": seconds / wall if wall > 0 else math.nan}


# -- output ---------------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def _print_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    a, b = result["tablets_return"], result["live_session"]
    table = Table(title=f"vatra bench — {result['machine']['nproc']} CPU, "
                        f"Python {result['machine']['python']}, database: {result['database']}")
    table.add_column("figure")
    table.add_column(f"(a) tablets return\n{a['tablets']} tablets x "
                     f"{a['households_per_tablet']} hh x {a['edits']} edits", justify="right")
    table.add_column(f"(b) live session\n{b['changes']} changes, one at a time\n"
                     "(commit-latency bound)", justify="right")

    def cpu(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.2f} s"

    table.add_row("persisted / expected changes",
                  f"{a['persisted_changes']} / {a['expected_changes']}",
                  f"{b['persisted_changes']} / {b['changes']}")
    table.add_row("stalled tablets", str(a["stalled_tablets"]), "—")
    table.add_row("wall time", f"{a['wall_s']:.3f} s", f"{b['wall_s']:.3f} s")
    table.add_row("end-to-end changes/s", f"{a['changes_per_s']:,.0f}",
                  f"{b['changes_per_s']:,.0f}")
    table.add_row("latency p50", _ms(a["latency_p50_s"]), _ms(b["latency_p50_s"]))
    table.add_row("latency p99", _ms(a["latency_p99_s"]), _ms(b["latency_p99_s"]))
    table.add_row("raw server Automerge changes/s", f"{a['raw_changes_per_s']:,.0f}",
                  f"{b['raw_changes_per_s']:,.0f}")
    table.add_row("[bold]ratio e2e / raw[/bold] (target ≥ 0.6)",
                  f"[bold]{a['ratio']:.3f}[/bold]", f"[bold]{b['ratio']:.3f}[/bold]")
    table.add_row("raw server Automerge / server CPU", f"{a['raw_share_of_server_cpu']:.3f}",
                  "—")
    table.add_row("raw tablet-side Automerge", f"{a['raw_tablet_s']:.3f} s", "—")
    table.add_row("server process CPU", cpu(a["process_cpu_s"]),
                  f"{cpu(b['process_cpu_s'])} incl. client")
    table.add_row("tablet worker CPU", cpu(a["worker_cpu_s"]), "— (client in process)")
    table.add_row("PostgreSQL CPU", cpu(a["postgres_cpu_s"]), cpu(b["postgres_cpu_s"]))

    def ms(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.2f} ms"

    table.add_row("server CPU per change", ms(a["server_cpu_ms_per_change"]),
                  f"{ms(b['server_cpu_ms_per_change'])} incl. client")
    table.add_row("PostgreSQL CPU per change", ms(a["postgres_cpu_ms_per_change"]),
                  ms(b["postgres_cpu_ms_per_change"]))
    table.add_row("[bold]server + PostgreSQL CPU per change[/bold]",
                  ms(a["server_and_postgres_cpu_ms_per_change"]),
                  ms(b["server_and_postgres_cpu_ms_per_change"]))
    table.add_row("awaiting persist (summed)", f"{a['persist_s']:.3f} s",
                  f"{b['persist_s']:.3f} s")
    table.add_row("batch checks per batch", _ms(a["checks_per_batch_s"]),
                  _ms(b["checks_per_batch_s"]))
    table.add_row("[bold]batch checks / wall time[/bold]",
                  f"{a['checks_share_of_wall']:.1%}",
                  f"[bold]{b['checks_share_of_wall']:.1%}[/bold]")
    table.add_row("households projected", str(a["projections"]), str(b["projections"]))
    table.add_row("[bold]projection lag p50 / p99[/bold] (target p99 < 1 s)",
                  f"{_ms(a['projection_lag_p50_s'])} / {_ms(a['projection_lag_p99_s'])}",
                  f"{_ms(b['projection_lag_p50_s'])} / {_ms(b['projection_lag_p99_s'])}")
    table.add_row("projector caught up after the phase",
                  _ms(a["projection_caught_up_after_s"]), _ms(b["projection_caught_up_after_s"]))
    console = Console()
    console.print(table)
    console.print("per tablet (a) / per change (b); timed phases only; raw = a fork of the "
                  "server's pre-sync document absorbing the same changes in memory. "
                  "(a): tablets in a separate worker process. (b): one change per round "
                  "trip, each waiting for its own commit, client in the server process: "
                  "commit-latency bound, not a throughput figure")
    if a["stalled_tablets"]:
        console.print(f"[bold red]{a['stalled_tablets']} tablet sync(s) stalled[/bold red] "
                      "(server and tablet exchanged messages without converging; aborted "
                      f"after {MAX_ROUNDS_PER_HOUSEHOLD} rounds): a server bug")


def _jsonable(value: Any) -> Any:
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 6)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


# -- entry point ----------------------------------------------------------------------------


async def run_bench(settings: Settings, args: Any) -> int:
    """Run both workloads against an in-process server; print the table and a JSON line."""
    n_tablets = int(getattr(args, "tablets", 20))
    n_households = int(getattr(args, "households", 5))
    n_edits = int(getattr(args, "edits", 10))
    k = int(getattr(args, "live_changes", 300))
    profile = getattr(args, "profile", None)
    profile_dir = Path(profile) if profile is not None else None
    if min(n_tablets, n_households, n_edits, k) < 1:
        raise SystemExit("--tablets, --households, --edits and --live-changes must be >= 1")

    with tempfile.TemporaryDirectory(prefix="vatra-bench-") as tmp:
        root = Path(tmp)
        data_dir = getattr(args, "data_dir", None)
        settings = dataclasses.replace(settings, port=0,
                                       data_dir=Path(data_dir) if data_dir else root / "server")
        embedded = not settings.database_url
        profiles: dict[str, Any] = {}

        def pg_cpu() -> float | None:
            return _postgres_cpu_seconds(settings.data_dir, embedded)

        async with VatraServer(settings) as server:
            a = await _workload_tablets(server, root / "tablets", n_tablets, n_households,
                                        n_edits, pg_cpu, profile_dir, profiles)
            b = await _workload_live(server, root / "live", k, pg_cpu, profile_dir, profiles)

    result: dict[str, Any] = {
        "bench": "vatra",
        "machine": {"nproc": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "database": "DATABASE_URL" if settings.database_url else "embedded PostgreSQL",
        "raw_baseline": "fork of the server's pre-sync document, fresh SyncState, "
                        "receive_sync_message + generate_sync_message (server side only)",
        "tablets_return": a,
        "live_session": b,
        "ok": bool(a["ok"] and b["ok"]),
    }
    if profiles:
        result["profiles"] = profiles
    _print_table(result)
    print(json.dumps(_jsonable(result), separators=(",", ":")), flush=True)
    return 0 if result["ok"] else 1
