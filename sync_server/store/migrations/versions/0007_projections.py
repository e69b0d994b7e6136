"""Projections: the ``proj`` schema the web tier reads, its role and row-level security.

Revision ID: 0007
Revises: 0006

The role ``vatra_web`` (no login) may read ``proj`` and nothing else, and sees only
the rows of the scope its session sets (docs/projections.md). Roles belong to the
whole PostgreSQL cluster, so the role is created only if missing and the downgrade
leaves it (other databases of the cluster may use it).
"""

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

S = "proj"
OPEN = sa.text("status IN ('planned', 'in_progress')")


def _scoped(name: str, *items: Any) -> None:
    op.create_table(
        name,
        sa.Column("household_id", sa.Text, sa.ForeignKey("households.id"), nullable=False),
        sa.Column("locality", sa.Text, nullable=False),
        sa.Column("county", sa.Text, nullable=False),
        *items, schema=S)


def _ts(name: str) -> sa.Column[Any]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=True)


def _text(*names: str) -> list[sa.Column[Any]]:
    return [sa.Column(n, sa.Text, nullable=True) for n in names]


TABLES = ("households", "persons", "answers", "vulnerabilities", "services",
          "change_requests", "conflicts", "activity")


def upgrade() -> None:
    op.execute(f"CREATE SCHEMA {S}")
    _scoped("households",
            *_text("status", "address"),
            sa.Column("lat", sa.Float, nullable=True), sa.Column("lon", sa.Float, nullable=True),
            sa.Column("members_present", sa.Integer, nullable=False),
            sa.Column("members_total", sa.Integer, nullable=False),
            sa.Column("vulnerabilities", sa.Integer, nullable=False),
            sa.Column("services_open", sa.Integer, nullable=False),
            sa.Column("next_deadline", sa.Date, nullable=True),
            *_text("last_assessment_id"), _ts("last_assessment_at"),
            *_text("created_by"), _ts("created_at"), *_text("updated_by"), _ts("updated_at"),
            sa.Column("search", sa.Text, nullable=False),
            sa.Column("projected_seq", sa.BigInteger, nullable=False),
            sa.Column("projected_at", sa.DateTime(timezone=True), nullable=False,
                      server_default=sa.func.now()),
            sa.PrimaryKeyConstraint("household_id"))
    op.create_index("proj_households_county_locality_status", "households",
                    ["county", "locality", "status"], schema=S)
    op.create_index("proj_households_county_status", "households", ["county", "status"], schema=S)
    op.create_index("proj_households_county_updated", "households",
                    ["county", sa.text("updated_at DESC"), "household_id"], schema=S,
                    postgresql_include=["locality", "status"])
    op.create_index("proj_households_locality_updated", "households",
                    ["locality", sa.text("updated_at DESC"), "household_id"], schema=S,
                    postgresql_include=["county", "status"])
    op.create_index("proj_households_updated", "households",
                    [sa.text("updated_at DESC"), "household_id"], schema=S,
                    postgresql_include=["county", "locality", "status"])

    _scoped("persons", sa.Column("person_id", sa.Text, nullable=False),
            *_text("first_name", "last_name"), sa.Column("birth_date", sa.Date, nullable=True),
            *_text("sex", "relation_to_head", "presence"),
            sa.PrimaryKeyConstraint("household_id", "person_id"))
    op.create_index("proj_persons_locality", "persons", ["locality"], schema=S)

    _scoped("answers", sa.Column("person_id", sa.Text, nullable=False),
            sa.Column("assessment_id", sa.Text, nullable=False), _ts("assessed_at"),
            sa.Column("age_at_assessment", sa.Integer, nullable=True),
            sa.Column("answers", postgresql.JSONB, nullable=False),
            sa.PrimaryKeyConstraint("household_id", "person_id"))
    op.create_index("proj_answers_locality", "answers", ["locality", "age_at_assessment"],
                    schema=S, postgresql_include=["county", "household_id", "person_id"])
    op.create_index("proj_answers_county", "answers", ["county", "age_at_assessment"],
                    schema=S, postgresql_include=["locality", "household_id", "person_id"])
    op.create_index("proj_answers_answers", "answers", ["answers"], schema=S,
                    postgresql_using="gin", postgresql_ops={"answers": "jsonb_path_ops"})

    _scoped("vulnerabilities",
            sa.Column("vulnerability", sa.Text, nullable=False),
            sa.Column("subject", sa.Text, nullable=False), *_text("person_id"),
            sa.Column("population", sa.Text, nullable=False),
            sa.Column("assessment_id", sa.Text, nullable=False),
            sa.Column("identified_on", sa.Date, nullable=True),
            sa.PrimaryKeyConstraint("household_id", "vulnerability", "subject"))
    op.create_index("proj_vulnerabilities_locality", "vulnerabilities",
                    ["locality", "vulnerability", "household_id"], schema=S,
                    postgresql_include=["county", "person_id", "population"])
    op.create_index("proj_vulnerabilities_county", "vulnerabilities",
                    ["county", "vulnerability", "household_id"], schema=S,
                    postgresql_include=["locality", "person_id", "population"])

    _scoped("services", sa.Column("service_id", sa.Text, nullable=False),
            *_text("code", "person_id", "vulnerability"),
            sa.Column("deadline", sa.Date, nullable=True), *_text("status"),
            _ts("delivered_at"), *_text("delivered_by", "note"),
            sa.PrimaryKeyConstraint("household_id", "service_id"))
    op.create_index("proj_services_open_locality", "services", ["locality", "deadline"],
                    schema=S, postgresql_include=["county"], postgresql_where=OPEN)
    op.create_index("proj_services_open_county", "services", ["county", "deadline"],
                    schema=S, postgresql_include=["locality"], postgresql_where=OPEN)

    _scoped("change_requests", sa.Column("request_id", sa.Text, nullable=False),
            *_text("kind"), sa.Column("payload", postgresql.JSONB, nullable=True),
            *_text("reason", "requested_by"), _ts("requested_at"),
            *_text("status", "decided_by"), _ts("decided_at"), *_text("decision_note"),
            sa.PrimaryKeyConstraint("household_id", "request_id"))
    op.create_index("proj_change_requests_county_status", "change_requests",
                    ["county", "status"], schema=S)

    _scoped("conflicts", sa.Column("conflict_id", sa.Text, nullable=False),
            sa.Column("path", postgresql.JSONB, nullable=True),
            sa.Column("values", postgresql.JSONB, nullable=True),
            sa.Column("written", postgresql.JSONB, nullable=True), _ts("detected_at"),
            *_text("resolved_by"), sa.Column("resolution", postgresql.JSONB, nullable=True),
            sa.PrimaryKeyConstraint("household_id", "conflict_id"))
    op.create_index("proj_conflicts_county", "conflicts", ["county"], schema=S)

    _scoped("activity", sa.Column("position", sa.Integer, nullable=False), _ts("at"),
            *_text("by", "kind", "text"),
            sa.PrimaryKeyConstraint("household_id", "position"))

    # The web tier's role: read-only, only proj, only its scope's rows.
    op.execute("""
        DO $$
        BEGIN
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'vatra_web') THEN
                CREATE ROLE vatra_web NOLOGIN NOINHERIT;
            END IF;
            IF NOT pg_has_role(current_user, 'vatra_web', 'MEMBER') THEN
                EXECUTE format('GRANT vatra_web TO %I', current_user);
            END IF;
        END
        $$""")
    op.execute(f"GRANT USAGE ON SCHEMA {S} TO vatra_web")
    for table in TABLES:
        name = f"{S}.{table}"
        op.execute(f"GRANT SELECT ON {name} TO vatra_web")
        op.execute(f"ALTER TABLE {name} ENABLE ROW LEVEL SECURITY")
        op.execute(f"""CREATE POLICY national ON {name} FOR SELECT TO vatra_web
            USING (current_setting('vatra.scope', true) = 'national')""")
        op.execute(f"""CREATE POLICY county ON {name} FOR SELECT TO vatra_web
            USING (current_setting('vatra.scope', true) = 'county'
                   AND county = current_setting('vatra.county', true))""")
        op.execute(f"""CREATE POLICY locality ON {name} FOR SELECT TO vatra_web
            USING (current_setting('vatra.scope', true) = 'locality'
                   AND locality = ANY (string_to_array(current_setting('vatra.localities', true), ',')))""")


def downgrade() -> None:
    op.execute(f"DROP SCHEMA {S} CASCADE")
