"""``vatra demo`` runs end to end and proves convergence."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import TEST_MASTER_KEY

pytestmark = pytest.mark.functional


def test_demo_converges(database_url: str, tmp_path) -> None:
    """The demo exits 0 only when all three replicas and the server hold identical heads."""
    env = {**os.environ, "DATABASE_URL": database_url, "COLUMNS": "120",
           "VATRA_MASTER_KEY": TEST_MASTER_KEY}
    done = subprocess.run([sys.executable, "-m", "sync_server.cli", "demo",
                           "--data-dir", str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "All three tablets and the server hold identical heads." in done.stdout
    assert "Maria Rusu (head)" in done.stdout
    # Three tablets appended to the feed offline: before issue 12 the demo itself listed
    # three conflicts on activity/N/by, kind and text. The address is the one conflict.
    assert "activity/" not in done.stdout
    assert "│ address" in done.stdout
