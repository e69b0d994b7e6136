"""Every table Vatra keeps, in one place: the schema Alembic migrates and compares.

Modules take their tables from here (nothing registers a table by being imported), so
importing this module gives the whole ``metadata``. The migrations
(``sync_server/store/migrations``) create exactly these.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

metadata = sa.MetaData()


# --- The sync store: registry, change log, outbox, snapshots, data keys ------------------

households = sa.Table(
    "households", metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("locality", sa.Text, nullable=False),
    sa.Column("county", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
              server_default=sa.func.now()),
    #: the heads of its change log, kept by the statement that appends to it
    #: (sync_server/store/group_commit.py): the reconnect fast path compares them
    sa.Column("heads", postgresql.ARRAY(sa.LargeBinary), nullable=False,
              server_default="{}"),
)

#: The county directories of specialised services (conflict/directory.py): kept by
#: ``vatra directory import``, read by tablets (GET /v1/directory) and the web tier.
providers = sa.Table(
    "providers", metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("county", sa.Text, nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("address", sa.Text, nullable=False),
    sa.Column("lat", sa.Float, nullable=True),
    sa.Column("lon", sa.Float, nullable=True),
    sa.Column("phone", sa.Text, nullable=True),
    sa.Column("email", sa.Text, nullable=True),
    sa.Column("accessibility", postgresql.ARRAY(sa.Text), nullable=False),
    sa.Column("hours", sa.Text, nullable=True),
    sa.Index("providers_county_kind", "county", "kind"),
)

#: Each county directory's version (conflict.directory.version) and when it was imported.
directories = sa.Table(
    "directories", metadata,
    sa.Column("county", sa.Text, primary_key=True),
    sa.Column("version", sa.Text, nullable=False),
    sa.Column("imported_at", sa.DateTime(timezone=True), nullable=False,
              server_default=sa.func.now()),
    sa.Column("imported_by", sa.Text, nullable=True),
)

changes = sa.Table(
    "changes", metadata,
    sa.Column("household_id", sa.Text, sa.ForeignKey("households.id"), nullable=False),
    sa.Column("hash", sa.LargeBinary, nullable=False),
    sa.Column("seq", sa.BigInteger, sa.Identity(always=True), nullable=False),
    sa.Column("deps", postgresql.ARRAY(sa.LargeBinary), nullable=False),
    sa.Column("actor", sa.LargeBinary, nullable=False),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False,
              server_default=sa.func.now()),
    sa.Column("body", sa.LargeBinary, nullable=False),
    sa.Column("device_id", sa.Text, nullable=True),  # the author device (enrolled)
    sa.PrimaryKeyConstraint("household_id", "hash"),
    sa.Index("changes_household_seq", "household_id", "seq"),
)

#: One row per household whose projection is behind its change log, written by the same
#: statement (so the same transaction) as the changes. ``last_seq`` is the newest change
#: logged; ``enqueued_at`` the time the oldest unprojected one arrived (the projection
#: lag is measured from it). The projector deletes a row only if no batch wrote it since
#: the projector read it (its ``xmin``, sync_server/projection/projector.py), so a change logged
#: during a projection is never lost.
projection_outbox = sa.Table(
    "projection_outbox", metadata,
    sa.Column("household_id", sa.Text, sa.ForeignKey("households.id"), primary_key=True),
    sa.Column("last_seq", sa.BigInteger, nullable=False),
    sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=False,
              server_default=sa.func.now()),
)

snapshots = sa.Table(
    "snapshots", metadata,
    sa.Column("household_id", sa.Text, sa.ForeignKey("households.id"), primary_key=True),
    sa.Column("heads", postgresql.ARRAY(sa.LargeBinary), nullable=False),
    sa.Column("covers_seq", sa.BigInteger, nullable=False),
    sa.Column("body", sa.LargeBinary, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
              server_default=sa.func.now()),
)

household_keys = sa.Table(
    "household_keys", metadata,
    sa.Column("household_id", sa.Text, sa.ForeignKey("households.id"), primary_key=True),
    sa.Column("wrapped", sa.LargeBinary, nullable=True),  # NULL = destroyed (erased)
    sa.Column("master_version", sa.Integer, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
              server_default=sa.func.now()),
    sa.Column("destroyed_at", sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("(wrapped IS NULL) = (destroyed_at IS NOT NULL)",
                       name="household_keys_destroyed"),
)


# --- Identity: users, places, teams, devices, enrollment codes ---------------------------

users = sa.Table(
    "users", metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("role", sa.Text, nullable=False),
    sa.Column("county", sa.Text, nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
              server_default=sa.func.now()),
    sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True),  # 0010
    sa.CheckConstraint("role IN ('worker', 'supervisor', 'national', 'admin', 'ops')",
                       name="users_role"),
    sa.CheckConstraint("role <> 'supervisor' OR county IS NOT NULL",
                       name="users_supervisor_county"),
)

user_localities = sa.Table(
    "user_localities", metadata,
    sa.Column("user_id", sa.Text, sa.ForeignKey("users.id"), nullable=False),
    sa.Column("locality", sa.Text, nullable=False),
    sa.Column("county", sa.Text, nullable=False),
    sa.PrimaryKeyConstraint("user_id", "locality"),
)

household_team = sa.Table(
    "household_team", metadata,
    sa.Column("household_id", sa.Text, sa.ForeignKey("households.id"), nullable=False),
    sa.Column("user_id", sa.Text, sa.ForeignKey("users.id"), nullable=False),
    sa.PrimaryKeyConstraint("household_id", "user_id"),
    sa.Index("household_team_user", "user_id"),
)

devices = sa.Table(
    "devices", metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("user_id", sa.Text, sa.ForeignKey("users.id"), nullable=False),
    sa.Column("signing_key", sa.LargeBinary, nullable=False, unique=True),
    sa.Column("exchange_key", sa.LargeBinary, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
              server_default=sa.func.now()),
    sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
)

device_actors = sa.Table(
    "device_actors", metadata,
    sa.Column("actor_id", sa.LargeBinary, primary_key=True),
    sa.Column("device_id", sa.Text, sa.ForeignKey("devices.id"), nullable=False),
)

enrollment_codes = sa.Table(
    "enrollment_codes", metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("secret_hash", sa.LargeBinary, nullable=False),
    sa.Column("user_id", sa.Text, sa.ForeignKey("users.id"), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("failed_attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
              server_default=sa.func.now()),
)


# --- The audit log -----------------------------------------------------------------------

audit = sa.Table(
    "audit", metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
    sa.Column("chain", sa.Text, nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("household_id", sa.Text, nullable=True),
    sa.Column("user_id", sa.Text, nullable=True),
    sa.Column("device_id", sa.Text, nullable=True),
    sa.Column("detail", postgresql.JSONB, nullable=False),
    sa.Column("key_version", sa.Integer, nullable=False),
    sa.Column("prev_hash", sa.LargeBinary, nullable=False),
    sa.Column("hash", sa.LargeBinary, nullable=False),
    sa.UniqueConstraint("chain", "seq", name="audit_chain_seq"),
)

audit_heads = sa.Table(
    "audit_heads", metadata,
    sa.Column("chain", sa.Text, primary_key=True),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("hash", sa.LargeBinary, nullable=False),
)


# --- The quarantine ----------------------------------------------------------------------

quarantine = sa.Table(
    "quarantine", metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False,
              server_default=sa.func.now()),
    sa.Column("document_id", sa.Text, nullable=False),
    sa.Column("household_id", sa.Text, sa.ForeignKey("households.id"), nullable=True),
    sa.Column("device_id", sa.Text, nullable=True),
    sa.Column("user_id", sa.Text, nullable=True),
    sa.Column("code", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("key_version", sa.Integer, nullable=True),
    sa.Column("body", sa.LargeBinary, nullable=False),
    sa.Column("digest", sa.LargeBinary, nullable=True),  # unique: each input kept once
    sa.Column("size", sa.Integer, nullable=True),  # bytes of body, for the quotas
    sa.Index("quarantine_household", "household_id"),
    sa.Index("quarantine_digest", "digest", unique=True),
    sa.Index("quarantine_device", "device_id", postgresql_include=["size"]),
)


# --- Nonces of signed HTTP requests ------------------------------------------------------

http_nonces = sa.Table(
    "http_nonces", metadata,
    sa.Column("device_id", sa.Text, nullable=False),
    sa.Column("nonce", sa.Text, nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint("device_id", "nonce"),
    sa.Index("http_nonces_expires", "expires_at"),
)


# --- Projections: the web tier's schema ``proj`` (sync_server/projection) ----------

SCHEMA = "proj"

#: The database role the web tier's sessions take (``SET LOCAL ROLE``); it may only read
#: ``proj`` and only the rows its scope allows (migration 0007).
WEB_ROLE = "vatra_web"

def _scoped(name: str, *columns: Any) -> sa.Table:
    """A ``proj`` table: household id (a foreign key to the registry, so erasure finds it)
    and the locality / county the row-level security policies read."""
    return sa.Table(
        name, metadata,
        sa.Column("household_id", sa.Text, sa.ForeignKey("households.id"), nullable=False),
        sa.Column("locality", sa.Text, nullable=False),
        sa.Column("county", sa.Text, nullable=False),
        *columns, schema=SCHEMA)

proj_households = _scoped(
    "households",
    sa.Column("status", sa.Text, nullable=True),
    sa.Column("address", sa.Text, nullable=True),
    sa.Column("lat", sa.Float, nullable=True),
    sa.Column("lon", sa.Float, nullable=True),
    sa.Column("members_present", sa.Integer, nullable=False),
    sa.Column("members_total", sa.Integer, nullable=False),
    sa.Column("vulnerabilities", sa.Integer, nullable=False),
    sa.Column("services_open", sa.Integer, nullable=False),
    sa.Column("next_deadline", sa.Date, nullable=True),  # earliest open service's deadline
    sa.Column("last_assessment_id", sa.Text, nullable=True),
    sa.Column("last_assessment_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("created_by", sa.Text, nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("updated_by", sa.Text, nullable=True),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("search", sa.Text, nullable=False),  # lower-case address and member names
    sa.Column("projected_seq", sa.BigInteger, nullable=False),  # change log position
    sa.Column("case_stage", sa.Text, nullable=True),  # None: no case open
    sa.Column("case_stage_since", sa.DateTime(timezone=True), nullable=True),
    sa.Column("case_model", sa.Text, nullable=True),
    sa.Column("projected_at", sa.DateTime(timezone=True), nullable=False,
              server_default=sa.func.now()),
    sa.PrimaryKeyConstraint("household_id"),
    sa.Index("proj_households_county_locality_status", "county", "locality", "status"),
    sa.Index("proj_households_county_status", "county", "status"),
    sa.Index("proj_households_county_stage", "county", "case_stage"),
    sa.Index("proj_households_locality_stage", "locality", "case_stage"),
)

# The list's order (newest update first, ties by id), per county, per locality and for the
# nation; the scope columns and status are included, so a page's ids come from the index
# alone (the list then reads only those rows).
sa.Index("proj_households_county_updated", proj_households.c.county, proj_households.c.updated_at.desc(),
         proj_households.c.household_id, postgresql_include=["locality", "status"])

sa.Index("proj_households_locality_updated", proj_households.c.locality,
         proj_households.c.updated_at.desc(), proj_households.c.household_id,
         postgresql_include=["county", "status"])

sa.Index("proj_households_updated", proj_households.c.updated_at.desc(), proj_households.c.household_id,
         postgresql_include=["county", "locality", "status"])

proj_persons = _scoped(
    "persons",
    sa.Column("person_id", sa.Text, nullable=False),
    sa.Column("first_name", sa.Text, nullable=True),
    sa.Column("last_name", sa.Text, nullable=True),
    sa.Column("birth_date", sa.Date, nullable=True),
    sa.Column("sex", sa.Text, nullable=True),
    sa.Column("relation_to_head", sa.Text, nullable=True),
    sa.Column("presence", sa.Text, nullable=True),
    sa.PrimaryKeyConstraint("household_id", "person_id"),
    sa.Index("proj_persons_locality", "locality"),
)

#: One row per person assessed in the household's latest assessment, every answer in
#: one JSONB object (docs/projections.md says why not one row per answer).
proj_answers = _scoped(
    "answers",
    sa.Column("person_id", sa.Text, nullable=False),
    sa.Column("assessment_id", sa.Text, nullable=False),
    sa.Column("assessed_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("age_at_assessment", sa.Integer, nullable=True),
    sa.Column("answers", postgresql.JSONB, nullable=False),
    sa.PrimaryKeyConstraint("household_id", "person_id"),
    # Children assessed per locality / county (age second), and the (household, person)
    # of the members of an age the summary matches with their vulnerabilities: every
    # column a summary and the row-level security policies read is in the index, so
    # these are index-only scans that never touch the answers' JSONB.
    sa.Index("proj_answers_locality", "locality", "age_at_assessment",
             postgresql_include=["county", "household_id", "person_id"]),
    sa.Index("proj_answers_county", "county", "age_at_assessment",
             postgresql_include=["locality", "household_id", "person_id"]),
    sa.Index("proj_answers_answers", "answers", postgresql_using="gin",
             postgresql_ops={"answers": "jsonb_path_ops"}),
)

proj_assessments = _scoped(
    "assessments",
    # Every assessment's answers for one member, as recorded: the history the web tier
    # compares (proj_answers holds the answers that stand).
    sa.Column("assessment_id", sa.Text, nullable=False),
    sa.Column("person_id", sa.Text, nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("by", sa.Text, nullable=True),
    sa.Column("catalogue_version", sa.Integer, nullable=False),
    sa.Column("age_at_assessment", sa.Integer, nullable=True),
    sa.Column("answers", postgresql.JSONB, nullable=False),
    sa.PrimaryKeyConstraint("household_id", "assessment_id", "person_id"),
)

proj_vulnerabilities = _scoped(
    "vulnerabilities",
    sa.Column("vulnerability", sa.Text, nullable=False),
    sa.Column("subject", sa.Text, nullable=False),  # a person id, or "household"
    sa.Column("person_id", sa.Text, nullable=True),
    sa.Column("population", sa.Text, nullable=False),  # child | adult | person | household
    sa.Column("assessment_id", sa.Text, nullable=False),
    sa.Column("identified_on", sa.Date, nullable=True),
    sa.PrimaryKeyConstraint("household_id", "vulnerability", "subject"),
    # Counts per code of a locality / county: index-only, and already in the order of
    # the summary's grouping and its count of distinct households (no sort).
    sa.Index("proj_vulnerabilities_locality", "locality", "vulnerability", "household_id",
             postgresql_include=["county", "person_id", "population"]),
    sa.Index("proj_vulnerabilities_county", "county", "vulnerability", "household_id",
             postgresql_include=["locality", "person_id", "population"]),
)

proj_services = _scoped(
    "services",
    sa.Column("service_id", sa.Text, nullable=False),
    sa.Column("code", sa.Text, nullable=True),
    sa.Column("person_id", sa.Text, nullable=True),
    sa.Column("vulnerability", sa.Text, nullable=True),
    sa.Column("deadline", sa.Date, nullable=True),
    sa.Column("status", sa.Text, nullable=True),
    sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("delivered_by", sa.Text, nullable=True),
    sa.Column("note", sa.Text, nullable=True),
    sa.PrimaryKeyConstraint("household_id", "service_id"),
    # Overdue services by locality / county: the open ones, by deadline (index-only: the
    # other scope column is included for the row-level security policies).
    sa.Index("proj_services_open_locality", "locality", "deadline",
             postgresql_include=["county"],
             postgresql_where=sa.text("status IN ('planned', 'in_progress')")),
    sa.Index("proj_services_open_county", "county", "deadline",
             postgresql_include=["locality"],
             postgresql_where=sa.text("status IN ('planned', 'in_progress')")),
)

proj_change_requests = _scoped(
    "change_requests",
    sa.Column("request_id", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, nullable=True),
    sa.Column("payload", postgresql.JSONB, nullable=True),
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("requested_by", sa.Text, nullable=True),
    sa.Column("requested_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("status", sa.Text, nullable=True),
    sa.Column("decided_by", sa.Text, nullable=True),
    sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("decision_note", sa.Text, nullable=True),
    sa.PrimaryKeyConstraint("household_id", "request_id"),
    sa.Index("proj_change_requests_county_status", "county", "status"),
)

proj_conflicts = _scoped(
    "conflicts",
    sa.Column("conflict_id", sa.Text, nullable=False),
    sa.Column("path", postgresql.JSONB, nullable=True),
    sa.Column("values", postgresql.JSONB, nullable=True),
    sa.Column("written", postgresql.JSONB, nullable=True),
    sa.Column("detected_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("resolved_by", sa.Text, nullable=True),
    sa.Column("resolution", postgresql.JSONB, nullable=True),
    sa.PrimaryKeyConstraint("household_id", "conflict_id"),
    sa.Index("proj_conflicts_county", "county"),
)

proj_activity = _scoped(
    "activity",
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("by", sa.Text, nullable=True),
    sa.Column("kind", sa.Text, nullable=True),
    sa.Column("text", sa.Text, nullable=True),
    sa.PrimaryKeyConstraint("household_id", "position"),
)

#: A case's deadlines (conflict/case.py): when each falls due and when it was met; a
#: query decides what is overdue with its own clock (``met_at IS NULL AND due < now()``).
proj_case_deadlines = _scoped(
    "case_deadlines",
    sa.Column("code", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),  # deadline | minimum
    sa.Column("due", sa.DateTime(timezone=True), nullable=False),
    sa.Column("met_at", sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint("household_id", "code"),
    # Unmet deadlines by due time, per locality / county (the due and overdue lists)
    sa.Index("proj_case_deadlines_open_locality", "locality", "due",
             postgresql_include=["county", "code"],
             postgresql_where=sa.text("met_at IS NULL AND kind = 'deadline'")),
    sa.Index("proj_case_deadlines_open_county", "county", "due",
             postgresql_include=["locality", "code"],
             postgresql_where=sa.text("met_at IS NULL AND kind = 'deadline'")),
)

proj_visits = _scoped(
    "visits",
    sa.Column("visit_id", sa.Text, nullable=False),
    sa.Column("visited_on", sa.Date, nullable=True),
    sa.Column("place", sa.Text, nullable=True),
    sa.Column("purpose", sa.Text, nullable=True),
    sa.Column("participants", postgresql.JSONB, nullable=False),
    sa.Column("synthesis", sa.Text, nullable=True),
    sa.Column("next_visit", sa.Date, nullable=True),
    sa.Column("by", sa.Text, nullable=True),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint("household_id", "visit_id"),
)

#: Referrals of a household to the county directory's providers (issue 16, part 4).
proj_referrals = _scoped(
    "referrals",
    sa.Column("referral_id", sa.Text, nullable=False),
    sa.Column("person_id", sa.Text, nullable=True),
    sa.Column("provider_id", sa.Text, nullable=True),
    sa.Column("provider_name", sa.Text, nullable=True),
    sa.Column("provider_kind", sa.Text, nullable=True),
    sa.Column("provider_contact", sa.Text, nullable=True),
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("status", sa.Text, nullable=True),
    sa.Column("outcome", sa.Text, nullable=True),
    sa.Column("referred_on", sa.Date, nullable=True),
    sa.Column("by", sa.Text, nullable=True),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("status_by", sa.Text, nullable=True),
    sa.Column("status_at", sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint("household_id", "referral_id"),
)

#: Parents of a household's children working abroad (GD 691/2015): the annex's data.
proj_parents_abroad = _scoped(
    "parents_abroad",
    sa.Column("record_id", sa.Text, nullable=False),
    sa.Column("child_id", sa.Text, nullable=True),
    sa.Column("parent", sa.Text, nullable=True),
    sa.Column("country", sa.Text, nullable=True),
    sa.Column("since", sa.Date, nullable=True),
    sa.Column("carer_name", sa.Text, nullable=True),
    sa.Column("carer_relation", sa.Text, nullable=True),
    sa.Column("carer_person_id", sa.Text, nullable=True),
    sa.Column("notified_on", sa.Date, nullable=True),
    sa.Column("by", sa.Text, nullable=True),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint("household_id", "record_id"),
)

#: Who is on a household's team (its ``team`` map): the household list's worker filter
#: and the household card.
proj_team = _scoped(
    "team",
    sa.Column("role", sa.Text, nullable=False),
    sa.Column("user_id", sa.Text, nullable=False),
    sa.PrimaryKeyConstraint("household_id", "role"),
    sa.Index("proj_team_user", "user_id", postgresql_include=["locality", "county"]),
)

def _aggregate(name: str, keys: Sequence[sa.Column[Any]], measures: Sequence[str]) -> sa.Table:
    """A per-locality aggregate (sync_server/store/aggregates.py): the county and
    locality the row-level security policies read, more key columns, integer measures."""
    return sa.Table(
        name, metadata,
        sa.Column("county", sa.Text, nullable=False),
        sa.Column("locality", sa.Text, nullable=False),
        *keys,
        *(sa.Column(m, sa.Integer, nullable=False) for m in measures),
        sa.PrimaryKeyConstraint("county", "locality", *(k.name for k in keys)),
        schema=SCHEMA)


proj_locality_summary = _aggregate(
    "locality_summary", (), ("households", "children_assessed", "vulnerable_children"))
proj_locality_vulnerabilities = _aggregate(
    "locality_vulnerabilities", (sa.Column("vulnerability", sa.Text, nullable=False),),
    ("children", "adults", "households", "persons"))
sa.Index("proj_locality_vulnerabilities_locality", proj_locality_vulnerabilities.c.locality)
#: Open services per deadline day: a summary adds up the days before today (overdue).
proj_locality_services = _aggregate(
    "locality_services", (sa.Column("deadline", sa.Date, nullable=False),), ("services",))
sa.Index("proj_locality_services_locality", proj_locality_services.c.locality,
         proj_locality_services.c.deadline)
sa.Index("proj_locality_services_deadline", proj_locality_services.c.deadline,
         postgresql_include=["county", "locality", "services"])


#: Every projection table, in the order the projector writes them.
PROJ_TABLES: tuple[sa.Table, ...] = (
    proj_households, proj_persons, proj_answers, proj_assessments, proj_vulnerabilities,
    proj_services, proj_change_requests, proj_conflicts, proj_activity, proj_case_deadlines,
    proj_visits, proj_parents_abroad, proj_team, proj_referrals)
