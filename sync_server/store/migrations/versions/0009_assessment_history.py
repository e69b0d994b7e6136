"""Assessment history: every assessment's answers stay in the projections (issue 12), so
the web tier can compare two; ``proj.answers`` keeps the answers that stand.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

S = "proj"


def upgrade() -> None:
    op.create_table(
        "assessments",
        sa.Column("household_id", sa.Text, sa.ForeignKey("households.id"), nullable=False),
        sa.Column("locality", sa.Text, nullable=False),
        sa.Column("county", sa.Text, nullable=False),
        sa.Column("assessment_id", sa.Text, nullable=False),
        sa.Column("person_id", sa.Text, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("by", sa.Text, nullable=True),
        sa.Column("catalogue_version", sa.Integer, nullable=False),
        sa.Column("age_at_assessment", sa.Integer, nullable=True),
        sa.Column("answers", postgresql.JSONB, nullable=False),
        sa.PrimaryKeyConstraint("household_id", "assessment_id", "person_id"),
        schema=S)
    name = f"{S}.assessments"
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
    # The projections must be rebuilt to fill it, and proj.answers now holds the answers
    # that stand: every household is queued for projection again.
    op.execute("""INSERT INTO projection_outbox (household_id, last_seq)
                  SELECT household_id, max(seq) FROM changes GROUP BY household_id
                  ON CONFLICT (household_id) DO NOTHING""")


def downgrade() -> None:
    op.drop_table("assessments", schema=S)
