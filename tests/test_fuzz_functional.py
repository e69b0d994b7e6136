"""Structure-aware fuzzing of every decoder a device reaches, against a real server.

The server runs as a child process (``vatra serve`` on its own database), so an input
that aborts it (a Rust allocation failure, a segfault) fails the test instead of killing
the test run. Each target below draws inputs with Hypothesis and sends them over a real,
enrolled, end-to-end encrypted session (or, for the session layer itself, raw on the
socket; for the HTTP faces, signed by an enrolled supervisor's device):

* CBOR envelopes: arbitrary CBOR (tags, nesting, every type) and message-shaped maps
  with arbitrary field values;
* session frames: a broken ``hello``, and frames after the handshake that are not
  sealed (truncated, forged, replayed counters);
* sync messages and change chunks: real messages from a real household, mutated (bit
  flips, overwritten and inserted bytes, truncation, inflated LEB128 counts) with each
  chunk's checksum recomputed so that the bytes get past it into the binding;
* document ids: any text, base58 of any length, real ids mutated;
* HTTP bodies, paths and query strings of the approvals and read APIs and enrollment.

For every input the test checks that the server answers within :data:`BOUND` seconds
(an ``error`` whose code is one of :class:`ErrorCode`, or a protocol answer, or a
close), that a probe on the same connection is answered afterwards, that the process is
alive, and, every :data:`BYSTANDER_EVERY` inputs, that another device still syncs.

The CI variant tries a few dozen inputs per target, derandomized (reproducible).
``VATRA_FUZZ_EXAMPLES=N`` runs N per target with fresh randomness (the long run recorded
in docs/security.md); ``VATRA_FUZZ_REPORT=path`` writes what was seen as JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import cbor2
import pytest
from _automerge_bytes import uleb
from _rawpeer import raw_peer
from automerge.core import Document, SyncState
from conftest import TEMPLATE, TEST_MASTER_KEY, _with_database
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client_sdk import Replica, SyncClient
from conflict import new_household_id
from sync_server.auth.identity import IdentityStore
from sync_server.protocol import wire
from sync_server.protocol.errors import ErrorCode
from sync_server.protocol.http_auth import sign
from sync_server.store.database import make_engine
from vatra_devtools.provision import Provisioner

pytestmark = pytest.mark.functional

LONG = int(os.environ.get("VATRA_FUZZ_EXAMPLES", "0"))
EXAMPLES = LONG or 40
#: Seconds within which the server must answer an input (a hang detector, not a timing).
BOUND = 15.0
BYSTANDER_EVERY = 25
CODES = {str(c) for c in ErrorCode}
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=not LONG, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


# -- the server under test ----------------------------------------------------------------------


@dataclass
class Seen:
    """What the server answered, for the report."""

    inputs: Counter[str] = field(default_factory=Counter)
    answers: Counter[str] = field(default_factory=Counter)
    slowest: float = 0.0
    bystander_syncs: int = 0


@dataclass
class Target:
    url: str
    http_url: str
    proc: subprocess.Popen[bytes]
    ana: Replica
    nat: Replica
    sup: Replica
    hid: str
    messages: list[bytes]
    seen: Seen = field(default_factory=Seen)

    def alive(self) -> None:
        assert self.proc.poll() is None, f"the server died (exit {self.proc.returncode})"


def _create_database(base: str) -> str:
    name = "vatra_fuzz_" + uuid.uuid4().hex[:10]

    async def make() -> None:
        admin = make_engine(base)
        async with admin.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.exec_driver_sql(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
        await admin.dispose()

    asyncio.run(make())
    return _with_database(base, name)


def _real_messages(doc: Document) -> list[bytes]:
    """Real sync messages of a household (first, second of a handshake, V2 whole doc,
    single changes): what the mutations start from."""
    out = []
    ours, theirs, empty = SyncState(), SyncState(), Document()
    for _ in range(4):
        m = doc.generate_sync_message(ours)
        if m is None:
            break
        out.append(m.encode())
        empty.receive_sync_message(theirs, m)
        r = empty.generate_sync_message(theirs)
        if r is None:
            break
        doc.receive_sync_message(ours, r)
    for change in doc.get_changes([])[-5:]:
        raw = change.raw_bytes
        out.append(b"\x42\x00\x00\x00\x01" + uleb(len(raw)) + raw)
    return out


@pytest.fixture(scope="module")
def target(postgres_url: str) -> Iterator[Target]:
    url = _create_database(postgres_url)
    data_dir = Path(tempfile.mkdtemp(prefix="vatra-fuzz-"))
    env = {**os.environ, "DATABASE_URL": url, "VATRA_DATA_DIR": str(data_dir / "server"),
           "VATRA_PORT": "0", "VATRA_MASTER_KEY": TEST_MASTER_KEY, "VATRA_PROJECTOR": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "sync_server.cli", "serve"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        assert "listening on " in line, line
        ws_url = line.split("listening on ", 1)[1].split()[0]
        # keep the pipe drained: a full pipe would block the server and pass for a hang
        threading.Thread(target=lambda: proc.stdout and proc.stdout.read(), daemon=True).start()
        http_url = ws_url.replace("ws://", "http://").removesuffix("/v1/sync")

        async def provision() -> Target:
            engine = make_engine(url)
            try:
                p = Provisioner(IdentityStore(engine), http_url)
                ana = await p.tablet(data_dir / "ana", "ana")
                nat = await p.tablet(data_dir / "nat", "nat", role="national")
                sup = await p.tablet(data_dir / "sup", "sup", role="supervisor", county="CJ")
            finally:
                await engine.dispose()
            h = ana.create_household(locality="54975", county="CJ", address="Str. Lunga 3")
            with ana.edit(h.household_id) as e:
                pid = e.add_member("Ana", "Pop", "2015-04-01", "F", "child")
                e.set_notes("visit on Tuesday " * 20)
                e.set_status("active")
                e.request_change("change_presence", {"person_id": pid, "presence": "moved"},
                                 "moved away")
            assert (await SyncClient(ana, ws_url).sync()).rejected == []
            doc = ana.household(h.household_id).doc.fork()
            return Target(ws_url, http_url, proc, ana, nat, sup, h.household_id,
                          _real_messages(doc))

        yield asyncio.run(provision())
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="module", autouse=True)
def report(target: Target) -> Iterator[None]:
    yield
    path = os.environ.get("VATRA_FUZZ_REPORT")
    if path:
        s = target.seen
        Path(path).write_text(json.dumps({
            "inputs": dict(s.inputs), "total": sum(s.inputs.values()),
            "answers": dict(s.answers), "slowest_answer_seconds": round(s.slowest, 3),
            "bystander_syncs": s.bystander_syncs}, indent=2, sort_keys=True))


# -- running one input --------------------------------------------------------------------------


async def _answers(peer, probe_id: str, started: float, seen: Seen) -> None:
    """Read until the probe (a ``request`` for ``probe_id``) is answered or the server
    closes; every ``error`` must carry a documented code."""
    state = SyncState()
    first = Document().generate_sync_message(state)
    assert first is not None
    with contextlib.suppress(ConnectionError, RuntimeError, aiohttp.ClientError):
        await peer.send(wire.Request(peer.peer_id, peer.server_id, probe_id, first.encode()))
    while True:
        frame = await asyncio.wait_for(peer.channel.receive(), BOUND)
        seen.slowest = max(seen.slowest, time.perf_counter() - started)
        if frame is None:
            seen.answers["closed"] += 1
            return
        msg = cbor2.loads(frame)
        kind = msg.get("type")
        if kind == "error":
            assert msg.get("code") in CODES, msg
            seen.answers[f"error:{msg['code']}"] += 1
        else:
            seen.answers[str(kind)] += 1
        if msg.get("documentId") == probe_id and kind in ("doc-unavailable", "sync", "error"):
            return


def run(t: Target, kind: str, send: Callable[..., Awaitable[None]], *,
        device: str = "ana", probe: str | None = None) -> None:
    """Send one input through a fresh session of ``device`` and check the server."""
    t.seen.inputs[kind] += 1

    async def go() -> None:
        replica = {"ana": t.ana, "nat": t.nat}[device]
        async with raw_peer(t.url, replica) as peer:
            started = time.perf_counter()
            # the server closing first is an answer too
            with contextlib.suppress(ConnectionError, RuntimeError, aiohttp.ClientError):
                await send(peer)
            await _answers(peer, probe or t.hid, started, t.seen)
        if sum(t.seen.inputs.values()) % BYSTANDER_EVERY == 0:
            await _bystander(t)

    asyncio.run(go())
    t.alive()


async def _bystander(t: Target) -> None:
    with t.ana.edit(t.hid) as e:
        e.set_address(f"Str. Lunga {random.randint(1, 999)}")
    summary = await SyncClient(t.ana, t.url).sync([t.hid])
    assert summary.rejected == [] and t.ana.is_saved(t.hid)
    t.seen.bystander_syncs += 1


# -- strategies ----------------------------------------------------------------------------------

_scalars = (st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70)
            | st.floats() | st.text(max_size=40) | st.binary(max_size=120))
cbor_values = st.recursive(
    _scalars,
    lambda inner: (st.lists(inner, max_size=6)
                   | st.dictionaries(st.text(max_size=12) | st.integers(), inner, max_size=6)
                   | st.builds(cbor2.CBORTag, st.integers(min_value=0, max_value=300), inner)),
    max_leaves=25)
doc_ids = (st.text(max_size=300) | st.text(alphabet=BASE58, min_size=1, max_size=80)
           | st.builds(lambda: new_household_id())
           | st.builds(lambda h, i, c: h[:i] + c + h[i + 1:], st.builds(new_household_id),
                       st.integers(0, 27), st.sampled_from(BASE58)))
envelopes = st.fixed_dictionaries(
    {"type": st.sampled_from(["sync", "request", "ephemeral", "error", "join", "peer",
                              "doc-unavailable", "vatra-caseload", "remote-heads-changed"])},
    optional={"senderId": cbor_values, "targetId": cbor_values, "documentId": cbor_values,
              "data": cbor_values, "message": cbor_values, "code": cbor_values,
              "metadata": cbor_values, "documentIds": cbor_values})


@st.composite
def mutated(draw, pool: list[bytes]) -> bytes:
    """A real sync message, mutated, with every chunk's checksum made right again."""
    data = bytearray(draw(st.sampled_from(pool)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "byte", "insert", "truncate", "leb", "delete"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte" and data:
            data[at] = draw(st.integers(0, 255))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "truncate":
            del data[at:]
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 8))]
        elif op == "leb":  # a count or length inflated to something huge
            data[at:at + 1] = uleb(draw(st.sampled_from([2**31 - 1, 2**32, 2**40, 2**62,
                                                          10**8, 65536])))
    return _fix_checksums(bytes(data))


def _fix_checksums(data: bytes) -> bytes:
    """Recompute the SHA-256 checksum of every chunk that still parses as one."""
    import hashlib

    out = bytearray(data)
    magic = bytes.fromhex("856f4a83")
    at = out.find(magic)
    while at != -1 and at + 9 < len(out):
        pos, length, shift = at + 9, 0, 0
        while pos < len(out) and shift < 63:
            b = out[pos]
            pos += 1
            length |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        if pos + length <= len(out):
            body = bytes(out[pos:pos + length])
            digest = hashlib.sha256(bytes([out[at + 8]]) + uleb(length) + body).digest()[:4]
            out[at + 4:at + 8] = digest
        at = out.find(magic, at + 1)
    return bytes(out)


# -- the targets ---------------------------------------------------------------------------------


@FUZZ
@given(value=cbor_values | envelopes.map(lambda m: m))
def test_fuzz_cbor_envelopes(target: Target, value) -> None:
    """Any CBOR as the plaintext of a sealed frame: the codec answers or closes."""
    frame = cbor2.dumps(value)
    run(target, "cbor", lambda peer: peer.send_frame(frame))


@FUZZ
@given(frame=st.binary(max_size=600))
def test_fuzz_undecodable_frames(target: Target, frame: bytes) -> None:
    """Bytes that are rarely CBOR at all, as the plaintext of a sealed frame."""
    run(target, "bytes", lambda peer: peer.send_frame(frame))


@FUZZ
@given(hello=st.binary(max_size=300) | cbor_values.map(cbor2.dumps),
       after=st.lists(st.binary(max_size=64), min_size=1, max_size=3))
def test_fuzz_the_session_handshake_and_unsealed_frames(target: Target, hello: bytes,
                                                        after: list[bytes]) -> None:
    """A broken ``hello`` on the raw socket; frames after a good handshake that are not
    sealed (short, forged, out of order): refused with a session code, then closed."""
    target.seen.inputs["session"] += 1

    async def go() -> None:
        async with aiohttp.ClientSession() as http, http.ws_connect(target.url) as ws:
            await ws.send_bytes(hello)
            msg = await asyncio.wait_for(ws.receive(), BOUND)
            if msg.type == aiohttp.WSMsgType.BINARY:
                answer = cbor2.loads(msg.data)
                assert answer.get("type") in ("vatra-welcome", "error"), answer
                if answer.get("type") == "error":
                    assert answer.get("code") in CODES
                    target.seen.answers[f"error:{answer['code']}"] += 1
        async with raw_peer(target.url, target.ana) as peer:
            for junk in after:
                with contextlib.suppress(ConnectionError, RuntimeError, aiohttp.ClientError):
                    await peer.ws.send_bytes(junk)
            while (await asyncio.wait_for(peer.ws.receive(), BOUND)).type \
                    == aiohttp.WSMsgType.BINARY:
                pass  # the sealed error, then the close
            target.seen.answers["closed"] += 1

    asyncio.run(go())
    target.alive()


@FUZZ
@given(data=st.data(), device=st.sampled_from(["ana", "nat"]),
       where=st.sampled_from(["team", "new"]))
def test_fuzz_sync_messages_and_change_chunks(target: Target, data, device: str,
                                              where: str) -> None:
    """Real sync messages of a real household, mutated past their checksums, sent by a
    writer (``ana``) and a reader (``nat``), to the household and to a new id."""
    body = data.draw(mutated(target.messages))
    hid = target.hid if where == "team" else new_household_id()
    run(target, "sync", lambda peer: peer.send(wire.Sync(peer.peer_id, peer.server_id, hid,
                                                         body)),
        device=device, probe=hid)


@FUZZ
@given(doc_id=doc_ids, kind=st.sampled_from([wire.Sync, wire.Request, wire.Ephemeral]))
def test_fuzz_document_ids(target: Target, doc_id: str, kind) -> None:
    """Any text as a document id, in every message that carries one."""
    state = SyncState()
    first = Document().generate_sync_message(state)
    assert first is not None

    async def send(peer) -> None:
        if kind is wire.Ephemeral:
            await peer.send(wire.Ephemeral(peer.peer_id, doc_id, b"\x00"))
        else:
            await peer.send(kind(peer.peer_id, peer.server_id, doc_id, first.encode()))

    run(target, "document-id", send)


@FUZZ
@given(hid=doc_ids, rid=st.text(max_size=60), body=st.binary(max_size=400)
       | cbor_values.map(lambda v: json.dumps(v, default=repr).encode()),
       query=st.dictionaries(st.sampled_from(["status", "county", "locality", "q", "limit",
                                              "offset", "cursor", "sort", "vulnerability"]),
                             st.text(max_size=40), max_size=4),
       which=st.sampled_from(["decide", "list", "web-list", "web-profile", "summary",
                              "enroll"]))
def test_fuzz_http_bodies_paths_and_queries(target: Target, hid: str, rid: str, body: bytes,
                                            query: dict[str, str], which: str) -> None:
    """Signed by the supervisor's device, so that bodies and parameters reach the
    handlers: never a 5xx, always a JSON answer that names a code when it refuses."""
    from urllib.parse import quote, urlencode

    target.seen.inputs["http"] += 1
    creds = target.sup.credentials
    path = {"decide": f"/v1/households/{quote(hid, safe='')}/requests/{quote(rid, safe='')}"
                      f"/approve",
            "list": "/v1/requests", "web-list": "/v1/web/households",
            "web-profile": f"/v1/web/households/{quote(hid, safe='')}",
            "summary": "/v1/web/summary", "enroll": "/v1/enroll"}[which]
    if query and which not in ("decide", "enroll"):
        path += "?" + urlencode(query)
    method = "POST" if which in ("decide", "enroll") else "GET"
    headers = {"Content-Type": "application/json"}
    if which != "enroll":
        headers["Authorization"] = sign(creds.device_id, creds.signing_key, method, path, body)

    async def go() -> None:
        async with aiohttp.ClientSession() as http, http.request(
                method, target.http_url + path, data=body, headers=headers,
                timeout=aiohttp.ClientTimeout(total=BOUND)) as r:
            text = await r.text()
            assert r.status < 500, (r.status, text[:200])
            target.seen.answers[f"http:{r.status}"] += 1
            if r.status >= 400 and r.status not in (404, 405, 413):  # aiohttp's own: plain
                assert "code" in json.loads(text), text[:200]

    asyncio.run(go())
    target.alive()


def test_fuzz_the_server_still_serves_everyone(target: Target) -> None:
    """After every input above: the process is alive and a device syncs."""
    target.alive()
    asyncio.run(_bystander(target))
