"""``vatra projector``, ``vatra projections rebuild`` and ``vatra status``.

``vatra projector`` runs the projector on its own (the server also runs one unless
``VATRA_PROJECTOR=0``; two can run side by side, each household is projected by
one at a time). ``--once`` drains the outbox and exits. ``--metrics-port P`` serves the projector's
Prometheus metrics (lag, backlog, passes) on ``http://0.0.0.0:P/metrics``, for a
projector deployed on its own (deploy/).

``vatra projections rebuild [--household H ...]`` re-projects households from the
change log, queued or not, and prints what changed: after a fix to the projection
code, or to check the tables (a rebuild of correct rows writes nothing). A full rebuild
(no ``--household``) then recounts the per-locality aggregates from the rows
(sync_server/store/aggregates.py) and says how many were wrong.

``vatra status`` prints the projection's state: households pending, the lag now
(the age of the oldest change not yet projected), households projected.

``vatra open-data FILE [--threshold K] [--csv]`` writes the anonymized, aggregated public
export (sync_server/projection/opendata.py, docs/open-data.md): JSON, or CSV with one row
per area and measure.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import signal
import sys
from pathlib import Path

from prometheus_client import start_http_server

from sync_server.cli.common import open_store
from sync_server.config import Settings
from sync_server.projection import opendata
from sync_server.projection.projector import Projector, projection_status, registered
from sync_server.store import aggregates
from sync_server.store.keys import KeyRingError, load_keyring
from sync_server.store.postgres import PostgresStore


def add_projection_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = sub.add_parser("projector", help="keep the web tier's tables (schema proj) up to date")
    run.add_argument("--once", action="store_true", help="drain the outbox, then exit")
    run.add_argument("--poll", type=float, default=0.25, help="seconds between outbox polls")
    run.add_argument("--data-dir", type=Path)
    run.add_argument("--metrics-port", type=int, metavar="P",
                     help="serve Prometheus metrics on this port (all addresses)")
    proj = sub.add_parser("projections", help="projection maintenance")
    psub = proj.add_subparsers(dest="action", required=True)
    rebuild = psub.add_parser("rebuild", help="re-project households from the change log")
    rebuild.add_argument("--household", action="append", metavar="H",
                         help="only this household (repeatable); default: every household")
    rebuild.add_argument("--data-dir", type=Path)
    public = sub.add_parser("open-data", help="write the anonymized, aggregated public export")
    public.add_argument("file", type=Path, help="where to write it")
    public.add_argument("--threshold", type=int, default=opendata.THRESHOLD, metavar="K",
                        help=f"smallest count published (default {opendata.THRESHOLD})")
    public.add_argument("--csv", action="store_true", help="CSV instead of JSON")
    public.add_argument("--data-dir", type=Path)
    status = sub.add_parser("status", help="projection lag and backlog")
    status.add_argument("--data-dir", type=Path)
    status.add_argument("--json", action="store_true", help="print one JSON object")


async def run_projection_command(settings: Settings, args: argparse.Namespace) -> int:
    try:
        async with open_store(settings, load_keyring(settings)) as store:
            return await _run(store, args)
    except KeyRingError as err:  # no master key, or not the one the data keys are under
        print(f"vatra: {err}", file=sys.stderr)
        return 1


async def _run(store: PostgresStore, args: argparse.Namespace) -> int:
    engine = store.engine
    if args.command == "status":
        state = await projection_status(engine)
        if args.json:
            print(json.dumps(state))
        else:
            print(f"households pending projection: {state['pending']}\n"
                  f"projection lag now:            {state['lag_seconds']:.3f} s\n"
                  f"households projected:          {state['households_projected']}\n"
                  f"last projection at:            {state['last_projected_at'] or '-'}")
        return 0
    if args.command == "open-data":
        if args.threshold < 1:
            print("vatra: --threshold must be at least 1", file=sys.stderr)
            return 2
        document = await opendata.export(engine, args.threshold)
        args.file.write_text(_as_csv(document) if args.csv else
                             json.dumps(document, indent=1, ensure_ascii=False) + "\n",
                             encoding="utf-8")
        print(f"wrote {args.file}: {len(document['areas'])} area(s), "
              f"{len(document['measures'])} measure(s), "
              f"{document['suppressed_cells']} cell(s) suppressed below {args.threshold}")
        return 0
    projector = Projector(engine, store, poll=getattr(args, "poll", 0.25))
    if args.command == "projections":
        if args.household:
            unknown = sorted(set(args.household) - await registered(engine, args.household))
            if unknown:  # say so rather than report "rebuilt 0"
                print(f"vatra: no such household: {', '.join(unknown)}", file=sys.stderr)
                return 1
        done = await projector.rebuild(args.household)
        changed = [p for p in done if p.upserted or p.deleted]
        print(f"rebuilt {len(done)} household(s): {len(changed)} changed, "
              f"{sum(p.upserted for p in done)} row(s) written, "
              f"{sum(p.deleted for p in done)} deleted")
        if args.household is None:  # a full rebuild also recounts the per-locality aggregates
            async with store.engine.begin() as conn:
                wrong = await aggregates.recount(conn)
            print(f"recounted the per-locality aggregates: {wrong} row(s) corrected")
        return 0
    if args.once:
        n = await projector.drain_all()
        print(f"projected {n} household(s); the outbox is empty", flush=True)
        return 0
    if args.metrics_port is not None:
        start_http_server(args.metrics_port)  # a daemon thread; exits with the process
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    task = asyncio.create_task(projector.run())
    print("Vatra projector running", flush=True)
    await stop.wait()
    await projector.stopped(task)
    print(f"Vatra projector stopping ({projector.projected} projection(s))", flush=True)
    return 0


def _as_csv(document: dict[str, object]) -> str:
    """One row per area and measure; a suppressed count is an empty field."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["level", "code", "county", "measure", "count"])
    areas = document["areas"]
    assert isinstance(areas, list)
    for area in areas:
        for measure, count in sorted(area["counts"].items()):
            writer.writerow([area["level"], area["code"], area["county"] or "", measure,
                             "" if count is None else count])
    return out.getvalue()
