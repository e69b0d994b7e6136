"""One connection's message loop: handshake, then sync messages, per household in order.

Messages for one household are handled strictly in arrival order (they share
one SyncState); messages for different households run concurrently, at most
``max_in_flight`` at a time, so a tablet returning with many changed
households waits for one group commit, not for one commit per household. When
the limit is reached the loop stops reading frames until a slot frees up:
backpressure reaches the client through TCP, memory stays bounded.

A rule broken by the peer (protocol or document error) sends an ``error``
and closes this connection only; a batch refused by a rule, or not stored, sends
``error`` and keeps the connection; anything else (a bug, a server-side fault) is
logged and closes the connection with ``internal-error``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable

from prometheus_client import Counter

from sync_server.gateway.connection import Connection, ConnectionState
from sync_server.protocol import fastpath, wire
from sync_server.protocol.errors import (
    DocumentError,
    ErrorCode,
    ProtocolError,
    Refused,
    StorageError,
    VatraError,
)
from sync_server.sync.pipeline import Synchronizer

log = logging.getLogger(__name__)

#: Message types a device may send once its connection is open.
FROM_CLIENT_ALLOWED = (wire.Sync, wire.Request, wire.Ephemeral, wire.Error)

#: What a message's task lets through; anything else it raises is answered and logged,
#: so the messages queued behind it for the same household still run.
_PASS_THROUGH = (asyncio.CancelledError, KeyboardInterrupt, SystemExit, GeneratorExit)

#: Households of one connection being merged at the same time.
MAX_IN_FLIGHT = 16


class TokenBucket:
    """``rate`` messages per second on average, ``burst`` at once."""

    def __init__(self, rate: float, burst: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self._clock = rate, burst, clock
        self._tokens = float(burst)
        self._at = clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


MESSAGES_IN = Counter("vatra_messages_in_total", "Messages received from devices", ["type"])
BYTES_IN = Counter("vatra_bytes_in_total", "Bytes of messages received from devices (plaintext)")
FAST_PATH = Counter("vatra_fast_path_households_total",
                    "Households compared by the reconnect fast path, by outcome (same: not "
                    "synced; differ: the server opened them)", ["outcome"])


async def serve_connection(conn: Connection, synchronizer: Synchronizer, *,
                           max_in_flight: int = MAX_IN_FLIGHT,
                           limit: TokenBucket | None = None, fast_path: bool = True) -> None:
    """Read frames until the peer leaves or breaks a rule; errors close only this peer."""
    tails: dict[str, asyncio.Task[None]] = {}  # the latest task of each household
    slots = asyncio.Semaphore(max_in_flight)

    async def fail(err: VatraError) -> None:
        log.info("connection %s: closing, %s", conn.id, err.code)
        conn.send_error(err)
        await conn.close(str(err.code))
        await synchronizer.record(conn, "session-closed", err.document_id, code=str(err.code))

    async def handle_in_order(previous: asyncio.Task[None] | None, hid: str,
                              work: Callable[[], Awaitable[None]]) -> None:
        try:
            if previous is not None:
                await previous  # never raises: each task handles its own errors
            if conn.state is ConnectionState.CLOSED:
                return
            await work()
        except (StorageError, Refused) as err:
            conn.send_error(err)  # one batch refused (or not stored): tell, keep the connection
            if isinstance(err, Refused):
                await synchronizer.record(conn, "batch-refused", hid, code=str(err.code))
        except (ProtocolError, DocumentError) as err:
            await fail(err)  # the peer broke a rule: its sync state is reset, it reconnects
        except _PASS_THROUGH:
            raise
        except BaseException:
            # A bug, a fault of the server's own (a key, the database), or a Rust panic (a
            # BaseException) out of the binding: logged in full, the peer told no more.
            log.exception("connection %s: internal error", conn.id)
            await fail(VatraError("internal server error", code=ErrorCode.INTERNAL_ERROR))
        finally:
            slots.release()

    def forget(hid: str, task: asyncio.Task[None]) -> None:
        if tails.get(hid) is task:
            del tails[hid]

    async def in_order(hid: str, work: Callable[[], Awaitable[None]]) -> None:
        """Run ``work`` after the household's earlier messages, at most ``max_in_flight``
        households at a time."""
        await slots.acquire()
        task = asyncio.create_task(handle_in_order(tails.get(hid), hid, work))
        tails[hid] = task
        task.add_done_callback(functools.partial(forget, hid))

    awaiting_heads = False  # join offered the fast path: vatra-heads must come next

    try:
        while conn.state is not ConnectionState.CLOSED:
            frame = await conn.channel.receive()
            if frame is None:
                break
            if limit is not None and not limit.take():
                raise ProtocolError("too many messages; slow down and reconnect",
                                    code=ErrorCode.RATE_LIMITED)
            msg = wire.decode(frame)
            conn.bytes_in += len(frame)
            MESSAGES_IN.labels(msg.type).inc()
            BYTES_IN.inc(len(frame))
            if conn.state is ConnectionState.AWAITING_JOIN:
                if not isinstance(msg, wire.Join):
                    raise ProtocolError("the first message must be 'join'",
                                        code=ErrorCode.HANDSHAKE_REQUIRED)
                conn.opened(msg.sender_id)
                offer = msg.metadata.get("vatraHeads")
                awaiting_heads = fast_path and type(offer) is int and offer == fastpath.VERSION
                metadata: dict[str, object] = {"isEphemeral": False}
                if awaiting_heads:
                    metadata["vatraHeads"] = fastpath.VERSION
                conn.send(wire.Peer(synchronizer.server_peer_id, msg.sender_id,
                                    metadata=metadata))
                if msg.metadata.get("vatraCaseload") is True and not awaiting_heads:
                    live, erased = await _caseload(conn)
                    conn.send(wire.Caseload(synchronizer.server_peer_id, msg.sender_id,
                                            tuple(live), tuple(erased)))
                continue
            if isinstance(msg, wire.Join):  # docs/protocol.md: a second join
                raise ProtocolError("join is only valid once, as the first message",
                                    code=ErrorCode.HANDSHAKE_REQUIRED)
            if awaiting_heads != isinstance(msg, wire.Heads):
                raise ProtocolError("'vatra-heads' comes right after a join that offers "
                                    "vatraHeads, and only then",
                                    code=ErrorCode.HANDSHAKE_REQUIRED)
            if isinstance(msg, wire.Heads):
                awaiting_heads = False
                reply, read = await synchronizer.compare_heads(conn, msg)
                conn.send(reply)
                FAST_PATH.labels("same").inc(len(conn.sync.watched))
                FAST_PATH.labels("differ").inc(len(reply.differ))
                for hid in reply.differ:
                    # each household opened costs what a sync message would
                    if limit is not None and not limit.take():
                        raise ProtocolError("too many households to open; slow down and "
                                            "reconnect", code=ErrorCode.RATE_LIMITED)
                    await in_order(hid, functools.partial(synchronizer.open, conn, hid,
                                                          read[hid]))
                continue
            if not isinstance(msg, FROM_CLIENT_ALLOWED):
                raise ProtocolError(f"'{msg.type}' is not a message a client may send",
                                    code=ErrorCode.UNKNOWN_MESSAGE_TYPE)
            if isinstance(msg, wire.Sync):  # Request is a Sync
                await in_order(msg.document_id,
                               functools.partial(synchronizer.handle, conn, msg))
            elif isinstance(msg, wire.Error):
                log.info("connection %s: peer reported error code=%s", conn.id, msg.code[:40])
            # Ephemeral: accepted and not relayed (docs/decisions.md).
    except (ProtocolError, DocumentError, StorageError) as err:
        # (StorageError: the caseload could not be read at join; the client retries)
        await asyncio.gather(*tails.values())  # let earlier messages finish, then refuse
        await fail(err)
        return
    except asyncio.CancelledError:
        for task in tails.values():
            task.cancel()
        conn.abort(ErrorCode.SERVER_SHUTTING_DOWN)
        raise
    # The peer left (or a task closed the connection): merges under way still commit;
    # their answers to this peer are dropped.
    await asyncio.gather(*tails.values())
    await conn.close()


async def _caseload(conn: Connection) -> tuple[list[str], list[str]]:
    """The households the device keeps, and the erased ones it may still hold."""
    if conn.grants is None:  # the endpoint makes the grants before serving
        raise ProtocolError("no authenticated device on this connection",
                            code=ErrorCode.HANDSHAKE_REQUIRED)
    return await conn.grants.caseload(), await conn.grants.erased()
