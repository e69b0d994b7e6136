"""Quarantine: refused sync data, sealed, kept for review.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "quarantine",
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
    )
    op.create_index("quarantine_household", "quarantine", ["household_id"])


def downgrade() -> None:
    op.drop_table("quarantine")
