"""Server settings, read once from the environment.

| variable                   | default          | meaning                                              |
|----------------------------|------------------|------------------------------------------------------|
| DATABASE_URL               | (embedded)       | PostgreSQL URL; unset = embedded server in data dir  |
| VATRA_DATA_DIR             | ./var            | embedded database and other local state              |
| VATRA_HOST / VATRA_PORT    | 127.0.0.1 / 8765 | where /v1/sync listens (port 0 = any free port)      |
| VATRA_MAX_FRAME_BYTES      | 4194304          | largest frame accepted; larger = error, closed       |
| VATRA_OUTBOX_FRAMES        | 512              | frames queued per connection before it is dropped    |
| VATRA_MESSAGES_PER_SECOND  | 100              | sustained messages per session (token bucket) ...    |
| VATRA_MESSAGE_BURST        | 2000             | ... and its burst (a tablet resyncing its caseload)  |
| VATRA_SESSIONS_PER_DEVICE  | 4                | concurrent sessions of one device                    |
| VATRA_HEARTBEAT_SECONDS    | 30               | a peer that answers no WebSocket ping for this long  |
|                            |                  | is gone (its connection is closed)                   |
| VATRA_DATABASE_TIMEOUT     | 10               | seconds a database connect, pool wait, statement or  |
|                            |                  | lock wait may take before it fails (storage-failure) |
| VATRA_RESIDENT_HOUSEHOLDS  | 2000             | idle households kept in memory (count)               |
| VATRA_RESIDENT_BYTES       | 268435456        | idle households kept in memory (stored bytes)        |
| VATRA_MASTER_KEY           | (none)           | master key: [<version>:]<base64 of 32 bytes>         |
| VATRA_MASTER_KEY_FILE      | (none)           | master key file (docs/keys.md); with neither set the |
|                            |                  | embedded default uses <data dir>/master.key (created |
|                            |                  | on first run); DATABASE_URL without a key is refused |
| VATRA_SERVER_KEY_FILE      | (data dir)       | server identity key (32-byte Ed25519 seed); default  |
|                            |                  | <data dir>/server_identity.key, created on first run |
| VATRA_MAX_CHANGES_PER_MESSAGE | 10000         | changes one sync message may carry ...               |
| VATRA_MAX_OPS_PER_MESSAGE  | 250000           | ... operations in all of them ...                    |
| VATRA_MAX_DELETES_PER_MESSAGE | 100000        | ... delete operations ...                            |
| VATRA_MAX_INFLATED_BYTES   | 33554432         | ... and bytes once inflated (protocol/preflight.py)  |
| VATRA_QUARANTINE_DEVICE_BYTES | 67108864      | refused data kept per device (bytes) ...             |
| VATRA_QUARANTINE_DEVICE_ROWS | 1000           | ... (refused inputs) ...                             |
| VATRA_QUARANTINE_TOTAL_BYTES | 2147483648     | ... and in all (table size, store/quarantine.py)     |
| VATRA_LOG_FORMAT           | text             | ``json``: one JSON object per log line (cli/logs.py) |
| VATRA_PG_BIN               | (embedded's)     | pg_dump / pg_restore for ``vatra backup`` / restore  |
| VATRA_TRUSTED_PROXIES      | (none)           | load balancers (addresses, networks) whose           |
|                            |                  | X-Forwarded-For the enrollment limiter believes      |
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from sync_server.protocol.errors import ConfigError
from sync_server.protocol.preflight import Limits
from sync_server.store.quarantine import Quotas


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str | None = None
    data_dir: Path = field(default_factory=lambda: Path("var"))
    host: str = "127.0.0.1"
    port: int = 8765
    max_frame_bytes: int = 4 * 1024 * 1024
    outbox_frames: int = 512
    messages_per_second: float = 100.0
    message_burst: int = 2000
    sessions_per_device: int = 4
    heartbeat_seconds: float = 30.0  # a peer that answers no ping for this long is gone
    database_timeout: float = 10.0  # connect, pool wait, statement, lock wait (seconds)
    resident_households: int = 2000
    resident_bytes: int = 256 * 1024 * 1024
    master_key: str | None = field(default=None, repr=False)  # never in logs
    master_key_file: str | None = None
    server_key_file: str | None = None
    projector: bool = True  # run the projector in the server process (VATRA_PROJECTOR=0: not)
    #: take the reconnect fast path a device offers (VATRA_FAST_PATH=0: not; the offer is
    #: then declined, and a vatra-heads behind it refused with handshake-required, which
    #: makes the SDK sync without it as it does with a server from before the extension)
    fast_path: bool = True
    #: the event loop ``vatra serve`` runs on (VATRA_EVENT_LOOP): ``uvloop`` (libuv, about a
    #: tenth less CPU per change than the standard loop; docs/performance.md) or ``asyncio``
    event_loop: str = "uvloop"
    #: load balancers whose X-Forwarded-For names the client (VATRA_TRUSTED_PROXIES: comma-
    #: separated addresses or networks); from anyone else the header is ignored
    trusted_proxies: tuple[str, ...] = ()
    limits: Limits = field(default_factory=Limits)  # what one sync message may cost
    quarantine: Quotas = field(default_factory=Quotas)  # how much refused data is kept

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        e = os.environ if env is None else env
        base = cls()
        return replace(
            base,
            database_url=e.get("DATABASE_URL") or None,
            data_dir=Path(e.get("VATRA_DATA_DIR", str(base.data_dir))),
            host=e.get("VATRA_HOST", base.host),
            port=_int(e, "VATRA_PORT", base.port),
            max_frame_bytes=_int(e, "VATRA_MAX_FRAME_BYTES", base.max_frame_bytes),
            outbox_frames=_positive(e, "VATRA_OUTBOX_FRAMES", base.outbox_frames),
            messages_per_second=_int(e, "VATRA_MESSAGES_PER_SECOND",
                                     int(base.messages_per_second)),
            message_burst=_int(e, "VATRA_MESSAGE_BURST", base.message_burst),
            sessions_per_device=_int(e, "VATRA_SESSIONS_PER_DEVICE", base.sessions_per_device),
            heartbeat_seconds=_int(e, "VATRA_HEARTBEAT_SECONDS", int(base.heartbeat_seconds)),
            database_timeout=_positive(e, "VATRA_DATABASE_TIMEOUT", int(base.database_timeout)),
            resident_households=_int(e, "VATRA_RESIDENT_HOUSEHOLDS", base.resident_households),
            resident_bytes=_int(e, "VATRA_RESIDENT_BYTES", base.resident_bytes),
            master_key=e.get("VATRA_MASTER_KEY") or None,
            master_key_file=e.get("VATRA_MASTER_KEY_FILE") or None,
            server_key_file=e.get("VATRA_SERVER_KEY_FILE") or None,
            projector=e.get("VATRA_PROJECTOR", "1") not in ("0", "false", "no", "off"),
            fast_path=e.get("VATRA_FAST_PATH", "1") not in ("0", "false", "no", "off"),
            event_loop=_choice(e, "VATRA_EVENT_LOOP", base.event_loop, ("uvloop", "asyncio")),
            trusted_proxies=_networks(e, "VATRA_TRUSTED_PROXIES"),
            limits=replace(
                base.limits,
                max_changes=_int(e, "VATRA_MAX_CHANGES_PER_MESSAGE", base.limits.max_changes),
                max_ops=_int(e, "VATRA_MAX_OPS_PER_MESSAGE", base.limits.max_ops),
                max_deletes=_int(e, "VATRA_MAX_DELETES_PER_MESSAGE", base.limits.max_deletes),
                max_inflated_bytes=_int(e, "VATRA_MAX_INFLATED_BYTES",
                                        base.limits.max_inflated_bytes)),
            quarantine=Quotas(
                device_bytes=_int(e, "VATRA_QUARANTINE_DEVICE_BYTES",
                                  base.quarantine.device_bytes),
                device_rows=_int(e, "VATRA_QUARANTINE_DEVICE_ROWS", base.quarantine.device_rows),
                total_bytes=_int(e, "VATRA_QUARANTINE_TOTAL_BYTES", base.quarantine.total_bytes)),
        )


def _int(env: os._Environ[str] | dict[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None


def _choice(env: os._Environ[str] | dict[str, str], name: str, default: str,
            allowed: tuple[str, ...]) -> str:
    value = env.get(name) or default
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def _networks(env: os._Environ[str] | dict[str, str], name: str) -> tuple[str, ...]:
    items = [item.strip() for item in env.get(name, "").split(",") if item.strip()]
    for item in items:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ConfigError(f"{name}: {item!r} is not an IP address or network "
                              f"(e.g. 10.0.0.5 or 10.0.0.0/24)") from None
    return tuple(items)


def _positive(env: os._Environ[str] | dict[str, str], name: str, default: int) -> int:
    value = _int(env, name, default)
    if value < 1:  # 0 would mean "no bound" to PostgreSQL, and an instant failure to asyncpg
        raise ConfigError(f"{name} must be at least 1, got {value}")
    return value
