"""Each household's heads, kept with its change log, for the reconnect fast path: a device
returning with nothing new compares heads, not histories (docs/protocol.md, "Reconnect
fast path").

A trigger on ``changes`` keeps them, so every writer does, whatever its version: during
a rolling upgrade, instances from before this migration keep appending with their own
statement, and a column only the new statement kept would fall behind (a tablet would
then be told it holds what it does not). Existing households get the heads of the
changes they logged.

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

#: Once per statement that inserts changes: each household's new heads are its old ones
#: and the new changes, less every change a new one depends on. (A change is stored only
#: with or after its dependencies; and the old heads, the new hashes less all new deps,
#: taken over a whole log at once, are its heads: a restore that inserts a log in one
#: statement gets them right too.)
FUNCTION = """
    CREATE FUNCTION vatra_household_heads() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE households h
        SET heads = ARRAY(SELECT unnest(h.heads || g.hashes)
                          EXCEPT SELECT unnest(g.deps) ORDER BY 1)
        FROM (SELECT i.household_id, array_agg(DISTINCT i.hash) AS hashes,
                     coalesce(array_agg(d.dep) FILTER (WHERE d.dep IS NOT NULL), '{}') AS deps
              FROM inserted i LEFT JOIN LATERAL unnest(i.deps) AS d(dep) ON true
              GROUP BY i.household_id) g
        WHERE h.id = g.household_id;
        RETURN NULL;
    END $$
"""
TRIGGER = """
    CREATE TRIGGER changes_heads AFTER INSERT ON changes
    REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT
    EXECUTE FUNCTION vatra_household_heads()
"""


def upgrade() -> None:
    op.add_column("households", sa.Column("heads", postgresql.ARRAY(sa.LargeBinary),
                                          nullable=False, server_default="{}"))
    op.execute("LOCK TABLE changes IN SHARE MODE")  # no append between backfill and trigger
    op.execute(BACKFILL)
    op.execute(FUNCTION)
    op.execute(TRIGGER)


def downgrade() -> None:
    op.execute("DROP TRIGGER changes_heads ON changes")
    op.execute("DROP FUNCTION vatra_household_heads()")
    op.drop_column("households", "heads")
