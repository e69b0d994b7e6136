"""Case work in the projections (issue 16): each household's case stage, its case's
deadlines and its visit reports, so the web tier can list what is due or overdue
without opening a document (docs/case-management.md).

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

S = "proj"


def _scope_columns() -> list[sa.Column[str]]:
    return [sa.Column("household_id", sa.Text, sa.ForeignKey("households.id"), nullable=False),
            sa.Column("locality", sa.Text, nullable=False),
            sa.Column("county", sa.Text, nullable=False)]


def _scoped_to_web(table: str) -> None:
    """The same grant and row-level security as every proj table (0007)."""
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


def upgrade() -> None:
    op.add_column("households", sa.Column("case_stage", sa.Text, nullable=True), schema=S)
    op.add_column("households", sa.Column("case_stage_since", sa.DateTime(timezone=True),
                                          nullable=True), schema=S)
    op.add_column("households", sa.Column("case_model", sa.Text, nullable=True), schema=S)
    op.create_index("proj_households_county_stage", "households", ["county", "case_stage"],
                    schema=S)
    op.create_index("proj_households_locality_stage", "households", ["locality", "case_stage"],
                    schema=S)

    op.create_table(
        "case_deadlines", *_scope_columns(),
        sa.Column("code", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("due", sa.DateTime(timezone=True), nullable=False),
        sa.Column("met_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("household_id", "code"),
        schema=S)
    for scope, other in (("locality", "county"), ("county", "locality")):
        op.create_index(f"proj_case_deadlines_open_{scope}", "case_deadlines", [scope, "due"],
                        schema=S, postgresql_include=[other, "code"],
                        postgresql_where=sa.text("met_at IS NULL AND kind = 'deadline'"))
    _scoped_to_web("case_deadlines")

    op.create_table(
        "visits", *_scope_columns(),
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
        schema=S)
    _scoped_to_web("visits")
    # Nothing to re-project: no household registered before this version has a case or a
    # visit (the sections are made at registration, docs/decisions.md 86).


def downgrade() -> None:
    op.drop_table("visits", schema=S)
    op.drop_table("case_deadlines", schema=S)
    op.drop_index("proj_households_locality_stage", "households", schema=S)
    op.drop_index("proj_households_county_stage", "households", schema=S)
    for column in ("case_model", "case_stage_since", "case_stage"):
        op.drop_column("households", column, schema=S)
