"""Provision a load test: users, enrolled devices and caseloads, against a target server.

    DATABASE_URL=… VATRA_MASTER_KEY=… python -m loadtests.provision DIR \
        --server http://staging:8080 [--server http://staging:8081 …] \
        --tablets 100 --households 10 --pairs 10 --supervisors 2 --readers 4

As an admin and the tablets would do it, nothing bypassed: each user is added (or
reused) in the target's database, exactly as ``vatra user add`` does (so this needs the
same ``DATABASE_URL`` and master key as the server); each device gets a one-time code
and enrolls over the target's HTTP API with its own keys, as a tablet's enrollment
screen does. Then the caseloads are made on the devices and synced:

- ``--tablets`` returning tablets (``returning``), each registering ``--households``
  households with two members and an assessment;
- ``--pairs`` pairs of co-editing tablets (``co-editing``): the first of a pair registers
  one household with both of them in its team, and both sync it;
- ``--supervisors`` county supervisors and ``--readers`` national web-tier users, with
  an enrolled device each (their HTTP requests are signed by it).

Devices are spread over the ``--server`` instances in turn. Writes ``DIR/plan.json`` and
the replicas under ``DIR/devices/``; refuses a ``DIR`` that already holds a plan.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

import aiohttp

from client_sdk import Replica, SyncClient, VatraClientError, enroll
from sync_server.auth.identity import IdentityError, IdentityStore
from sync_server.cli.admin import identity_store
from sync_server.config import Settings
from sync_server.store.keys import KeyRingError

from .plan import CO_EDITING, PIN, PLAN_FILE, RETURNING, SUPERVISOR, WEB, Device, Plan, Target

T = TypeVar("T")

#: Devices set up at once (enrollment, registration, first sync).
CONCURRENCY = 8


async def _bounded(jobs: list[Callable[[], Awaitable[T]]]) -> list[T]:
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(job: Callable[[], Awaitable[T]]) -> T:
        async with gate:
            return await job()

    return await asyncio.gather(*(one(j) for j in jobs))


class Provisioning:
    def __init__(self, root: Path, ids: IdentityStore, targets: list[Target], county: str,
                 locality: str) -> None:
        self.root = root
        self.ids = ids
        self.targets = targets
        self.county = county
        self.locality = locality
        self._next = 0

    def target(self) -> Target:
        """The instances in turn, as a load balancer spreads new connections."""
        t = self.targets[self._next % len(self.targets)]
        self._next += 1
        return t

    async def device(self, scenario: str, user_id: str, role: str) -> tuple[Device, Replica]:
        if await self.ids.user(user_id) is None:
            await self.ids.add_user(
                user_id, role, county=self.county if role == "supervisor" else None,
                localities=[(self.locality, self.county)] if role == "worker" else ())
        rel = f"devices/{user_id}"
        replica = Replica(self.root / rel, pin=PIN)
        code = (await self.ids.create_enrollment_code(user_id)).code
        await enroll(replica, self.target().http_url, code)
        return Device(scenario, user_id, rel), replica

    async def sync(self, replica: Replica) -> None:
        summary = await SyncClient(replica, self.target().url).sync()
        if summary.rejected or summary.unavailable:
            who = replica.credentials.user_id if replica.credentials else "?"
            raise SystemExit(f"provisioning: the first sync of {who} was refused: "
                             f"{summary.rejected or summary.unavailable}")

    async def returning(self, user_id: str, households: int) -> Device:
        device, replica = await self.device(RETURNING, user_id, "worker")
        for k in range(households):
            h = replica.create_household(locality=self.locality, county=self.county,
                                         address=f"Str. Probei {user_id} nr. {k + 1}")
            with replica.edit(h.household_id) as e:
                e.add_member("Maria", "Popescu", "1988-03-14", "F", "head")
                e.add_member("Ionut", "Popescu", "2016-09-02", "M", "child")
                e.start_assessment()
            device.households.append(h.household_id)
        await self.sync(replica)
        return device

    async def pair(self, first: str, second: str) -> list[Device]:
        a, ra = await self.device(CO_EDITING, first, "worker")
        b, rb = await self.device(CO_EDITING, second, "worker")
        h = ra.create_household(locality=self.locality, county=self.county,
                                address=f"Str. Echipei {first} nr. 1",
                                team={"social_worker": first, "nurse": second})
        with ra.edit(h.household_id) as e:
            e.add_member("Elena", "Ionescu", "1990-01-20", "F", "head")
        await self.sync(ra)
        await self.sync(rb)
        if not rb.has_local_copy(h.household_id):
            raise SystemExit(f"provisioning: {second} did not receive the shared household "
                             f"(is {second} a worker of {self.locality}:{self.county}?)")
        a.households = b.households = [h.household_id]
        return [a, b]


async def provision(args: argparse.Namespace) -> Plan:
    root: Path = args.dir
    targets = [Target.from_http(s) for s in args.server]
    p = args.prefix
    async with identity_store(Settings.from_env()) as ids:
        prov = Provisioning(root, ids, targets, args.county, args.locality)
        async def returning(user_id: str) -> list[Device]:
            return [await prov.returning(user_id, args.households)]

        async def signer(scenario: str, user_id: str, role: str) -> list[Device]:
            return [(await prov.device(scenario, user_id, role))[0]]

        jobs: list[Callable[[], Awaitable[list[Device]]]] = [
            *(partial(returning, f"{p}-sw-{t + 1:04d}") for t in range(args.tablets)),
            *(partial(prov.pair, f"{p}-ce-{2 * k + 1:04d}", f"{p}-ce-{2 * k + 2:04d}")
              for k in range(args.pairs)),
            *(partial(signer, SUPERVISOR, f"{p}-sup-{s + 1:02d}", "supervisor")
              for s in range(args.supervisors)),
            *(partial(signer, WEB, f"{p}-web-{r + 1:02d}", "national")
              for r in range(args.readers)),
        ]
        devices = [d for group in await _bounded(jobs) for d in group]
    plan = Plan(targets=targets, devices=devices, county=args.county, locality=args.locality)
    plan.save(root)
    return plan


def _http_base(value: str) -> str:
    if not value.startswith(("http://", "https://")) or not value.split("://", 1)[1].strip("/"):
        raise argparse.ArgumentTypeError(f"{value!r} is not an HTTP base such as "
                                         f"http://host:8080")
    return value


def _count(value: str) -> int:
    n = int(value)
    if n < 0:
        raise argparse.ArgumentTypeError(f"{value} is not a count (0 or more)")
    return n


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtests.provision",
                                description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("dir", type=Path, help="where the plan and the devices go (new)")
    p.add_argument("--server", action="append", required=True, type=_http_base,
                   help="a target instance's HTTP base, e.g. http://host:8080 (repeatable)")
    p.add_argument("--tablets", type=_count, default=20, help="returning tablets")
    p.add_argument("--households", type=_count, default=10, help="households per returning tablet")
    p.add_argument("--pairs", type=_count, default=2, help="pairs of co-editing tablets")
    p.add_argument("--supervisors", type=_count, default=1)
    p.add_argument("--readers", type=_count, default=2, help="web-tier users (national)")
    p.add_argument("--county", default="CJ")
    p.add_argument("--locality", default="54975", help="SIRUTA code of the workers' locality")
    p.add_argument("--prefix", default="lt", help="user ids start with this")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if (args.dir / PLAN_FILE).exists():
        raise SystemExit(f"{args.dir / PLAN_FILE} exists: provision into a new directory")
    args.dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        plan = asyncio.run(provision(args))
    except (IdentityError, KeyRingError, VatraClientError, aiohttp.ClientError,
            OSError) as err:
        code = getattr(err, "code", type(err).__name__)
        print(f"provisioning failed ({code}): {getattr(err, 'message', None) or err}; "
              f"no plan was written (users and devices made so far stay: provision into a "
              f"new directory, with another --prefix if they are in the way)", file=sys.stderr)
        return 1
    counts = {s: len(plan.of(s)) for s in (RETURNING, CO_EDITING, SUPERVISOR, WEB)}
    print(f"provisioned {len(plan.devices)} devices in {time.perf_counter() - started:.1f} s "
          f"({', '.join(f'{n} {s}' for s, n in counts.items())}) against "
          f"{len(plan.targets)} instance(s); plan: {args.dir / PLAN_FILE}")
    print(f"run: locust -f loadtests/locustfile.py --vatra-plan {args.dir} --headless "
          f"-u {len(plan.devices)} -r {len(plan.devices)} -t 60s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
