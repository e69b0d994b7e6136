"""Sync core: household registry, append-only change log, snapshots.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "households",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("locality", sa.Text, nullable=False),
        sa.Column("county", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
    )
    op.create_table(
        "changes",
        sa.Column("household_id", sa.Text, sa.ForeignKey("households.id"), nullable=False),
        sa.Column("hash", sa.LargeBinary, nullable=False),
        sa.Column("seq", sa.BigInteger, sa.Identity(always=True), nullable=False),
        sa.Column("deps", postgresql.ARRAY(sa.LargeBinary), nullable=False),
        sa.Column("actor", sa.LargeBinary, nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("household_id", "hash"),
    )
    op.create_index("changes_household_seq", "changes", ["household_id", "seq"])
    # The change log is the audit trail: the database itself refuses to rewrite it.
    op.execute("""
        CREATE FUNCTION vatra_changes_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'the change log is append-only (% refused)', TG_OP;
        END $$;
    """)
    op.execute("""
        CREATE TRIGGER changes_append_only BEFORE UPDATE OR DELETE ON changes
        FOR EACH ROW EXECUTE FUNCTION vatra_changes_append_only();
    """)
    op.create_table(
        "snapshots",
        sa.Column("household_id", sa.Text, sa.ForeignKey("households.id"), primary_key=True),
        sa.Column("heads", postgresql.ARRAY(sa.LargeBinary), nullable=False),
        sa.Column("covers_seq", sa.BigInteger, nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
    )


def downgrade() -> None:
    op.drop_table("snapshots")
    op.execute("DROP TRIGGER changes_append_only ON changes")
    op.execute("DROP FUNCTION vatra_changes_append_only()")
    op.drop_table("changes")
    op.drop_table("households")
