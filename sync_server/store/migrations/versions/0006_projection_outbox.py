"""The projection outbox: households whose projection is behind their change log.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "projection_outbox",
        sa.Column("household_id", sa.Text, sa.ForeignKey("households.id"), primary_key=True),
        sa.Column("last_seq", sa.BigInteger, nullable=False),
        sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
    )


def downgrade() -> None:
    op.drop_table("projection_outbox")
