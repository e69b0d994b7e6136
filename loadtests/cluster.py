"""A local Vatra cluster to load-test: one PostgreSQL, N ``vatra serve`` instances.

    python -m loadtests.cluster DIR [--instances 3] [--port 8931]

Starts an embedded PostgreSQL in ``DIR/postgres``, makes one master key and one server
identity key for every instance (``DIR/cluster.env``, ``DIR/server_identity.key``),
migrates once, then runs ``vatra serve`` on ports ``--port``, ``--port``+1, … each with
its own data directory, as several instances behind a load balancer would run
(docs/instances.md). Prints the instances' HTTP bases once every one answers
``/readyz``, and the provisioning command to run next; stops them all on Ctrl-C or
SIGTERM. The load test spreads its devices over the instances itself (each device is
given one instance, in turn), so no load balancer is needed for a local run.
"""

from __future__ import annotations

import argparse
import base64
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from sync_server.store.database import embedded_postgres


def _env_file(root: Path, url: str) -> dict[str, str]:
    path = root / "cluster.env"
    if path.exists():
        values = dict(line.split("=", 1) for line in path.read_text().splitlines() if line)
    else:
        values = {"VATRA_MASTER_KEY": "1:" + base64.b64encode(os.urandom(32)).decode()}
    values["DATABASE_URL"] = url
    values["VATRA_SERVER_KEY_FILE"] = str((root / "server_identity.key").resolve())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.writelines(f"{k}={v}\n" for k, v in values.items())
    return values


def _ready(http_url: str) -> bool:
    try:
        with urllib.request.urlopen(http_url + "/readyz", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.cluster")
    p.add_argument("dir", type=Path)
    p.add_argument("--instances", type=int, default=3)
    p.add_argument("--port", type=int, default=8931, help="the first instance's port")
    args = p.parse_args(argv)
    root: Path = args.dir
    root.mkdir(parents=True, exist_ok=True)
    stop = False

    def stopping(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, stopping)
    signal.signal(signal.SIGINT, stopping)
    vatra = [sys.executable, "-m", "sync_server.cli"]
    with embedded_postgres(root) as url:
        env = {**os.environ, **_env_file(root, url)}
        if not (root / "server_identity.key").exists():
            subprocess.run([*vatra, "server-key", "generate", "--file",
                            env["VATRA_SERVER_KEY_FILE"]], env=env, check=True)
        subprocess.run([*vatra, "migrate"], env={**env, "VATRA_DATA_DIR": str(root / "a")},
                       check=True)
        ports = [args.port + i for i in range(args.instances)]
        procs = [subprocess.Popen([*vatra, "serve", "--port", str(port)],
                                  env={**env, "VATRA_DATA_DIR": str(root / f"instance-{i + 1}")},
                                  stdout=open(root / f"instance-{i + 1}.log", "ab"),  # noqa: SIM115
                                  stderr=subprocess.STDOUT)
                 for i, port in enumerate(ports)]
        bases = [f"http://127.0.0.1:{port}" for port in ports]
        try:
            deadline = time.monotonic() + 60
            while not all(_ready(b) for b in bases):
                if stop or time.monotonic() > deadline or any(q.poll() is not None for q in procs):
                    print("an instance did not start: see its log in", root, file=sys.stderr)
                    return 1
                time.sleep(0.3)
            print("ready: " + " ".join(bases), flush=True)
            servers = " ".join(f"--server {b}" for b in bases)
            print(f"provision: set -a; . {root / 'cluster.env'}; set +a; "
                  f"python -m loadtests.provision PLAN_DIR {servers} …", flush=True)
            while not stop and all(q.poll() is None for q in procs):
                time.sleep(0.5)
        finally:
            for q in procs:
                q.terminate()
            for q in procs:
                try:
                    q.wait(15)
                except subprocess.TimeoutExpired:
                    q.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
