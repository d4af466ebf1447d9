"""The database engine: SQLite pragmas, PostgreSQL pool, alembic migrations, dialect inserts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

SQLITE_BUSY_TIMEOUT_MS = 10_000


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")  # committed means on disk before we acknowledge
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_MS)}")
    cursor.close()


def make_engine(url: str) -> AsyncEngine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(url, pool_size=10, max_overflow=20)


_MIGRATION_LOCK_KEY = 0x6465726C696E6B  # "derlink": the PostgreSQL advisory lock serialising migrations


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to the newest alembic revision (shipped in ``server/migrations``)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent.parent / "migrations"))

    def upgrade(sync_connection: Any) -> bool:
        from alembic.migration import MigrationContext

        def revision() -> str | None:
            return MigrationContext.configure(sync_connection).get_current_revision()

        before = revision()
        cfg.attributes["connection"] = sync_connection
        command.upgrade(cfg, "head")
        return revision() != before

    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Server processes started together on one database: the first migrates, the others wait
            # here (lock held until this transaction commits) and then find the schema at head.
            await conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
        if await conn.run_sync(upgrade) and conn.dialect.name == "postgresql":
            # A migration may rewrite what documents are built from: servers running on this database
            # (`derlink server migrate` beside them) drop everything they cached, at this commit.
            from server.store.versions import CHANNEL, announcements

            for payload in announcements(None, "migrate"):
                await conn.execute(sa.text("SELECT pg_notify(:c, :p)"), {"c": CHANNEL, "p": payload})


def _insert(conn: AsyncConnection, table: sa.Table) -> Any:
    """A dialect insert supporting ON CONFLICT (SQLite and PostgreSQL share the syntax)."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table)
