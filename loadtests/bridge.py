"""Running Vatra's asyncio client code from Locust's greenlets.

Locust schedules its users as gevent greenlets; the SDK (``client_sdk``) and the session
handshake are asyncio. One native thread per Locust process runs an asyncio event loop;
:func:`call` hands a coroutine to it and parks only the calling greenlet until the
coroutine finishes, so the other users keep running. The result crosses threads through
a gevent async watcher, the one gevent object documented as safe to signal from another
thread; it is started before the coroutine is submitted, so a fast result is not missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import gevent
import gevent.event
from gevent import monkey

T = TypeVar("T")

_loop: asyncio.AbstractEventLoop | None = None
_lock = threading.Lock()


def loop() -> asyncio.AbstractEventLoop:
    """This process's asyncio loop, started on first use (after Locust forks its workers)."""
    global _loop
    with _lock:
        if _loop is None:
            started: list[asyncio.AbstractEventLoop] = []

            def run() -> None:
                new = asyncio.new_event_loop()
                asyncio.set_event_loop(new)
                started.append(new)
                new.run_forever()

            # Locust monkey-patches threading into greenlets: take the real thread.
            monkey.get_original("_thread", "start_new_thread")(run, ())
            nap = monkey.get_original("time", "sleep")
            while not started:
                nap(0.001)
            _loop = started[0]
        return _loop


def _wake(watcher: object) -> None:
    """Signal the waiting greenlet (from the asyncio thread); after a timeout it has
    closed the watcher and gone."""
    with contextlib.suppress(Exception):
        watcher.send()  # type: ignore[attr-defined]


def call(coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    """Run ``coro`` on the asyncio thread; wait for it in this greenlet only. Raises what
    it raised, or :class:`TimeoutError` (the coroutine is cancelled) after ``timeout``."""
    hub = gevent.get_hub()
    watcher = hub.loop.async_()
    finished = gevent.event.Event()
    watcher.start(finished.set)
    try:
        future = asyncio.run_coroutine_threadsafe(coro, loop())
        future.add_done_callback(lambda _: _wake(watcher))
        if not finished.wait(timeout):
            future.cancel()
            raise TimeoutError(f"no answer within {timeout} s")
        return future.result(timeout=0)
    finally:
        watcher.close()
