"""The one SQLAlchemy ``MetaData`` every module's tables belong to (and Alembic compares)."""

import sqlalchemy as sa

metadata = sa.MetaData()
