"""The shape of the code, checked with the suite: ruff (lint, with the ASYNC rules), mypy
(strict on the protocol, the store and the household model) and import-linter (the
layers of ``pyproject.toml``). A finding fails the test command, so it fails CI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@pytest.mark.parametrize("command", [
    ["ruff", "check", "."],
    ["mypy"],
    ["lint-imports"],
], ids=["ruff", "mypy", "import-linter"])
def test_the_code_keeps_its_shape(command: list[str]) -> None:
    done = subprocess.run([str(BIN / command[0]), *command[1:]], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_the_server_command_loads_no_developer_tool() -> None:
    """The server's process carries only what it runs: loading the ``vatra`` command (as
    ``vatra serve`` does) imports neither the developer tools nor the client SDK they
    drive; ``vatra demo`` and ``vatra bench`` import them when they run."""
    probe = ("import sys, sync_server.cli; "
             "print(sorted(m for m in sys.modules "
             "if m.split('.')[0] in ('vatra_devtools', 'client_sdk')))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]", done.stdout
