"""The tablets of ``vatra bench`` workload (a), in their own process.

``python -m vatra_devtools.bench_tablets URL HTTP_URL ROOT TABLETS HOUSEHOLDS EDITS``

Started by :mod:`vatra_devtools.bench` so that the tablets' CPU (replica file
writes, tablet-side Automerge, client aiohttp) does not compete with the
server's event loop, as on a real deployment where tablets are devices.
Talks to the parent over its pipes, one line at a time:

1. reads one JSON line on stdin: a list of ``TABLETS`` one-time enrollment
   codes, one per tablet (the parent made the users ``sw-NNN`` and the codes;
   they do not go on the command line, where other users of the machine can
   read them);
2. creates ``TABLETS`` replicas ``ROOT/tablet-NNN``, enrolls each with its
   code at ``HTTP_URL`` (``client_sdk.enroll``, as a tablet's enrollment
   screen does), gives each ``HOUSEHOLDS`` households, syncs them (all
   untimed setup), makes ``EDITS`` offline edits on every household and saves
   them to disk, then prints ``ready``;
3. waits for ``go`` on stdin, syncs all tablets concurrently (each sync opens
   its end-to-end encrypted session) and prints one JSON line: per-tablet
   latencies, stalled households, changes sent, rejections, and this
   process's CPU and wall time for the timed sync; exits.

Errors go to stderr with a non-zero exit status. Imports no server code beyond
what ``client_sdk`` itself needs (the wire codec and the session).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

from client_sdk import Replica, SyncClient, SyncStalled, enroll

#: Server answers one household may take in one sync before the bench calls it stalled
#: (a healthy sync of one household takes 2-4).
MAX_ROUNDS_PER_HOUSEHOLD = 50


#: The PIN the simulated tablets seal their replicas with.
PIN = "2468"

def tablet_dir(root: Path, t: int) -> Path:
    return root / f"tablet-{t:03d}"


def tablet_user(t: int) -> str:
    """The user tablet ``t`` belongs to (a worker in the default locality)."""
    return f"sw-{t:03d}"


async def enroll_tablets(root: Path, http_url: str, codes: list[str]) -> list[Replica]:
    """One new replica per code, enrolled with it (one at a time, as tablets are set up)."""
    replicas = []
    for t, code in enumerate(codes):
        replica = Replica(tablet_dir(root, t), pin=PIN)
        await enroll(replica, http_url, code)
        replicas.append(replica)
    return replicas


def setup_tablets(replicas: list[Replica], households: int
                  ) -> list[tuple[Replica, list[tuple[str, str, str]]]]:
    """The replicas, each with its (household id, member id, assessment id) triples:
    3 changes per household (create, add_member, start_assessment)."""
    out = []
    for t, replica in enumerate(replicas):
        owned = []
        for k in range(households):
            h = replica.create_household(locality="54975", county="CJ",
                                         address=f"Str. Bench {t}-{k}")
            pid = h.add_member("Ana", "Pop", "2015-04-01", "F", "child")
            aid = h.start_assessment()
            replica.save(h.household_id)
            owned.append((h.household_id, pid, aid))
        out.append((replica, owned))
    return out


def offline_edits(replica: Replica, owned: list[tuple[str, str, str]], t: int,
                  edits: int) -> None:
    """``edits`` changes per household, each one writing values not there before."""
    for hid, pid, aid in owned:
        h = replica.household(hid)
        for e in range(edits):
            kind = e % 3
            if kind == 0:
                h.append_activity("visit", f"visit {e} by tablet {t}")
            elif kind == 1:
                h.set_address(f"Str. Bench {t} nr. {e}")
            else:
                h.record_answers(aid, pid, {"unexcused_absences_last_month": e % 32,
                                            "household_observations": f"answer {e}"})
        replica.save(hid)


async def _stdin_line() -> str:
    return await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


async def main(url: str, http_url: str, root: Path, n_tablets: int, n_households: int,
               n_edits: int) -> int:
    codes = json.loads(await _stdin_line() or "null")
    if not isinstance(codes, list) or len(codes) != n_tablets:
        print(f"bench tablets: expected a JSON list of {n_tablets} enrollment codes on stdin",
              file=sys.stderr)
        return 2
    tablets = setup_tablets(await enroll_tablets(root, http_url, codes), n_households)
    setup = await asyncio.gather(*(SyncClient(r, url).sync() for r, _ in tablets))
    rejected = [r for s in setup for r in s.rejected]
    if rejected:
        print(f"bench tablets: setup sync rejected: {rejected[0]}", file=sys.stderr)
        return 2
    for t, (replica, owned) in enumerate(tablets):
        offline_edits(replica, owned, t, n_edits)
    print("ready", flush=True)

    go = await _stdin_line()
    if go.strip() != "go":
        print(f"bench tablets: expected 'go', got {go!r}", file=sys.stderr)
        return 2
    latencies: list[float] = []
    stalled: list[str] = []

    async def one(replica: Replica) -> tuple[int, int]:
        started = time.perf_counter()
        try:
            s = await SyncClient(replica, url, max_rounds=MAX_ROUNDS_PER_HOUSEHOLD).sync()
        except SyncStalled as exc:
            stalled.append(exc.household_id)
            return 0, 0
        latencies.append(time.perf_counter() - started)
        return s.changes_sent, len(s.rejected)

    cpu0, wall0 = time.process_time(), time.perf_counter()
    done = await asyncio.gather(*(one(r) for r, _ in tablets))
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    print(json.dumps({"latencies_s": latencies, "stalled_households": stalled,
                      "changes_sent": sum(d[0] for d in done),
                      "rejected": sum(d[1] for d in done),
                      "cpu_s": cpu, "wall_s": wall}), flush=True)
    return 0


if __name__ == "__main__":
    url_, http_url_, root_, *counts = sys.argv[1:]
    sys.exit(asyncio.run(main(url_, http_url_, Path(root_), *(int(c) for c in counts))))
