"""Encryption at rest: one wrapped data key per household.

Revision ID: 0003
Revises: 0002

Change and snapshot bodies are sealed with the household's data key from this
revision on (sync_server/store/keys.py). An append-only log cannot be re-encrypted in
place, so upgrading a database that already holds households is refused.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().execute(sa.text("SELECT EXISTS (SELECT 1 FROM households)")).scalar():
        raise RuntimeError(
            "this database holds households stored before encryption at rest (revision 0003); "
            "their append-only change log cannot be encrypted in place. Start from an empty "
            "database and let the devices resync (docs/keys.md).")
    op.create_table(
        "household_keys",
        sa.Column("household_id", sa.Text, sa.ForeignKey("households.id"), primary_key=True),
        # NULL once destroyed (crypto-shredding): the household's sealed rows are unreadable.
        sa.Column("wrapped", sa.LargeBinary, nullable=True),
        sa.Column("master_version", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
        sa.Column("destroyed_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("(wrapped IS NULL) = (destroyed_at IS NOT NULL)",
                           name="household_keys_destroyed"),
    )


def downgrade() -> None:
    op.drop_table("household_keys")
