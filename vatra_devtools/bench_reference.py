"""Server CPU per accepted change: Vatra against the reference automerge-repo sync server.

    python -m vatra_devtools.bench_reference [--tablets 20] [--households 5] [--edits 10]
        [--rounds 6] [--warmup 3] [--node-modules DIR] [--projector] [--reference-announce]
        [--profile DIR]

Two servers run side by side as processes of their own, on loopback:

* **Vatra**: ``python -m sync_server.cli serve`` (what ``vatra serve`` runs), on an
  embedded PostgreSQL that this process starts (``sync_server.store.database``), with a
  random ``VATRA_MASTER_KEY`` and server key file, and ``VATRA_PROJECTOR=0`` as the sync
  instances of ``deploy/`` run (``--projector``: the in-process projector runs, and each
  phase lasts until it has projected everything);
* **the reference**: ``vatra_devtools/reference/server.mjs``, a stock automerge-repo 2.5
  ``Repo`` (``NodeWSServerAdapter``, ``NodeFSStorageAdapter``) set up as automerge-repo's
  own sync server (``automerge-repo-sync-server``): every document open to every peer
  (``access``), none offered unasked (``announce``; ``--reference-announce``: every
  loaded document to every peer). Its packages are pinned in
  ``vatra_devtools/reference/package-lock.json`` and installed with ``npm ci`` (``npm
  install`` when a registry lacks the lock's optional native helpers for other
  platforms) into a cache directory under the temporary directory (or ``--node-modules
  DIR``), never into the repository.

Workload, the same for both: ``--tablets`` T tablets with ``--households`` H households
each. Setup (untimed): the tablets are enrolled (``vatra_devtools.provision``: a user,
a one-time code, ``client_sdk.enroll``), each creates its households
(``Replica.create_household``; the creator is on the household's team) and syncs them to
Vatra with ``client_sdk.SyncClient``; a copy of each document is then synced to the
reference, which creates it. Then ``--warmup`` warm-up rounds (shown, not in the
totals: the reference's first rounds after its start cost it up to twice what later
ones do), then ``--rounds`` measured rounds. In each, every tablet makes ``--edits`` E
offline edits on each of its households (``Replica.edit`` + ``append_activity``, one
Automerge change each), and all T tablets sync at once, to Vatra (their
``SyncClient``: session handshake, reconnect fast path, sealed frames) and to the
reference (one plain WebSocket per tablet: ``join``, then for each household ``sync``
messages from a fresh ``SyncState`` until the server's heads are the tablet's; the
documents are forks of the tablets' own, so both servers receive the very same
changes). Rounds alternate which server goes first.

Measured, per phase (one server's sync of one round): the CPU time (user + system, from
``/proc/<pid>/stat``, in clock ticks of 10 ms) of the server process and its
descendants, and for Vatra of the PostgreSQL postmaster and its backends, from just
before the first client connects until the last has converged and the measured
processes have then used no CPU for 0.5 s (the reference writes its files up to 100 ms
after a change; Vatra commits before it advertises heads). Changes accepted: for Vatra,
the rows the ``changes`` table gained; for the reference, the changes new in this round
whose documents' heads the server's final ``sync`` message carried. Each must be
exactly T x H x E, or the bench fails.

Reported per round and in total: CPU seconds, changes, CPU milliseconds per change for
Vatra (server process alone, and with PostgreSQL) and the reference, and the ratios
Vatra / reference of both. Also the CPU the rest of the machine used during each phase
(other processes: interference; the bench's own clients are not counted there). Client
CPU is not measured. What Vatra does per change that the reference does not (device
authentication, the end-to-end encrypted session, authorization, schema and conflict
checks, encryption at rest, durable PostgreSQL commits) is in its figure; the reference
does no authentication and writes its files without ``fsync``.

``--profile DIR`` runs the Vatra server under cProfile and Node with ``--cpu-prof`` for
their whole life (setup included), to see where each one's CPU goes; the figures of
such a run carry the profilers' cost.

Output: a table, then one JSON object (the last line of stdout). Exit 1 if a sync fails
or a change count is wrong; 2 if Node.js or the reference's packages are unavailable.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import sqlalchemy as sa
from automerge.core import Document, Message, SyncState
from sqlalchemy.ext.asyncio import AsyncEngine

from client_sdk import Replica, SyncClient
from sync_server.auth.identity import IdentityStore
from sync_server.protocol import wire
from sync_server.protocol.errors import ProtocolError
from sync_server.store.database import database_url, make_engine
from sync_server.store.tables import changes as changes_table
from sync_server.store.tables import projection_outbox
from vatra_devtools.provision import Provisioner

REFERENCE = Path(__file__).resolve().parent / "reference"
#: What the bench copies next to the reference's node_modules.
REFERENCE_FILES = ("package.json", "package-lock.json", "server.mjs")
#: The measured processes are done when they used no CPU for this long (seconds) ...
QUIET_S = 0.5
#: ... or at most this long after the last client converged.
SETTLE_MAX_S = 30.0
#: One server message may take this long to come (seconds) before the sync fails.
RECEIVE_TIMEOUT_S = 120.0
TICK = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """A failed sync, a wrong count, a server that did not start: the bench exits 1."""


class Unavailable(Exception):
    """Node.js or the reference's packages cannot be had: the bench exits 2."""


# -- CPU from /proc ---------------------------------------------------------------------------


def _processes() -> dict[int, tuple[int, float, float]]:
    """Every process: pid -> (parent pid, own CPU seconds, CPU seconds of its reaped children)."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(entry.path, "stat").read_text()
            fields = raw[raw.rindex(")") + 2:].split()  # after the command's name
            table[int(entry.name)] = (int(fields[1]),
                                      (int(fields[11]) + int(fields[12])) / TICK,  # utime stime
                                      (int(fields[13]) + int(fields[14])) / TICK)  # cutime cstime
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
    return table


def _tree_cpu(table: dict[int, tuple[int, float, float]], root: int | None) -> float:
    """CPU seconds of ``root`` and of its descendants, living or reaped (0 if it is gone)."""
    if root is None or root not in table:
        return 0.0
    kids: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        kids.setdefault(ppid, []).append(pid)
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        _, own, reaped = table[pid]
        total += own + reaped
        todo += kids.get(pid, [])
    return total


def _machine_busy() -> float:
    """CPU seconds every CPU of the machine spent busy since boot (``/proc/stat``)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / TICK


@dataclasses.dataclass(frozen=True)
class Sample:
    """Cumulative CPU seconds at one moment."""

    vatra: float  # the Vatra server process (and descendants)
    postgres: float  # the postmaster and its backends
    node: float  # the reference server
    bench: float  # this process (the clients)
    machine: float  # every CPU of the machine, busy

    def __sub__(self, other: Sample) -> Sample:
        return Sample(*(a - b for a, b in zip(dataclasses.astuple(self),
                                              dataclasses.astuple(other), strict=True)))

    @property
    def others(self) -> float:
        """The rest of the machine: other processes' CPU (never below 0)."""
        return max(0.0, self.machine - self.vatra - self.postgres - self.node - self.bench)


@dataclasses.dataclass
class Pids:
    vatra: int | None = None
    postmaster: int | None = None
    node: int | None = None

    def sample(self) -> Sample:
        table = _processes()
        me = table.get(os.getpid())
        return Sample(_tree_cpu(table, self.vatra), _tree_cpu(table, self.postmaster),
                      _tree_cpu(table, self.node), me[1] if me else 0.0, _machine_busy())


async def _settled(pids: Pids, measured: Callable[[Sample], float],
                   done: Callable[[], Awaitable[bool]] | None = None) -> float:
    """Wait until ``done()`` (if given) and then until the measured processes have used no CPU
    for :data:`QUIET_S`; returns the seconds waited."""
    started = time.perf_counter()
    last, quiet_since = measured(pids.sample()), time.perf_counter()
    while time.perf_counter() - started < SETTLE_MAX_S:
        await asyncio.sleep(0.1)
        if done is not None and not await done():
            quiet_since = time.perf_counter()
            continue
        done = None
        now = measured(pids.sample())
        if now != last:
            last, quiet_since = now, time.perf_counter()
        elif time.perf_counter() - quiet_since >= QUIET_S:
            break
    return time.perf_counter() - started


# -- the reference's packages -----------------------------------------------------------------


def _pinned() -> dict[str, str]:
    deps: dict[str, str] = json.loads((REFERENCE / "package.json").read_text())["dependencies"]
    return deps


def _installed(where: Path) -> dict[str, str | None]:
    """The version of each pinned package under ``where/node_modules`` (None: missing)."""
    found: dict[str, str | None] = {}
    for name in _pinned():
        try:
            found[name] = json.loads(
                (where / "node_modules" / name / "package.json").read_text())["version"]
        except (OSError, ValueError, KeyError):
            found[name] = None
    return found


def _instructions(where: Path) -> str:
    ref = REFERENCE.relative_to(Path.cwd()) if REFERENCE.is_relative_to(Path.cwd()) else REFERENCE
    return (
        "Install Node.js 20 or newer with npm (https://nodejs.org, or `apt-get install nodejs "
        "npm`) and run the bench again, or install the packages on a machine that has npm:\n"
        f"    mkdir -p {where} && cp {ref}/package.json {ref}/package-lock.json {where}/ "
        f"&& (cd {where} && npm ci || npm install --no-save)\n"
        "bring that directory here, and run:\n"
        f"    python -m vatra_devtools.bench_reference --node-modules {where}")


def prepare_reference(option: Path | None) -> tuple[Path, dict[str, str]]:
    """The directory holding the reference server and its pinned packages (installed with
    ``npm ci`` when they are not there yet), and the versions of Node.js and the packages."""
    node = shutil.which("node")
    if node is None:
        raise Unavailable("the reference server needs Node.js 20 or newer: `node` is not on "
                          "PATH.\n" + _instructions(option or Path("DIR")))
    asked = subprocess.run([node, "--version"], capture_output=True, text=True, check=False,
                           timeout=30)
    version = asked.stdout.strip()
    if not re.fullmatch(r"v\d+\..*", version):
        raise Unavailable(f"`node --version` answered {version!r} (status {asked.returncode}): "
                          f"{asked.stderr.strip()[-500:]}")
    if int(version[1:].split(".")[0]) < 20:
        raise Unavailable(f"the reference server needs Node.js 20 or newer, found {version!r}.\n"
                          + _instructions(option or Path("DIR")))
    lock = (REFERENCE / "package-lock.json").read_bytes()
    where = option or Path(tempfile.gettempdir()) / (
        "vatra-bench-reference-node-" + hashlib.sha256(lock).hexdigest()[:12])
    where.mkdir(parents=True, exist_ok=True)
    for name in REFERENCE_FILES:  # server.mjs is refreshed on every run
        shutil.copyfile(REFERENCE / name, where / name)
    if _installed(where) != _pinned():
        npm = shutil.which("npm")
        if npm is None:
            raise Unavailable(f"the reference server's packages are not installed in {where} "
                              "and `npm` is not on PATH.\n" + _instructions(where))
        # npm ci installs exactly the lock file. A registry without the optional native
        # helpers the lock lists for other platforms (@cbor-extract/*) makes npm ci refuse
        # the lock; npm install then installs the locked versions and skips those.
        for command in (["ci"], ["install", "--no-save"]):
            print(f"installing the reference server's packages: npm {' '.join(command)} in "
                  f"{where}", file=sys.stderr, flush=True)
            done = subprocess.run([npm, *command, "--no-audit", "--no-fund", "--loglevel=error"],
                                  cwd=where, capture_output=True, text=True, check=False,
                                  timeout=900)
            if done.returncode == 0 and _installed(where) == _pinned():
                break
        else:
            raise Unavailable(f"`npm install` in {where} failed (status {done.returncode}):\n"
                              f"{(done.stderr or done.stdout)[-2000:]}\n" + _instructions(where))
    return where, {"node": version, **{k: str(v) for k, v in _installed(where).items()}}


# -- the two servers --------------------------------------------------------------------------


@dataclasses.dataclass
class Server:
    proc: asyncio.subprocess.Process
    url: str
    log: Path
    lines: list[str] = dataclasses.field(default_factory=list)  # its stdout after the ready line


@contextlib.asynccontextmanager
async def _serving(argv: list[str], env: dict[str, str], log: Path, ready: re.Pattern[str],
                   url: Callable[[re.Match[str]], str]) -> AsyncIterator[Server]:
    """Start ``argv``, wait (a minute at most) for a stdout line matching ``ready``; stop it
    with SIGTERM on the way out. Its stderr goes to ``log``."""
    with log.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(*argv, env=env, stdout=asyncio.subprocess.PIPE,
                                                    stderr=err, stdin=asyncio.subprocess.DEVNULL)
    assert proc.stdout is not None
    stdout = proc.stdout
    drain: asyncio.Task[None] | None = None
    try:
        async with asyncio.timeout(60):
            while not (found := ready.search(line := (await stdout.readline()).decode())):
                if not line:
                    raise BenchError(f"{argv[0]} {' '.join(argv[1:3])} exited before it was "
                                     f"ready (status {await proc.wait()}); its stderr:\n"
                                     + _tail(log))
        server = Server(proc, url(found), log)

        async def keep_reading() -> None:  # so that a full pipe never blocks it
            while line := await stdout.readline():
                server.lines.append(line.decode().rstrip())

        drain = asyncio.create_task(keep_reading())
        yield server
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if drain is not None:
            drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drain


def _tail(log: Path, chars: int = 3000) -> str:
    try:
        return log.read_text(errors="replace")[-chars:]
    except OSError:
        return "(none)"


def vatra_server(root: Path, db_url: str, projector: bool, profile: Path | None
                 ) -> contextlib.AbstractAsyncContextManager[Server]:
    key = root / "server_identity.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    env = {**os.environ, "DATABASE_URL": db_url,
           "VATRA_MASTER_KEY": base64.b64encode(os.urandom(32)).decode(),
           "VATRA_SERVER_KEY_FILE": str(key), "VATRA_PROJECTOR": "1" if projector else "0"}
    python = [sys.executable] + (["-m", "cProfile", "-o", str(profile / "vatra.prof")]
                                 if profile else [])
    return _serving([*python, "-m", "sync_server.cli", "serve", "--host", "127.0.0.1",
                     "--port", "0", "--data-dir", str(root / "vatra")], env, root / "vatra.log",
                    re.compile(r"listening on (ws://\S+)"), lambda m: m.group(1))


def reference_server(root: Path, node_dir: Path, announce: bool, profile: Path | None
                     ) -> contextlib.AbstractAsyncContextManager[Server]:
    node = ["node"] + (["--cpu-prof", "--cpu-prof-dir", str(profile)] if profile else [])
    argv = [*node, str(node_dir / "server.mjs"), "0", str(root / "reference")]
    return _serving(argv + (["--announce"] if announce else []), dict(os.environ),
                    root / "reference.log", re.compile(r"^listening (\d+)"),
                    lambda m: f"ws://127.0.0.1:{m.group(1)}")


# -- clients ----------------------------------------------------------------------------------


async def reference_sync(url: str, docs: dict[str, Document]) -> dict[str, list[bytes]]:
    """Sync ``docs`` with the reference over one plain automerge-repo WebSocket, a fresh
    ``SyncState`` each, until the server's heads for each are the document's own; returns
    those heads (taken from the server's last ``sync`` message of each document)."""
    me = "bench-" + uuid.uuid4().hex[:12]  # a new peer per connection, as a new process
    states = {hid: SyncState() for hid in docs}
    heads: dict[str, list[bytes]] = {}
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:

        async def receive() -> wire.Message | None:
            frame = await asyncio.wait_for(ws.receive(), RECEIVE_TIMEOUT_S)
            if frame.type != aiohttp.WSMsgType.BINARY:
                raise BenchError(f"reference: the connection ended ({frame.type.name}) with "
                                 f"{len(docs) - len(heads)} document(s) not synced")
            try:
                return wire.decode(frame.data)
            except ProtocolError:  # a message this codec does not know: not for us
                return None

        await ws.send_bytes(wire.encode(wire.Join(me)))
        peer = await receive()
        if not isinstance(peer, wire.Peer):
            raise BenchError(f"reference: expected 'peer', got {peer!r}")
        for hid, doc in docs.items():
            first = doc.generate_sync_message(states[hid])
            if first is None:
                raise BenchError("reference: a document produced no first sync message")
            await ws.send_bytes(wire.encode(wire.Sync(me, peer.sender_id, hid, first.encode())))
        while len(heads) < len(docs):
            msg = await receive()
            if isinstance(msg, wire.Error | wire.DocUnavailable):
                raise BenchError(f"reference: {msg!r}")
            if not isinstance(msg, wire.Sync) or msg.document_id not in docs:
                continue  # announced documents (--reference-announce), ephemeral messages
            hid, doc = msg.document_id, docs[msg.document_id]
            doc.receive_sync_message(states[hid], Message.decode(msg.data))
            advertised = wire.sync_message_heads(msg.data)
            if hid not in heads and sorted(advertised) == sorted(doc.get_heads()):
                heads[hid] = advertised
                continue
            reply = doc.generate_sync_message(states[hid])
            if reply is not None:
                await ws.send_bytes(wire.encode(wire.Sync(me, peer.sender_id, hid,
                                                          reply.encode())))
    return heads


@dataclasses.dataclass
class Tablet:
    replica: Replica
    households: list[str]
    #: the tablet's copy of each document for the reference: a fork of its own
    reference_docs: dict[str, Document] = dataclasses.field(default_factory=dict)
    #: heads the reference last advertised for each document
    reference_heads: dict[str, list[bytes]] = dataclasses.field(default_factory=dict)


async def vatra_sync(url: str, tablets: list[Tablet]) -> int:
    """All tablets sync with Vatra at once; returns the changes their SDK sent."""
    results = await asyncio.gather(*(SyncClient(t.replica, url).sync() for t in tablets),
                                   return_exceptions=True)
    sent = 0
    for t, r in zip(tablets, results, strict=True):
        if isinstance(r, BaseException):
            raise BenchError(f"vatra: tablet {t.replica.path.name}: sync failed: {r!r}")
        if r.rejected or r.recovered:
            raise BenchError(f"vatra: tablet {t.replica.path.name}: refused: {r.rejected!r}")
        unsaved = [hid for hid in t.households if not t.replica.is_saved(hid)]
        if unsaved:
            raise BenchError(f"vatra: tablet {t.replica.path.name}: the server's heads do not "
                             f"cover {len(unsaved)} household(s) after the sync")
        sent += r.changes_sent
    return sent


async def reference_round(url: str, tablets: list[Tablet]) -> int:
    """All tablets sync with the reference at once; returns the changes new since the last
    sync that the server's advertised heads now cover."""
    results = await asyncio.gather(*(reference_sync(url, t.reference_docs) for t in tablets),
                                   return_exceptions=True)
    covered = 0
    for t, r in zip(tablets, results, strict=True):
        if isinstance(r, BaseException):
            raise BenchError(f"reference: tablet {t.replica.path.name}: sync failed: {r!r}")
        for hid, doc in t.reference_docs.items():
            if sorted(r[hid]) != sorted(doc.get_heads()):
                raise BenchError(f"reference: household {hid}: heads differ after the sync")
            covered += len(doc.get_changes(t.reference_heads[hid]) if t.reference_heads.get(hid)
                           else doc.get_changes([]))
            t.reference_heads[hid] = r[hid]
    return covered


def fork_for_reference(tablets: list[Tablet]) -> None:
    """The reference's copies: forks of the tablets' documents as they are now (same changes)."""
    for t in tablets:
        t.reference_docs = {hid: t.replica.document(hid).fork() for hid in t.households}


def offline_edits(tablets: list[Tablet], round_no: int, edits: int) -> None:
    """``edits`` changes on every household of every tablet (saved to the replica)."""
    for i, t in enumerate(tablets):
        for hid in t.households:
            before = t.replica.document(hid).get_heads()
            with t.replica.edit(hid) as h:
                for e in range(edits):
                    h.append_activity("visit", f"round {round_no} visit {e} by tablet {i}: "
                                               "a few words of the visit's synthesis")
            made = len(t.replica.document(hid).get_changes(before))
            if made != edits:
                raise BenchError(f"{edits} edits made {made} changes")


async def count_changes(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        n: int = (await conn.execute(
            sa.select(sa.func.count()).select_from(changes_table))).scalar_one()
        return n


# -- one round --------------------------------------------------------------------------------


def _ms(cpu: float, changes: int) -> float | None:
    return 1000 * cpu / changes if changes else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


async def vatra_phase(url: str, engine: AsyncEngine, pids: Pids, tablets: list[Tablet],
                      expected: int, projector: bool) -> dict[str, Any]:
    rows = await count_changes(engine)
    before, t0 = pids.sample(), time.perf_counter()
    sent = await vatra_sync(url, tablets)
    wall = time.perf_counter() - t0

    async def projected() -> bool:
        async with engine.connect() as conn:
            return not (await conn.execute(sa.select(projection_outbox.c.household_id)
                                           .limit(1))).first()

    settle = await _settled(pids, lambda s: s.vatra + s.postgres,
                            projected if projector else None)
    used = pids.sample() - before
    accepted = await count_changes(engine) - rows
    if accepted != expected:
        raise BenchError(f"vatra: {accepted} changes stored, {expected} expected")
    return {"changes": accepted, "changes_sent": sent, "wall_s": wall, "settle_s": settle,
            "server_cpu_s": used.vatra, "postgres_cpu_s": used.postgres,
            "server_and_postgres_cpu_s": used.vatra + used.postgres,
            "server_ms_per_change": _ms(used.vatra, accepted),
            "server_and_postgres_ms_per_change": _ms(used.vatra + used.postgres, accepted),
            "others_cpu_s": used.others, "bench_cpu_s": used.bench}


async def reference_phase(url: str, pids: Pids, tablets: list[Tablet],
                          expected: int) -> dict[str, Any]:
    before, t0 = pids.sample(), time.perf_counter()
    accepted = await reference_round(url, tablets)
    wall = time.perf_counter() - t0
    settle = await _settled(pids, lambda s: s.node)
    used = pids.sample() - before
    if accepted != expected:
        raise BenchError(f"reference: {accepted} changes covered, {expected} expected")
    return {"changes": accepted, "wall_s": wall, "settle_s": settle, "cpu_s": used.node,
            "ms_per_change": _ms(used.node, accepted), "others_cpu_s": used.others,
            "bench_cpu_s": used.bench}


def _figures(vatra: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    return {"vatra_server_ms_per_change": vatra["server_ms_per_change"],
            "vatra_server_and_postgres_ms_per_change": vatra["server_and_postgres_ms_per_change"],
            "reference_ms_per_change": ref["ms_per_change"],
            "ratio_server": _ratio(vatra["server_ms_per_change"], ref["ms_per_change"]),
            "ratio_server_and_postgres": _ratio(vatra["server_and_postgres_ms_per_change"],
                                                ref["ms_per_change"])}


# -- the run ----------------------------------------------------------------------------------


async def run(args: argparse.Namespace, node_dir: Path, versions: dict[str, str],
              report: dict[str, Any]) -> None:
    """The whole bench; fills ``report`` as it goes (so a failure still reports the rounds
    done)."""
    expected = args.tablets * args.households * args.edits
    rounds: list[dict[str, Any]] = []
    report["rounds"] = rounds
    with tempfile.TemporaryDirectory(prefix="vatra-bench-reference-") as tmp:
        root = Path(tmp)
        async with database_url(None, root / "db") as db_url, \
                vatra_server(root, db_url, args.projector, args.profile) as vatra, \
                reference_server(root, node_dir, args.reference_announce, args.profile) as ref:
            pids = Pids(vatra.proc.pid, int((root / "db" / "postgres" / "postmaster.pid")
                                            .read_text().split()[0]), ref.proc.pid)
            engine = make_engine(db_url)
            try:
                http_url = vatra.url.split("/v1/")[0].replace("ws://", "http://", 1)
                provision = Provisioner(IdentityStore(engine), http_url)
                tablets = []
                for i in range(args.tablets):
                    replica = await provision.tablet(root / "tablets" / f"tablet-{i:03d}",
                                                     f"sw-{i:03d}")
                    hids = [replica.create_household(
                        locality="54975", county="CJ", address=f"Str. Bench {i}-{k}").household_id
                        for k in range(args.households)]
                    tablets.append(Tablet(replica, hids))
                await vatra_sync(vatra.url, tablets)  # setup: creates the households on Vatra
                fork_for_reference(tablets)
                await reference_round(ref.url, tablets)  # ... and on the reference
                warmup: list[dict[str, Any]] = []
                report["warmup"] = warmup
                plan = [(True, i) for i in range(args.warmup)] + [(False, i)
                                                                  for i in range(args.rounds)]
                for r, (warm, i) in enumerate(plan):
                    for server in (vatra, ref):
                        if server.proc.returncode is not None:
                            raise BenchError(f"a server exited (status {server.proc.returncode}); "
                                             f"its stderr:\n{_tail(server.log)}")
                    offline_edits(tablets, r, args.edits)
                    fork_for_reference(tablets)
                    order = ["vatra", "reference"] if i % 2 == 0 else ["reference", "vatra"]
                    row: dict[str, Any] = {"round": f"w{i + 1}" if warm else i + 1,
                                           "first": order[0]}
                    for name in order:
                        if name == "vatra":
                            row["vatra"] = await vatra_phase(vatra.url, engine, pids, tablets,
                                                             expected, args.projector)
                        else:
                            row["reference"] = await reference_phase(ref.url, pids, tablets,
                                                                     expected)
                    row.update(_figures(row["vatra"], row["reference"]))
                    (warmup if warm else rounds).append(row)
                    print(_row_line(row), flush=True)
            finally:
                await engine.dispose()


def _total(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    def s(side: str, key: str) -> Any:
        return sum(r[side][key] for r in rounds)

    vatra = {"changes": s("vatra", "changes"), "server_cpu_s": s("vatra", "server_cpu_s"),
             "postgres_cpu_s": s("vatra", "postgres_cpu_s"),
             "server_and_postgres_cpu_s": s("vatra", "server_and_postgres_cpu_s"),
             "others_cpu_s": s("vatra", "others_cpu_s"), "wall_s": s("vatra", "wall_s")}
    vatra["server_ms_per_change"] = _ms(vatra["server_cpu_s"], vatra["changes"])
    vatra["server_and_postgres_ms_per_change"] = _ms(vatra["server_and_postgres_cpu_s"],
                                                     vatra["changes"])
    ref = {"changes": s("reference", "changes"), "cpu_s": s("reference", "cpu_s"),
           "others_cpu_s": s("reference", "others_cpu_s"), "wall_s": s("reference", "wall_s")}
    ref["ms_per_change"] = _ms(ref["cpu_s"], ref["changes"])
    total: dict[str, Any] = {"vatra": vatra, "reference": ref, **_figures(vatra, ref)}
    for key in ("ratio_server", "ratio_server_and_postgres"):
        values = [r[key] for r in rounds if r[key] is not None]
        if values:
            total[key + "_spread"] = {"min": min(values), "median": statistics.median(values),
                                      "max": max(values)}
    return total


HEADER = (f"{'':25} │ {'Vatra CPU s':^13} {'Vatra ms/change':^15} │ {'reference':^13} │ "
          f"{'Vatra / ref':^13} │ {'others':>6}\n"
          f"{'round':>5} {'first':>9} {'changes':>9} │ {'server':>6} {'+PG':>6} {'server':>7} "
          f"{'+PG':>7} │ {'CPU s':>6} {'ms/ch':>6} │ {'server':>6} {'+PG':>6} │ {'CPU s':>6}")


def _row_line(row: dict[str, Any], label: str | None = None) -> str:
    v, r = row["vatra"], row["reference"]

    def f(x: float | None, width: int = 6, digits: int = 3) -> str:
        return f"{x:>{width}.{digits}f}" if x is not None else f"{'—':>{width}}"

    return (f"{label or row['round']:>5} {row.get('first', ''):>9} {v['changes']:>9} │ "
            f"{f(v['server_cpu_s'], digits=2)} {f(v['server_and_postgres_cpu_s'], digits=2)} "
            f"{f(v['server_ms_per_change'], 7)} {f(v['server_and_postgres_ms_per_change'], 7)} │ "
            f"{f(r['cpu_s'], digits=2)} {f(r['ms_per_change'])} │ "
            f"{f(row['ratio_server'], digits=2)} {f(row['ratio_server_and_postgres'], digits=2)} │ "
            f"{f(v['others_cpu_s'] + r['others_cpu_s'], digits=2)}")


def _jsonable(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m vatra_devtools.bench_reference",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--tablets", type=int, default=20)
    p.add_argument("--households", type=int, default=5, help="per tablet")
    p.add_argument("--edits", type=int, default=10, help="per household and round")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--warmup", type=int, default=3,
                   help="untimed rounds before (reported apart, not in the totals)")
    p.add_argument("--node-modules", type=Path, metavar="DIR",
                   help="where the reference server's packages are (installed with npm ci if "
                        "missing); default: a cache directory under the temporary directory")
    p.add_argument("--projector", action="store_true",
                   help="run Vatra's projector in the server process and count its CPU")
    p.add_argument("--reference-announce", action="store_true",
                   help="the reference announces every loaded document to every peer")
    p.add_argument("--profile", type=Path, metavar="DIR",
                   help="profile both servers for their whole life (setup included; the figures "
                        "then carry the profilers' cost): DIR/vatra.prof (cProfile) and "
                        "DIR/*.cpuprofile (node --cpu-prof)")
    args = p.parse_args(argv)
    if args.profile is not None:
        args.profile = args.profile.resolve()
        args.profile.mkdir(parents=True, exist_ok=True)
    if min(args.tablets, args.households, args.edits, args.rounds) < 1 or args.warmup < 0:
        p.error("--tablets, --households, --edits and --rounds must be at least 1, "
                "--warmup at least 0")
    try:
        node_dir, versions = prepare_reference(args.node_modules)
    except Unavailable as exc:
        print(f"bench_reference: {exc}", file=sys.stderr)
        return 2
    from importlib.metadata import version as dist_version

    report: dict[str, Any] = {
        "bench": "reference",
        "workload": {"tablets": args.tablets, "households_per_tablet": args.households,
                     "edits_per_household_and_round": args.edits, "rounds": args.rounds,
                     "warmup_rounds": args.warmup,
                     "changes_per_round": args.tablets * args.households * args.edits},
        "vatra_projector": args.projector, "reference_announce": args.reference_announce,
        "profiled": args.profile is not None,
        "machine": {"nproc": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(), "loadavg_before": os.getloadavg()[0]},
        "versions": {**versions, "python automerge": dist_version("automerge")},
    }
    print(f"Vatra vs automerge-repo {versions['@automerge/automerge-repo']} (Node "
          f"{versions['node']}): {args.tablets} tablets x {args.households} households x "
          f"{args.edits} edits per round, {args.rounds} rounds after {args.warmup} warm-up "
          "round(s) (w: not in the totals)")
    print(HEADER, flush=True)
    error = None
    try:
        asyncio.run(run(args, node_dir, versions, report))
    except BenchError as exc:
        error = str(exc)
    rounds = report.get("rounds", [])
    if rounds:
        report["total"] = _total(rounds)
        print(_row_line({**report["total"], "first": ""}, "total"))
        t = report["total"]
        for key, what in (("ratio_server", "server"),
                          ("ratio_server_and_postgres", "server + PostgreSQL")):
            spread = t.get(key + "_spread")
            if t[key] is not None and spread:
                print(f"Vatra / reference CPU per change ({what}): {t[key]:.2f} (rounds: "
                      f"{spread['min']:.2f} to {spread['max']:.2f}, median {spread['median']:.2f})")
    report["machine"]["loadavg_after"] = os.getloadavg()[0]
    report["ok"] = error is None and len(rounds) == args.rounds
    if error is not None:
        report["error"] = error
        print(f"bench_reference: FAILED: {error}", file=sys.stderr)
    print("ms/ch: CPU milliseconds per accepted change; +PG: with PostgreSQL; ref: the "
          "reference server; others: CPU of other processes on the machine in the phases")
    print(json.dumps(_jsonable(report), separators=(",", ":")), flush=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
