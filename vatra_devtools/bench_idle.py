"""What idle connected devices cost one instance: its memory (RSS) per open session.

    python -m vatra_devtools.bench_idle [--devices 50] [--sessions 10000] [--households 20]

``vatra serve`` runs as a process of its own (so its RSS is its own) on the embedded
PostgreSQL (or ``DATABASE_URL``). ``--devices`` workers are enrolled, one tablet each,
each with ``--households`` households on its team, registered and synced once. Then
this process opens ``--sessions`` sessions spread over the devices (the server's
``VATRA_SESSIONS_PER_DEVICE`` is raised to allow it), each as a returning tablet does:
the end-to-end handshake, ``join`` and the reconnect fast path's ``vatra-heads``, to
which the server answers that every household is the same (so it watches them and
loads none). Each session then stays open and idle, answering the server's pings. The
server's RSS (``VmRSS``) is read from ``/proc`` before the sessions, at each tenth of
them, and after they have been idle for ``--idle`` seconds.

Issue 15's target: 10,000 idle devices on one instance under 400 MB RSS. Results:
docs/performance.md, "Idle devices".
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from client_sdk import Replica, SyncClient
from client_sdk._transport import ClientChannel
from sync_server.auth.identity import IdentityStore
from sync_server.protocol import fastpath, wire
from sync_server.protocol.session import open_session
from sync_server.store.database import database_url, make_engine
from vatra_devtools.provision import Provisioner


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


@contextlib.asynccontextmanager
async def serve(root: Path, url: str, port: int, sessions_per_device: int
                ) -> AsyncIterator[asyncio.subprocess.Process]:
    key = root / "server_identity.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    env = {**os.environ, "DATABASE_URL": url,
           "VATRA_MASTER_KEY": base64.b64encode(os.urandom(32)).decode(),
           "VATRA_SERVER_KEY_FILE": str(key), "VATRA_DATA_DIR": str(root / "srv"),
           "VATRA_SESSIONS_PER_DEVICE": str(sessions_per_device)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sync_server.cli", "serve", "--host", "127.0.0.1",
        "--port", str(port), env=env, stdout=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 120)
        if b"listening" not in line:
            raise RuntimeError(f"the server did not start: {line!r}")
        yield proc
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()


async def idle_session(http: aiohttp.ClientSession, url: str, replica: Replica,
                       tags: bytes, opened: asyncio.Event, stop: asyncio.Event) -> None:
    """One returning tablet that stays connected and idle (answering pings)."""
    creds = replica.credentials
    assert creds is not None
    join = wire.Join(replica.peer_id, metadata={"vatraCaseload": True,
                                                "vatraHeads": fastpath.VERSION})
    async with http.ws_connect(url, heartbeat=None, autoping=True) as ws:
        channel = await open_session(ClientChannel(ws), creds.device_id, creds.signing_key,
                                     creds.server_key, early=[
                                         wire.encode(join),
                                         wire.encode(wire.Heads(replica.peer_id, tags))])
        for expected in (wire.Peer, wire.HeadsReply):
            frame = await channel.receive()
            msg = wire.decode(frame) if frame is not None else None
            if not isinstance(msg, expected):
                raise RuntimeError(f"expected {expected.type}, got {msg!r}")
            if isinstance(msg, wire.HeadsReply) and msg.differ:
                raise RuntimeError("the server found households that differ")
        opened.set()
        receiving = asyncio.ensure_future(channel.receive())  # pings are answered meanwhile
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({receiving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        for task in (receiving, stopping):
            task.cancel()


async def run(n_devices: int, n_sessions: int, n_households: int, idle: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="vatra-bench-idle-") as tmp:
        root = Path(tmp)
        per_device = -(-n_sessions // n_devices)
        port = free_port()
        async with database_url(os.environ.get("DATABASE_URL"), root / "db") as url, \
                serve(root, url, port, per_device) as proc:
            engine = make_engine(url)
            try:
                provision = Provisioner(IdentityStore(engine), f"http://127.0.0.1:{port}")
                ws_url = f"ws://127.0.0.1:{port}/v1/sync"
                tablets = []
                for d in range(n_devices):
                    t = await provision.tablet(root / f"t{d}", f"sw-{d:03d}")
                    for i in range(n_households):
                        t.create_household(locality="54975", county="CJ", address=f"Str. {i}")
                    summary = await SyncClient(t, ws_url).sync()
                    if summary.rejected or summary.households_synced != n_households:
                        raise RuntimeError(f"setup sync failed: {summary}")
                    tablets.append(t)
            finally:
                await engine.dispose()
            tags = [b"".join(fastpath.heads_tag(h, t.document(h).get_heads())
                             for h in t.household_ids()) for t in tablets]
            await asyncio.sleep(2)
            samples = [{"sessions": 0, "rss_mb": rss_mb(proc.pid)}]
            stop = asyncio.Event()
            tasks: list[asyncio.Task[None]] = []
            connector = aiohttp.TCPConnector(limit=0)
            started = time.perf_counter()
            async with aiohttp.ClientSession(connector=connector) as http:
                step = max(1, n_sessions // 10)
                for first in range(0, n_sessions, step):
                    batch = []
                    for i in range(first, min(first + step, n_sessions)):
                        opened = asyncio.Event()
                        d = i % n_devices
                        tasks.append(asyncio.create_task(
                            idle_session(http, ws_url, tablets[d], tags[d], opened, stop)))
                        batch.append(opened)
                        if len(batch) % 200 == 0:  # a few hundred handshakes at a time
                            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in batch)),
                                                   300)
                    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in batch)), 300)
                    failed = [t for t in tasks if t.done() and t.exception() is not None]
                    if failed:
                        raise RuntimeError(f"{len(failed)} session(s) failed: "
                                           f"{failed[0].exception()!r}")
                    samples.append({"sessions": len(tasks), "rss_mb": rss_mb(proc.pid)})
                opened_s = time.perf_counter() - started
                await asyncio.sleep(idle)
                alive = sum(1 for t in tasks if not t.done())
                after_idle = rss_mb(proc.pid)
                stop.set()
                await asyncio.gather(*tasks, return_exceptions=True)
    base = samples[0]["rss_mb"]
    return {"bench": "idle", "devices": n_devices, "sessions": n_sessions,
            "households_per_device": n_households, "idle_s": idle,
            "open_s": round(opened_s, 1), "alive_after_idle": alive,
            "rss_mb_before": round(base, 1), "rss_mb_after_idle": round(after_idle, 1),
            "kb_per_session": round((after_idle - base) * 1024 / n_sessions, 1),
            "samples": [{**s, "rss_mb": round(s["rss_mb"], 1)} for s in samples]}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m vatra_devtools.bench_idle")
    p.add_argument("--devices", type=int, default=50)
    p.add_argument("--sessions", type=int, default=10_000)
    p.add_argument("--households", type=int, default=20)
    p.add_argument("--idle", type=float, default=40.0,
                   help="seconds the sessions stay idle before the last reading "
                        "(past the server's 30 s heartbeat)")
    args = p.parse_args(argv)
    r = asyncio.run(run(args.devices, args.sessions, args.households, args.idle))
    for s in r["samples"]:
        print(f"{s['sessions']:6d} sessions  server RSS {s['rss_mb']:7.1f} MB")
    print(f"after {r['idle_s']:.0f} s idle: {r['alive_after_idle']} sessions open, server RSS "
          f"{r['rss_mb_after_idle']} MB ({r['kb_per_session']} KB per session over the "
          f"{r['rss_mb_before']} MB before)")
    print(json.dumps(r, separators=(",", ":")))
    return 0 if r["alive_after_idle"] == r["sessions"] else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
