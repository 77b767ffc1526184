"""The hand-written alembic migrations against the ORM: the migrated schema must equal the models' metadata.

``alembic.autogenerate.compare_metadata`` lists every difference (tables, columns, types, nullability,
indexes, unique constraints, foreign keys) between a database migrated to head and ``Base.metadata``; a
model changed without a migration (or the reverse) makes this list non-empty.
"""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Column, Engine, Integer, MetaData, Table

from seechange.models import Base


def test_migrated_schema_matches_the_models(db_engine: Engine) -> None:
    with db_engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": False})
        diff = compare_metadata(ctx, Base.metadata)
    assert diff == [], "migrations and models differ:\n" + "\n".join(map(str, diff))


def test_the_comparison_sees_a_model_change(db_engine: Engine) -> None:
    """A column present in the models but not in the migrations is reported (the check above can fail)."""
    metadata = MetaData(naming_convention=Base.metadata.naming_convention)
    for table in Base.metadata.sorted_tables:
        table.to_metadata(metadata)
    Table("images", metadata, Column("not_migrated", Integer), extend_existing=True)
    with db_engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert [(d[0], d[3].name) for d in diff if d[0] == "add_column"] == [("add_column", "not_migrated")]
