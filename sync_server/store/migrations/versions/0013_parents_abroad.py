"""Parents working abroad in the projections (issue 16, GD 691/2015): the data of the
annex the local public social assistance service files for their children.

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

S = "proj"


def upgrade() -> None:
    op.create_table(
        "parents_abroad",
        sa.Column("household_id", sa.Text, sa.ForeignKey("households.id"), nullable=False),
        sa.Column("locality", sa.Text, nullable=False),
        sa.Column("county", sa.Text, nullable=False),
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
        schema=S)
    name = f"{S}.parents_abroad"
    # The same grant and row-level security as every proj table (0007).
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
    # Nothing to re-project: no household registered before this version has the section.


def downgrade() -> None:
    op.drop_table("parents_abroad", schema=S)
