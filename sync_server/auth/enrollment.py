"""Enrollment's guard: refusals counted per client address.

The codes themselves (one-time, hashed, locked after a few wrong secrets) are
:meth:`sync_server.auth.identity.IdentityStore.enroll`'s; the HTTP face is
:mod:`sync_server.api.enrollment`. This limiter stops one address from guessing codes:
after :data:`MAX_FAILURES_PER_ADDRESS` refusals within :data:`WINDOW_SECONDS` it is
refused outright (``429``) until the window clears.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from collections.abc import Callable

MAX_FAILURES_PER_ADDRESS = 10
WINDOW_SECONDS = 15 * 60


class FailureLimiter:
    """Counts refusals per client address in a sliding window."""

    def __init__(self, max_failures: int = MAX_FAILURES_PER_ADDRESS,
                 window: float = WINDOW_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_failures = max_failures
        self.window = window
        self._clock = clock
        self._failures: defaultdict[str, deque[float]] = defaultdict(deque)

    def blocked(self, address: str) -> bool:
        q = self._failures.get(address)
        if not q:
            return False
        horizon = self._clock() - self.window
        while q and q[0] < horizon:
            q.popleft()
        if not q:
            del self._failures[address]
            return False
        return len(q) >= self.max_failures

    def failed(self, address: str) -> None:
        self._failures[address].append(self._clock())
