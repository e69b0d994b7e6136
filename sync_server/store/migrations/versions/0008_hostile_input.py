"""Hostile input: the quarantine stores each refused input once, within quotas; signed
HTTP requests leave their nonce in the database, so a replay is refused by every
instance and after a restart.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("quarantine", sa.Column("digest", sa.LargeBinary, nullable=True))
    op.add_column("quarantine", sa.Column("size", sa.Integer, nullable=True))
    op.execute("UPDATE quarantine SET size = octet_length(body)")
    op.create_index("quarantine_digest", "quarantine", ["digest"], unique=True)
    op.create_index("quarantine_device", "quarantine", ["device_id"],
                    postgresql_include=["size"])
    op.create_table(
        "http_nonces",
        sa.Column("device_id", sa.Text, nullable=False),
        sa.Column("nonce", sa.Text, nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("device_id", "nonce"),
    )
    op.create_index("http_nonces_expires", "http_nonces", ["expires_at"])


def downgrade() -> None:
    op.drop_table("http_nonces")
    op.drop_index("quarantine_device", "quarantine")
    op.drop_index("quarantine_digest", "quarantine")
    op.drop_column("quarantine", "size")
    op.drop_column("quarantine", "digest")
