"""Households' teams in the projections (issue 16): the web tier lists a worker's
households and shows the team on the household card.

Revision ID: 0014
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

S = "proj"


def upgrade() -> None:
    op.create_table(
        "team",
        sa.Column("household_id", sa.Text, sa.ForeignKey("households.id"), nullable=False),
        sa.Column("locality", sa.Text, nullable=False),
        sa.Column("county", sa.Text, nullable=False),
        sa.Column("role", sa.Text, nullable=False),
        sa.Column("user_id", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("household_id", "role"),
        schema=S)
    op.create_index("proj_team_user", "team", ["user_id"], schema=S,
                    postgresql_include=["locality", "county"])
    name = f"{S}.team"
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
    # Every household has a team: each is queued for projection again.
    op.execute("""INSERT INTO projection_outbox (household_id, last_seq)
                  SELECT household_id, max(seq) FROM changes GROUP BY household_id
                  ON CONFLICT (household_id) DO NOTHING""")


def downgrade() -> None:
    op.drop_table("team", schema=S)
