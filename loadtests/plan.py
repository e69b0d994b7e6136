"""A load test's plan: the servers, and the devices provisioned for each scenario.

``python -m loadtests.provision`` writes ``DIR/plan.json`` and one enrolled replica per
device under ``DIR/devices/``; the Locust users read the plan and each claims one device
of its scenario. A claim is an exclusive ``flock`` on the device's directory, held for
the life of the process, so several Locust worker processes on one machine never drive
the same device (two sessions of one device would be one tablet in two places).
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

PLAN_FILE = "plan.json"
PLAN_VERSION = 1
#: The PIN every simulated tablet seals its replica with (a person would choose one).
PIN = "2468"

#: Scenario names, as the plan and the Locust users call them.
RETURNING = "returning"    # tablets back from offline visits: the morning rush
CO_EDITING = "co-editing"  # two team members editing one household live
SUPERVISOR = "supervisor"  # deciding change requests over the HTTP API
WEB = "web"                # the web tier reading lists, profiles and summaries


@dataclass(frozen=True)
class Target:
    """One Vatra instance: its sync WebSocket and its HTTP base."""

    url: str
    http_url: str

    @classmethod
    def from_http(cls, http_url: str) -> Target:
        base = http_url.rstrip("/")
        scheme, rest = base.split("://", 1)
        return cls(("wss" if scheme == "https" else "ws") + "://" + rest + "/v1/sync", base)


@dataclass
class Device:
    """One enrolled replica: who it belongs to, where it is, which households matter."""

    scenario: str
    user_id: str
    path: str                    # relative to the plan's directory
    households: list[str] = field(default_factory=list)


@dataclass
class Plan:
    targets: list[Target]
    devices: list[Device]
    county: str
    locality: str
    version: int = PLAN_VERSION

    def of(self, scenario: str) -> list[Device]:
        return [d for d in self.devices if d.scenario == scenario]

    def save(self, root: Path) -> None:
        data = asdict(self)
        tmp = root / (PLAN_FILE + ".tmp")
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        os.replace(tmp, root / PLAN_FILE)

    @classmethod
    def load(cls, root: Path) -> Plan:
        path = root / PLAN_FILE
        try:
            data: dict[str, Any] = json.loads(path.read_text())
        except FileNotFoundError:
            raise SystemExit(f"no load-test plan at {path}: run python -m loadtests.provision "
                             f"first (docs/capacity.md)") from None
        if data.get("version") != PLAN_VERSION:
            raise SystemExit(f"{path}: plan version {data.get('version')!r}, expected "
                             f"{PLAN_VERSION}; provision again")
        return cls(targets=[Target(**t) for t in data["targets"]],
                   devices=[Device(**d) for d in data["devices"]],
                   county=data["county"], locality=data["locality"])


class Claims:
    """Devices of this process, each held under an exclusive lock on its directory."""

    def __init__(self, root: Path, plan: Plan) -> None:
        self.root = root
        self.plan = plan
        self._held: dict[str, IO[bytes]] = {}

    def claim(self, scenario: str) -> tuple[int, Device] | None:
        """The first device of ``scenario`` no process holds, and its index among the
        scenario's devices; None when every one is taken."""
        for index, device in enumerate(self.plan.of(scenario)):
            if device.path in self._held:
                continue
            handle = open(self.root / device.path / "claim.lock", "ab")  # noqa: SIM115 (held)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            self._held[device.path] = handle
            return index, device
        return None

    def release(self, device: Device) -> None:
        handle = self._held.pop(device.path, None)
        if handle is not None:
            handle.close()  # closing the file drops the lock
