"""The prediction log's tables, on the monitoring package's own metadata.

The same tables in the local SQLite file and in a shared database (the registry's, or any
SQLite or PostgreSQL database): one row per scored block with its columns as JSON, so
logging costs per request, not per row. Stream keys travel with their batch (``keys``) and
are indexed in ``prediction_keys`` only when a label names a key (``keyed`` false marks
the batches not indexed yet): the writer never writes a row per record. Schema changes
go through this package's Alembic migrations (``predlog/migrations``, version table
:data:`VERSION_TABLE`).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Dialect,
    Float,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    text,
    true,
)
from sqlalchemy.types import TypeDecorator, TypeEngine, UserDefinedType

#: Where Alembic records the prediction log's schema revision (not ``alembic_version``:
#: the database may be the registry's, whose own migrations use that one).
VERSION_TABLE = "baton_predlog_version"
#: The newest migration's revision: a store whose version table names it opens without
#: loading Alembic (tests/monitor/test_predstore.py checks it against the scripts).
HEAD_REVISION = "p0001"

metadata = MetaData()


class _RawJSON(UserDefinedType[str]):
    """PostgreSQL ``json`` bound from text that is already JSON (encoded by orjson, which
    also serialises numpy arrays): no second encoding on the way in."""

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "JSON"

    def bind_processor(self, dialect: Dialect) -> None:
        return None

    def result_processor(self, dialect: Dialect, coltype: object) -> None:
        return None


class JSONText(TypeDecorator[str]):
    """A JSON document held as its text: ``json`` on PostgreSQL (queryable with ``->``),
    ``TEXT`` on SQLite. Written and read as ``str``; select ``CAST(col AS TEXT)`` to get
    text back from PostgreSQL too."""

    impl = Text
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return _RawJSON()
        return dialect.type_descriptor(Text())


prediction_batches = Table(
    "prediction_batches", metadata,
    Column("rid", Text, primary_key=True),  # the block (or stream micro-batch) id
    Column("model", Text, nullable=False),
    Column("version", Text, nullable=False),
    Column("time", Float, nullable=False, index=True),  # Unix seconds
    Column("rows", Integer, nullable=False),
    Column("inputs", JSONText, nullable=False),  # {"column": [value per row], ...}
    Column("outputs", JSONText, nullable=False),
    Column("keys", JSONText, nullable=True),  # stream records' keys, a list; NULL: none
    Column("keyed", Boolean(create_constraint=False), nullable=False, server_default=true()),
    Index("prediction_batches_unkeyed", "time", sqlite_where=text("NOT keyed"),
          postgresql_where=text("NOT keyed")),
)

#: A stream record's key names the latest prediction made with it, per model.
prediction_keys = Table(
    "prediction_keys", metadata,
    Column("model", Text, primary_key=True),
    Column("key", Text, primary_key=True),
    Column("rid", Text, nullable=False),
    Column("idx", Integer, nullable=False),
    Column("time", Float, nullable=False, index=True),  # its batch's time (for retention)
)

prediction_labels = Table(
    "prediction_labels", metadata,
    Column("id", Text, primary_key=True),  # the prediction id, RID-IDX
    Column("model", Text, nullable=False),
    Column("version", Text, nullable=False),
    Column("rid", Text, nullable=False),
    Column("idx", Integer, nullable=False),
    Column("label", Text, nullable=False),  # JSON
    Column("time", Float, nullable=False, index=True),
    Index("prediction_labels_model_time", "model", "version", "time"),
)
