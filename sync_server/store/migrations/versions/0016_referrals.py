"""Referrals (issue 16, part 4): the county directories of specialised services, and
households' referrals to them in the projections.

Revision ID: 0016
Revises: 0015
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

S = "proj"


def upgrade() -> None:
    op.create_table(
        "providers",
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
        sa.Column("hours", sa.Text, nullable=True))
    op.create_index("providers_county_kind", "providers", ["county", "kind"])
    op.create_table(
        "directories",
        sa.Column("county", sa.Text, primary_key=True),
        sa.Column("version", sa.Text, nullable=False),
        sa.Column("imported_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
        sa.Column("imported_by", sa.Text, nullable=True))
    # Public information (services, their addresses and contacts): the web role reads it.
    op.execute("GRANT SELECT ON providers TO vatra_web")
    op.execute("GRANT SELECT ON directories TO vatra_web")
    op.create_table(
        "referrals",
        sa.Column("household_id", sa.Text, sa.ForeignKey("households.id"), nullable=False),
        sa.Column("locality", sa.Text, nullable=False),
        sa.Column("county", sa.Text, nullable=False),
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
        schema=S)
    name = f"{S}.referrals"
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
    # (No household has referrals yet: nothing to project again.)


def downgrade() -> None:
    op.drop_table("referrals", schema=S)
    op.drop_table("directories")
    op.drop_table("providers")
