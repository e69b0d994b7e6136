"""Each household's heads, kept with its change log, for the reconnect fast path: a device
returning with nothing new compares heads, not histories (docs/protocol.md, "Reconnect
fast path"). Existing households get the heads of the changes they logged.

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

#: The heads of a log: its changes that no other change of the household depends on.
BACKFILL = """
    WITH referenced AS (
        SELECT DISTINCT household_id, unnest(deps) AS hash FROM changes
    ), heads AS (
        SELECT c.household_id, array_agg(c.hash ORDER BY c.hash) AS heads
        FROM changes c
        LEFT JOIN referenced r ON r.household_id = c.household_id AND r.hash = c.hash
        WHERE r.hash IS NULL
        GROUP BY c.household_id
    )
    UPDATE households h SET heads = heads.heads FROM heads WHERE heads.household_id = h.id
"""


def upgrade() -> None:
    op.add_column("households", sa.Column("heads", postgresql.ARRAY(sa.LargeBinary),
                                          nullable=False, server_default="{}"))
    op.execute(BACKFILL)


def downgrade() -> None:
    op.drop_column("households", "heads")
