"""Identity: users, roles, places, household teams, devices, enrollment codes.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("role", sa.Text, nullable=False),
        sa.Column("county", sa.Text, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
        sa.CheckConstraint("role IN ('worker', 'supervisor', 'national', 'admin', 'ops')",
                           name="users_role"),
        sa.CheckConstraint("role <> 'supervisor' OR county IS NOT NULL",
                           name="users_supervisor_county"),
    )
    op.create_table(
        "user_localities",
        sa.Column("user_id", sa.Text, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("locality", sa.Text, nullable=False),
        sa.Column("county", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("user_id", "locality"),
    )
    op.create_table(
        "household_team",
        sa.Column("household_id", sa.Text, sa.ForeignKey("households.id"), nullable=False),
        sa.Column("user_id", sa.Text, sa.ForeignKey("users.id"), nullable=False),
        sa.PrimaryKeyConstraint("household_id", "user_id"),
    )
    op.create_index("household_team_user", "household_team", ["user_id"])
    op.create_table(
        "devices",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("user_id", sa.Text, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("signing_key", sa.LargeBinary, nullable=False, unique=True),
        sa.Column("exchange_key", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_table(
        "device_actors",
        sa.Column("actor_id", sa.LargeBinary, primary_key=True),
        sa.Column("device_id", sa.Text, sa.ForeignKey("devices.id"), nullable=False),
    )
    op.create_table(
        "enrollment_codes",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("secret_hash", sa.LargeBinary, nullable=False),
        sa.Column("user_id", sa.Text, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("failed_attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
    )


def downgrade() -> None:
    for table in ("enrollment_codes", "device_actors", "devices", "household_team",
                  "user_localities", "users"):
        op.drop_table(table)
