"""What a multi-megabyte note costs the server: memory, time, and everyone else's wait.

    python -m vatra_devtools.bench_big_value [--megabytes 5]

A real server runs in this process on the embedded PostgreSQL (or ``DATABASE_URL``). A
worker's tablet (a child process, enrolled as tablets are) registers a household; the
server shares it with a teammate; the worker then keeps a note of ``--megabytes`` as an
attachment (text, compressing like field notes do) and syncs, in steps that fit the
server's frames; then the teammate's tablet (another child) downloads the household.
A third child polls ``GET /healthz`` every 10 ms throughout.

Reported: the server process's peak resident memory during the upload and the download
(``VmHWM``, reset before them through ``/proc/self/clear_refs``) above its resident
memory before, against the household's size (its document as the server saves it), as
a ratio; the upload's and download's wall time; ``/healthz`` p50 / p99 / max. Issue 13,
fault 7: a 3 MB note as text took 18-20 s and a peak of 1.6 GiB, and stalled
``/healthz`` 9 s. Results: docs/performance.md ("Big values").
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import json
import random
import string
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from client_sdk import Replica, SyncClient, enroll
from sync_server.app import IDENTITY, SYNCHRONIZER, VatraServer
from sync_server.config import Settings
from vatra_devtools.bench import percentile
from vatra_devtools.bench_big_household import _line
from vatra_devtools.provision import SIMULATED_PIN, Provisioner

MIB = 1024 * 1024


def note(size: int, seed: int = 7) -> bytes:
    """``size`` bytes of text made of a 3,000-word vocabulary (compresses about 2.4x)."""
    rnd = random.Random(seed)
    vocabulary = ["".join(rnd.choice(string.ascii_lowercase) for _ in range(rnd.randint(2, 9)))
                  for _ in range(3000)]
    return " ".join(rnd.choice(vocabulary) for _ in range(size // 4)).encode()[:size]


# -- the tablets (child processes) -------------------------------------------------------

async def tablet(role: str, url: str, http_url: str, root: Path, size: int) -> int:
    """The worker: enroll, register, say the household id; on ``go``, attach and sync.
    The teammate: enroll, sync, check the attachment. One JSON line per step."""
    loop = asyncio.get_running_loop()

    async def line() -> str:
        got: str = await loop.run_in_executor(None, sys.stdin.readline)
        return got.strip()

    replica = Replica(root / role, pin=SIMULATED_PIN)
    await enroll(replica, http_url, await line())
    if role == "worker":
        h = replica.create_household(locality="54975", county="CJ", address="Str. Lunga 3")
        replica.save(h.household_id)
        await SyncClient(replica, url).sync()
        print(json.dumps({"household": h.household_id}), flush=True)
        if await line() != "go":
            return 2
        content = note(size)
        h = replica.household(h.household_id)
        h.attach("raport-vizita.txt", content, media_type="text/plain")
        replica.save(h.household_id)
        started = time.time()
        s = await SyncClient(replica, url).sync()
        print(json.dumps({"start": started, "end": time.time(), "sent": s.changes_sent,
                          "bytes": s.bytes_sent, "rejected": len(s.rejected)}), flush=True)
        return 0
    started = time.time()
    s = await SyncClient(replica, url).sync()
    [hid] = replica.household_ids()
    [(aid, _)] = replica.household(hid).attachments().items()
    got = replica.household(hid).attachment(aid)
    print(json.dumps({"start": started, "end": time.time(), "bytes": s.bytes_received,
                      "rejected": len(s.rejected),
                      "intact": hashlib.sha256(got).digest() == hashlib.sha256(
                          note(size)).digest()}), flush=True)
    return 0


# -- this process ------------------------------------------------------------------------

def _status_kib(field: str) -> int:
    for row in Path("/proc/self/status").read_text().splitlines():
        if row.startswith(field + ":"):
            return int(row.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS


async def run(settings: Settings, size: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="vatra-bench-value-") as tmp:
        root = Path(tmp)
        settings = dataclasses.replace(settings, port=0, data_dir=root / "server")
        async with VatraServer(settings) as server:
            assert server.app is not None
            provision = Provisioner(server.app[IDENTITY], server.http_url,
                                    server.app[SYNCHRONIZER])
            for user in ("sw-value", "nurse-value"):
                await provision.user(user)
            me = [sys.executable, "-m", "vatra_devtools.bench_big_value"]
            pipe, out = asyncio.subprocess.PIPE, asyncio.subprocess.PIPE
            poll = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "vatra_devtools.bench_big_household", "--poller",
                server.http_url, limit=1 << 26, stdin=pipe, stdout=out)
            worker = await asyncio.create_subprocess_exec(
                *me, "--tablet", "worker", server.url, server.http_url, str(root),
                "--megabytes", str(size / MIB), stdin=pipe, stdout=out)
            assert worker.stdin is not None and poll.stdin is not None
            worker.stdin.write((await provision.code("sw-value")).encode() + b"\n")
            hid = (await _line(worker))["household"]
            await provision.share(hid, "sw-value", "nurse-value")
            rss_before = _status_kib("VmRSS")
            _reset_peak()
            worker.stdin.write(b"go\n")
            up = await _line(worker)
            await worker.wait()
            actor = await server.app[SYNCHRONIZER].registry.get(hid)
            assert actor is not None
            household_bytes = len(actor.doc.save())
            mate = await asyncio.create_subprocess_exec(
                *me, "--tablet", "teammate", server.url, server.http_url, str(root),
                "--megabytes", str(size / MIB), stdin=pipe, stdout=out)
            assert mate.stdin is not None
            mate.stdin.write((await provision.code("nurse-value")).encode() + b"\n")
            down = await _line(mate)
            await mate.wait()
            peak = _status_kib("VmHWM")
            poll.stdin.close()
            samples = await _line(poll)
            await poll.wait()
    during = [s for t, s in samples if up["start"] <= t <= down["end"]]
    extra = (peak - rss_before) * 1024
    return {"bench": "big-value", "note_bytes": size, "household_bytes": household_bytes,
            "rss_before_bytes": rss_before * 1024, "peak_rss_bytes": peak * 1024,
            "peak_above_before_bytes": extra, "ratio_to_household": extra / household_bytes,
            "upload_s": up["end"] - up["start"], "upload_bytes": up["bytes"],
            "download_s": down["end"] - down["start"], "download_bytes": down["bytes"],
            "intact": down["intact"], "rejected": up["rejected"] + down["rejected"],
            "healthz": {"polls": len(during),
                        "p50_s": percentile(during, 50) if during else None,
                        "p99_s": percentile(during, 99) if during else None,
                        "max_s": max(during, default=None)}}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m vatra_devtools.bench_big_value")
    p.add_argument("--megabytes", type=float, default=5.0)
    p.add_argument("--tablet", nargs=4, metavar=("ROLE", "URL", "HTTP_URL", "ROOT"),
                   help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    size = int(args.megabytes * MIB)
    if args.tablet:
        role, url, http_url, root = args.tablet
        return asyncio.run(tablet(role, url, http_url, Path(root), size))
    r = asyncio.run(run(Settings.from_env(), size))
    mib = 1 / MIB
    print(f"note {r['note_bytes'] * mib:.1f} MiB; household as saved "
          f"{r['household_bytes'] * mib:.2f} MiB")
    print(f"server peak RSS above its RSS before: {r['peak_above_before_bytes'] * mib:.0f} MiB "
          f"({r['ratio_to_household']:.1f}x the household; before "
          f"{r['rss_before_bytes'] * mib:.0f} MiB, peak {r['peak_rss_bytes'] * mib:.0f} MiB)")
    print(f"upload {r['upload_s']:.2f} s ({r['upload_bytes'] * mib:.2f} MiB sent), download "
          f"{r['download_s']:.2f} s ({r['download_bytes'] * mib:.2f} MiB); intact: {r['intact']}")
    hz = r["healthz"]
    print(f"/healthz meanwhile ({hz['polls']} polls): p50 {hz['p50_s'] * 1000:.0f} ms, "
          f"p99 {hz['p99_s'] * 1000:.0f} ms, max {hz['max_s'] * 1000:.0f} ms")
    print(json.dumps(r, separators=(",", ":")))
    return 0 if r["intact"] and not r["rejected"] else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
