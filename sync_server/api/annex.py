"""The GD 691/2015 annex of a household: its children whose parents work abroad.

Romania's GD 691/2015 has the local public social assistance service keep, for every
child with one or both parents working abroad, who left, for which country and since
when, who cares for the child meanwhile, and when the parent notified the service. The
household records that with ``Household.record_parent_abroad`` (offline, on the
tablet); the projector copies it to ``proj.parents_abroad``; this module lays it out:

* :func:`content`: the annex as plain data (what ``GET
  /v1/web/households/{id}/annex-691`` answers as JSON);
* :func:`render_pdf`: the same content as a PDF the local service can print and file
  (fpdf2, with the DejaVu Sans font shipped in ``sync_server/api/fonts``, which has the
  Romanian letters; ``GET /v1/web/households/{id}/annex-691.pdf``).

The two carry the same facts: ``tests/test_annex_functional.py`` renders the PDF, reads
its text back (pypdf) and finds every value of the JSON in it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

from fpdf import FPDF

__all__ = ["FORM", "TITLE", "content", "render_pdf"]

FORM = "HG nr. 691/2015"
TITLE = "Fișa copilului cu părinți plecați la muncă în străinătate"
PARENT_LABEL = {"mother": "mama", "father": "tatăl"}


def _iso(value: object) -> str | None:
    return value.isoformat() if isinstance(value, dt.date) else None


def content(household: Mapping[str, Any], persons: Sequence[Mapping[str, Any]],
            abroad: Sequence[Mapping[str, Any]], today: dt.date | None = None
            ) -> dict[str, Any]:
    """The annex from a household's projection rows (``proj.households``,
    ``proj.persons``, ``proj.parents_abroad``): one entry per child with a parent abroad,
    each parent with country, departure, notification and the child's carer."""
    people = {p["person_id"]: p for p in persons}
    children: dict[str, dict[str, Any]] = {}
    for row in sorted(abroad, key=lambda r: (r["child_id"] or "", r["parent"] or "",
                                             r["record_id"])):
        child = people.get(row["child_id"], {})
        entry = children.setdefault(row["child_id"], {
            "person_id": row["child_id"], "first_name": child.get("first_name"),
            "last_name": child.get("last_name"), "birth_date": _iso(child.get("birth_date")),
            "parents_abroad": []})
        entry["parents_abroad"].append({
            "parent": row["parent"], "country": row["country"], "since": _iso(row["since"]),
            "notified_on": _iso(row["notified_on"]),
            "carer": {"name": row["carer_name"], "relation": row["carer_relation"],
                      "person_id": row["carer_person_id"]},
            "recorded_by": row["by"]})
    return {"form": FORM, "title": TITLE,
            "generated_on": (today or dt.date.today()).isoformat(),
            "household": {"id": household["household_id"], "county": household["county"],
                          "locality": household["locality"],
                          "address": household.get("address")},
            "children": list(children.values())}


def _font() -> str:
    return str(resources.files(__package__).joinpath("fonts/DejaVuSans.ttf"))


def render_pdf(annex: Mapping[str, Any]) -> bytes:
    """The annex as a one-or-more-page A4 PDF."""
    pdf = FPDF(format="A4")
    pdf.set_title(f"{annex['title']} ({annex['form']})")
    pdf.set_creator("Vatra")
    pdf.add_font("DejaVu", fname=_font())
    pdf.set_auto_page_break(auto=True, margin=15)
    pdf.add_page()
    width = pdf.w - pdf.l_margin - pdf.r_margin

    def line(text: str, size: float = 10, gap: float = 1.5) -> None:
        pdf.set_font("DejaVu", size=size)
        pdf.multi_cell(width, size * 0.5 + gap, text, new_x="LMARGIN", new_y="NEXT")

    h = annex["household"]
    line(f"Anexă — {annex['form']}", 9)
    line(annex["title"], 14, 3)
    line(f"Județul {h['county']}, localitatea (SIRUTA) {h['locality']}")
    line(f"Adresa gospodăriei: {h['address'] or '-'}")
    line(f"Gospodăria: {h['id']}")
    line(f"Întocmită la: {annex['generated_on']}", gap=4)
    for i, child in enumerate(annex["children"], 1):
        name = f"{child['last_name'] or ''} {child['first_name'] or ''}".strip() or "-"
        line(f"{i}. Copilul: {name}, născut(ă) la {child['birth_date'] or '-'}", 11, 2)
        for parent in child["parents_abroad"]:
            carer = parent["carer"]
            line(f"   Părintele plecat: {PARENT_LABEL.get(parent['parent'], parent['parent'])}"
                 f", în țara: {parent['country']}, din data de: {parent['since']}")
            line(f"   Notificarea serviciului public de asistență socială: "
                 f"{parent['notified_on'] or 'nu a fost făcută'}")
            line(f"   Persoana desemnată să se ocupe de copil: {carer['name']} "
                 f"({carer['relation']})", gap=3)
    line("Întocmit de: ______________________    Semnătura: ______________", gap=2)
    return bytes(pdf.output())
