"""Stream keys, indexed lazily: a batch's keys travel with it (``prediction_batches.keys``)
and are copied into ``prediction_keys`` only when a label names a key, all the batches
logged since the previous time at once, oldest first, so that a key names its latest
prediction. The writer never writes a row per record."""

from __future__ import annotations

from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from baton.monitor.predlog.tables import prediction_batches as B
from baton.monitor.predlog.tables import prediction_keys as K

#: Batches indexed per round trip (each may hold up to 1,024 keys).
_BATCHES = 200


def upsert(engine: sa.Engine, table: sa.Table) -> postgresql.Insert | sqlite.Insert:
    """The dialect's ``INSERT`` that takes ``ON CONFLICT`` (SQLite and PostgreSQL)."""
    if engine.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def index_keys(engine: sa.Engine, conn: sa.Connection) -> None:
    """Index the keys of every batch not indexed yet (inside the caller's transaction).
    A key already indexed moves only to a prediction at least as recent: a batch that an
    engine wrote late does not take a key back from a newer one."""
    unkeyed = sa.select(B.c.rid, B.c.model, B.c.time, sa.cast(B.c["keys"], sa.Text)) \
        .where(sa.not_(B.c.keyed)).order_by(B.c.time, B.c.rid)
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    rids: list[str] = []
    for rid, model, when, keys in conn.execute(unkeyed):
        rids.append(rid)
        for idx, key in enumerate(orjson.loads(keys) if keys else ()):
            if key is not None:
                latest[(model, key)] = {"model": model, "key": key, "rid": rid, "idx": idx,
                                        "time": when}
    rows = list(latest.values())
    for i in range(0, len(rows), 500):
        stmt = upsert(engine, K).values(rows[i:i + 500])
        conn.execute(stmt.on_conflict_do_update(
            index_elements=["model", "key"],
            set_={"rid": stmt.excluded.rid, "idx": stmt.excluded.idx,
                  "time": stmt.excluded.time},
            where=K.c.time <= stmt.excluded.time))
    for i in range(0, len(rids), _BATCHES):
        conn.execute(sa.update(B).where(B.c.rid.in_(rids[i:i + _BATCHES]))
                     .values(keyed=True))
