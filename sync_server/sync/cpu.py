"""CPU-heavy household work, off the event loop when it is big.

One event loop serves every session, ``/healthz`` and the projector. Applying and checking
a big batch (2,000 changes: ~0.5 s of CPU), validating or reading a whole big household
(a 50,000-entry feed: ~1.7 s for ``to_dict``), loading or saving one: run on the loop,
each of these stalled every other tablet for as long (issue 13, fault 6). Here they run
in a small pool of worker threads instead.

The Automerge binding holds the GIL inside each call (measured: a ticking thread made no
progress during a 75 ms ``receive_sync_message``), so a worker does not run in parallel
with the loop; but between two binding calls the worker's Python code gives the GIL
up at the interpreter's switch interval, so the loop runs every few milliseconds instead
of waiting for the whole batch, and other households' small batches go through
meanwhile. What remains of a stall is the longest single binding call (tens of
milliseconds for the sizes above; docs/performance.md, "Big households").

A small message is applied and checked inline: below :data:`OFFLOAD_BYTES` the hop to a
thread costs more than the stall it would save. Work on a whole household always runs in
a worker (:func:`offload`): its cost follows the household's history, which nothing
cheap measures.

Thread safety. A worker only touches what its caller holds under the household's lock:
a fork nobody else sees, the household's committed copy (read only: the loop replaces
it, never mutates it in place), and the household's object index. A caller cancelled
while its worker runs (its session closed, the server stopping) keeps waiting for the
worker before the cancellation goes on (:func:`run`), so the lock is never released
while a worker still uses what it protects.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

#: A device's message of more bytes than this is applied and checked in a worker thread.
OFFLOAD_BYTES = 64 * 1024

#: Worker threads. More than one, so that one huge household does not queue the next big
#: batch of another behind it; few, because the GIL lets one run at a time anyway.
WORKERS = 4

#: The interpreter's thread switch interval while a server runs (``sys.setswitchinterval``):
#: how long the event loop may wait for the GIL while a worker runs Python code. At 5 ms
#: (Python's default) ``/healthz`` took 6 ms at the median while a big batch was checked;
#: at 1 ms, 2 ms (docs/performance.md, "Big households").
SWITCH_INTERVAL = 0.001

_P = ParamSpec("_P")
_T = TypeVar("_T")

_pool: ThreadPoolExecutor | None = None


def _executor() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="vatra-cpu")
    return _pool


async def run(size: int, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """``fn(*args, **kwargs)`` on a device's message of ``size`` bytes: inline when the
    message is at most :data:`OFFLOAD_BYTES`, else in a worker thread (:func:`offload`)."""
    if size <= OFFLOAD_BYTES:
        return fn(*args, **kwargs)
    return await offload(fn, *args, **kwargs)


async def offload(fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """``fn(*args, **kwargs)`` in a worker thread: for work on a whole household, whose
    cost no stored size foretells (Automerge compresses a repetitive feed of 50,000
    entries to a few hundred kilobytes). If the caller is cancelled meanwhile, the
    worker is waited for before the cancellation is raised."""
    loop = asyncio.get_running_loop()
    fut = loop.run_in_executor(_executor(), functools.partial(fn, *args, **kwargs))
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        while not fut.done():
            try:
                await asyncio.wait({fut})
            except asyncio.CancelledError:
                continue  # cancelled again: the worker still holds the household's state
        if not fut.cancelled():
            fut.exception()  # retrieved: the cancellation is what the caller gets
        raise
