"""PostgreSQL: the store contract and its implementation, group commit and outbox, keys,
audit, quarantine, signed-request nonces, every table, the database and its migrations.
"""
