"""Per-locality aggregates of the projection (issue 16): the web tier's summaries add up
a few rows per locality instead of counting every answer and vulnerability row
(sync_server/store/aggregates.py). Filled here from the rows already projected; the
projector keeps them from then on, in the transaction that writes the rows. Each county
has its own rows too (locality "*"), the sums of its localities'.

Revision ID: 0015
Revises: 0014
"""

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

S = "proj"
ADULT = 18  # conflict.catalogue.ADULT_AGE when this was written


def _measures(*names: str) -> list[sa.Column[int]]:
    return [sa.Column(n, sa.Integer, nullable=False) for n in names]


def upgrade() -> None:
    op.create_table(
        "locality_summary",
        sa.Column("county", sa.Text, nullable=False),
        sa.Column("locality", sa.Text, nullable=False),
        *_measures("households", "children_assessed", "vulnerable_children"),
        sa.PrimaryKeyConstraint("county", "locality"),
        schema=S)
    op.create_table(
        "locality_vulnerabilities",
        sa.Column("county", sa.Text, nullable=False),
        sa.Column("locality", sa.Text, nullable=False),
        sa.Column("vulnerability", sa.Text, nullable=False),
        *_measures("children", "adults", "households", "persons"),
        sa.PrimaryKeyConstraint("county", "locality", "vulnerability"),
        schema=S)
    op.create_index("proj_locality_vulnerabilities_locality", "locality_vulnerabilities",
                    ["locality"], schema=S)
    op.create_table(
        "locality_services",
        sa.Column("county", sa.Text, nullable=False),
        sa.Column("locality", sa.Text, nullable=False),
        sa.Column("deadline", sa.Date, nullable=False),
        *_measures("services"),
        sa.PrimaryKeyConstraint("county", "locality", "deadline"),
        schema=S)
    op.create_index("proj_locality_services_locality", "locality_services",
                    ["locality", "deadline"], schema=S)
    op.create_index("proj_locality_services_deadline", "locality_services", ["deadline"],
                    schema=S, postgresql_include=["county", "locality", "services"])
    for table in ("locality_summary", "locality_vulnerabilities", "locality_services"):
        name = f"{S}.{table}"
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
    # Filled from the rows projected so far, with the definitions of the summary.
    op.execute(f"""
        INSERT INTO {S}.locality_summary
        SELECT county, locality, sum(households), sum(children_assessed), sum(vulnerable_children)
        FROM (SELECT county, locality, 1 AS households, 0 AS children_assessed,
                     0 AS vulnerable_children
              FROM {S}.households
              UNION ALL
              SELECT a.county, a.locality, 0, 1, (EXISTS (
                  SELECT 1 FROM {S}.vulnerabilities v
                  WHERE v.household_id = a.household_id AND v.person_id = a.person_id))::int
              FROM {S}.answers a WHERE a.age_at_assessment < {ADULT}) AS each
        GROUP BY county, locality""")
    op.execute(f"""
        INSERT INTO {S}.locality_vulnerabilities
        SELECT v.county, v.locality, v.vulnerability,
               count(*) FILTER (WHERE v.population = 'child' OR (v.population = 'person'
                                AND a.age_at_assessment < {ADULT})),
               count(*) FILTER (WHERE v.population = 'adult' OR (v.population = 'person'
                                AND a.age_at_assessment >= {ADULT})),
               count(DISTINCT v.household_id), count(v.person_id)
        FROM {S}.vulnerabilities v
        LEFT JOIN {S}.answers a ON a.household_id = v.household_id AND a.person_id = v.person_id
        GROUP BY v.county, v.locality, v.vulnerability""")
    op.execute(f"""
        INSERT INTO {S}.locality_services
        SELECT county, locality, deadline, count(*) FROM {S}.services
        WHERE status IN ('planned', 'in_progress') AND deadline IS NOT NULL
        GROUP BY county, locality, deadline""")
    # Each county's own row ("*"): the sum of its localities' rows.
    op.execute(f"""
        INSERT INTO {S}.locality_summary
        SELECT county, '*', sum(households), sum(children_assessed), sum(vulnerable_children)
        FROM {S}.locality_summary GROUP BY county""")
    op.execute(f"""
        INSERT INTO {S}.locality_vulnerabilities
        SELECT county, '*', vulnerability, sum(children), sum(adults), sum(households),
               sum(persons)
        FROM {S}.locality_vulnerabilities GROUP BY county, vulnerability""")
    op.execute(f"""
        INSERT INTO {S}.locality_services
        SELECT county, '*', deadline, sum(services)
        FROM {S}.locality_services GROUP BY county, deadline""")


def downgrade() -> None:
    for table in ("locality_services", "locality_vulnerabilities", "locality_summary"):
        op.drop_table(table, schema=S)
