"""Audit: the author device of every change, and the hash-chained audit log.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("changes", sa.Column("device_id", sa.Text, nullable=True))
    op.create_table(
        "audit",
        sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
        sa.Column("chain", sa.Text, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("household_id", sa.Text, nullable=True),  # no foreign key: erasure keeps it
        sa.Column("user_id", sa.Text, nullable=True),
        sa.Column("device_id", sa.Text, nullable=True),
        sa.Column("detail", postgresql.JSONB, nullable=False),
        sa.Column("key_version", sa.Integer, nullable=False),
        sa.Column("prev_hash", sa.LargeBinary, nullable=False),
        sa.Column("hash", sa.LargeBinary, nullable=False),
        sa.UniqueConstraint("chain", "seq", name="audit_chain_seq"),
    )
    op.create_table(
        "audit_heads",
        sa.Column("chain", sa.Text, primary_key=True),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("hash", sa.LargeBinary, nullable=False),
    )
    op.execute("""
        CREATE FUNCTION vatra_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'the audit log is append-only (% refused)', TG_OP;
        END $$;
    """)
    op.execute("""
        CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit
        FOR EACH ROW EXECUTE FUNCTION vatra_audit_append_only();
    """)


def downgrade() -> None:
    op.execute("DROP TRIGGER audit_append_only ON audit")
    op.execute("DROP FUNCTION vatra_audit_append_only()")
    op.drop_table("audit_heads")
    op.drop_table("audit")
    op.drop_column("changes", "device_id")
