"""``vatra demo``: three team members, one household, offline edits, one sync.

The three are users with enrolled tablets (made the way an admin and a
tablet make them, :mod:`vatra_devtools.provision`). The social worker registers
a household and syncs; the household's team is set to the three of them; the
nurse and the school counsellor download it. Then, all three offline, each edits a different part
of the household and all three change the address (the field in common).
They sync one after another, then once more to catch up, and the demo prints
the converged household, who changed what, and the heads of every replica
and of the server side by side.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.table import Table

from client_sdk import SyncClient
from sync_server.app import IDENTITY, SYNCHRONIZER, VatraServer
from sync_server.config import Settings
from vatra_devtools.provision import Provisioner


async def run_demo(settings: Settings, data_dir: Path | None) -> int:
    console = Console()
    with contextlib.ExitStack() as stack:
        base = data_dir or Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix="vatra-demo-")))
        settings = dataclasses.replace(settings, data_dir=base / "server", port=0)
        async with VatraServer(settings) as server:
            console.print(f"[bold]Vatra demo[/] — server on {server.url}")
            assert server.app is not None
            provision = Provisioner(server.app[IDENTITY], server.http_url, server.app[SYNCHRONIZER])
            team = {"social worker": await provision.tablet(base / "tablet-sw", "sw-ana"),
                    "nurse": await provision.tablet(base / "tablet-nurse", "nurse-ioana"),
                    "counsellor": await provision.tablet(base / "tablet-counsellor",
                                                         "csl-mihai")}
            sw, nurse, counsellor = team.values()
            names = {r.actor_id: who for who, r in team.items()}
            names[server.app[SYNCHRONIZER].server_actor] = "Vatra (recorded conflicts)"

            h = sw.create_household(locality="54975", county="CJ",
                                    address="Str. Morii 12, Apahida",
                                    team={"social_worker": "sw-ana", "nurse": "nurse-ioana",
                                          "counsellor": "csl-mihai"})
            hid = h.household_id
            with sw.edit(hid) as e:
                e.add_member("Maria", "Rusu", "1990-03-14", "F", "head")
                child = e.add_member("Andrei", "Rusu", "2016-09-02", "M", "child")
            await SyncClient(sw, server.url).sync()
            await provision.share(hid, sw, nurse, counsellor)
            for r in (nurse, counsellor):
                r.track(hid)
                await SyncClient(r, server.url).sync()
            console.print(f"Household [cyan]{hid}[/] registered and on all three tablets.\n")

            console.print("[bold]Offline[/] — each edits their own part, and all three the address:")
            with sw.edit(hid) as e:
                e.set_gps(46.8357, 23.7365, 12.0)
                e.append_activity("visit", "home visit, family present")
                e.set_address("Str. Morii 12A, Apahida")
            with nurse.edit(hid) as e:
                a = e.start_assessment()
                e.record_answers(a, child, {"family_doctor_registered": False,
                                            "vaccination_status": "incomplete"})
                e.append_activity("assessment", "health indicators")
                e.set_address("Strada Morii nr. 12, Apahida")
            with counsellor.edit(hid) as e:
                e.plan_service("counselling", child, "school_absenteeism", "2026-12-20")
                e.append_notes("Andrei misses school on Mondays.")
                e.set_address("Str. Morii 12, sat Apahida")
            did = {"social worker": "GPS fix, a visit, address := 'Str. Morii 12A, Apahida'",
                   "nurse": "assessment of Andrei, address := 'Strada Morii nr. 12, Apahida'",
                   "counsellor": "service for Andrei, a note, address := "
                                 "'Str. Morii 12, sat Apahida'"}
            for who, what in did.items():
                console.print(f"  • {who}: {what}")

            summaries = {}
            for who, r in team.items():
                summaries[who] = await SyncClient(r, server.url).sync()
            for r in team.values():
                await SyncClient(r, server.url).sync()

            resident = await server.app[SYNCHRONIZER].registry.get(hid)
            assert resident is not None
            server_doc = resident.doc
            final = sw.household(hid)
            data = final.to_dict()
            console.print()
            hh = Table(title="Converged household", show_header=False)
            hh.add_row("address", data["address"])
            hh.add_row("gps", f"{data['gps']['lat']}, {data['gps']['lon']}")
            hh.add_row("members", ", ".join(f"{m['first_name']} {m['last_name']} ({m['relation_to_head']})"
                                            for m in data["members"].values()))
            for aid, asm in data["assessments"].items():
                hh.add_row(f"assessment {aid[:8]}", f"by {asm['by']}: {asm['answers'][child]}")
            for sid, svc in data["service_plan"].items():
                hh.add_row(f"service {sid[:8]}", f"{svc['code']} for {svc['vulnerability']}, "
                                                 f"due {svc['deadline']}, {svc['status']}")
            hh.add_row("notes", data["notes"])
            console.print(hh)
            conflicts = final.conflicts(open_only=True)
            ct = Table(title="Same-field conflicts recorded by the server (for review)")
            ct.add_column("field")
            ct.add_column("concurrent values")
            for c in conflicts:
                ct.add_row("/".join(map(str, c["path"])), " | ".join(map(str, c["values"])))
            console.print(ct)
            console.print("  Every replica shows the same winner; the team chooses the right "
                          "address with Household.resolve_conflict.")

            who_table = Table(title="Who changed what")
            who_table.add_column("tablet")
            who_table.add_column("offline edits")
            who_table.add_column("uploaded")
            who_table.add_column("changes in the household")
            by_actor = Counter(c.actor_id for c in server_doc.get_changes([]))
            for who, r in team.items():
                who_table.add_row(who, did[who], f"{summaries[who].changes_sent} changes",
                                  str(by_actor[r.actor_id]))
            console.print(who_table)
            feed = Table(title="Activity feed")
            for col in ("at", "by", "kind", "text"):
                feed.add_column(col)
            for entry in final.activity():
                feed.add_row(entry["at"], entry["by"], entry["kind"], entry["text"])
            console.print(feed)

            heads = Table(title="Heads (identical everywhere = converged)")
            heads.add_column("holder")
            heads.add_column("heads")
            server_heads = sorted(h.hex()[:16] for h in server_doc.get_heads())
            heads.add_row("server", " ".join(server_heads))
            same = True
            for who, r in team.items():
                hs = sorted(h.hex()[:16] for h in r.household(hid).doc.get_heads())
                same &= hs == server_heads
                heads.add_row(who, " ".join(hs))
            console.print(heads)
            unknown = set(by_actor) - set(names)
            assert not unknown, "a change came from an actor outside the team"
            if not same:
                console.print("[bold red]replicas did not converge[/]")
                return 1
            console.print("[bold green]All three tablets and the server hold identical heads.[/]")
    return 0
