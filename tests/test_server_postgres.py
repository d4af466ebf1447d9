"""The server on PostgreSQL (a throwaway cluster from tests.postgres_fixture): alembic schema == table
definitions, concurrent start-up of several processes on one database, and scale-out: two server
processes sharing one database see each other's writes at once (no per-process cache on PostgreSQL),
and deliver each outbox notification once.

The behaviour tests (walk, access matrix, bad input, resources, notifications) run on both backends
through ``@BACKENDS`` in their own modules."""

from __future__ import annotations

import asyncio

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from server.store import Store, make_engine, metadata, migrate, programs

pytest_plugins = ["tests.test_server_harness"]


async def test_migrations_match_table_definitions_on_postgresql(postgres_url):
    engine = make_engine(postgres_url)
    assert engine.dialect.name == "postgresql"
    await migrate(engine)
    await migrate(engine)  # idempotent

    def diff(sync_conn: sa.Connection) -> list:
        return compare_metadata(MigrationContext.configure(sync_conn), metadata)

    async with engine.connect() as conn:
        assert await conn.run_sync(diff) == []
        assert (await conn.exec_driver_sql("SELECT version_num FROM alembic_version")).scalar_one() == "0001"
    await engine.dispose()


async def test_concurrent_startup_on_one_empty_database(postgres_url):
    """Several server processes started together on an empty database: one migrates, the others wait
    for it; the standard programs exist once."""

    async def start() -> Store:
        store = await Store.open(postgres_url)
        await store.admin.ensure_standard_programs()
        return store

    stores = await asyncio.gather(*(start() for _ in range(4)))
    try:
        async with stores[0].read() as conn:
            keys = sorted((await conn.execute(sa.select(programs.c.key))).scalars())
        assert keys == ["default", "doe", "emergency"]
    finally:
        await asyncio.gather(*(s.close() for s in stores))
