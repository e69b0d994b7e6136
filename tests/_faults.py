"""A PostgreSQL that a test stops, starts, freezes and thaws, as an operator's day would
(``from _faults import Postgres``; the ``postgres`` fixture in ``conftest.py`` gives each
test one of its own, in its directory)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
from pathlib import Path
from typing import Any

from sync_server.store.database import children


class Postgres:
    """An embedded PostgreSQL this test may stop and start."""

    def __init__(self, data_dir: Path) -> None:
        import pgserver
        from pgserver._commands import pg_ctl

        self._pg_ctl = pg_ctl
        self.server: Any = pgserver.get_server(data_dir, cleanup_mode="stop")  # type: ignore[attr-defined]
        self.url: str = self.server.get_uri()
        self._socket_dir = re.search(r"host=([^&]+)", self.url).group(1)  # type: ignore[union-attr]

    def _ctl(self, *args: str) -> None:
        self._pg_ctl(list(args), pgdata=self.server.pgdata, user=self.server.system_user,
                     timeout=60)

    async def stop(self) -> None:
        await asyncio.to_thread(self._ctl, "-w", "-m", "fast", "stop")

    def close(self) -> None:
        """Stop it for good. (pgserver alone stops only the postmaster it started: one
        this test restarted was left running after the test.)"""
        with contextlib.suppress(Exception):
            self.thaw()
        with contextlib.suppress(Exception):
            self._ctl("-w", "-m", "fast", "stop")
        self.server.cleanup()

    def _processes(self) -> list[int]:
        """The postmaster and every process it started (the backends)."""
        postmaster = int((Path(self.server.pgdata) / "postmaster.pid").read_text().split()[0])
        return [postmaster, *children(postmaster)]

    def freeze(self) -> None:
        """SIGSTOP the whole server: connections stay open and nothing answers."""
        for pid in self._processes():
            os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        for pid in self._processes():
            os.kill(pid, signal.SIGCONT)

    async def start(self) -> None:
        from urllib.parse import unquote

        await asyncio.to_thread(self._ctl, "-w", "-o", '-h ""', "-o",
                                f"-k {unquote(self._socket_dir)}", "-l",
                                str(self.server.log), "start")
