"""The store's engine and transactions, and the scope gate every domain goes through (``_site``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Self

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from sep2 import time as sep2time
from server.errors import NotFound
from server.store.engine import make_engine, migrate
from server.store.schema import (
    sites,
)
from server.store.scope import RequestScope


class StoreBase:
    """Scoped data access for the 2030.5 API. ``generation`` increases on every committed write; caches
    key on it. ``admin`` is the operator API over the same engine."""

    def __init__(self, engine: AsyncEngine, *, pen: int = 0, clock: Any = sep2time.now) -> None:
        self.engine = engine
        self.pen = pen
        self.clock = clock
        self.generation = 0
        self.outbox_event = asyncio.Event()
        self._pending_contacts: dict[str, int] = {}

    @classmethod
    async def open(cls, url: str, *, pen: int = 0, run_migrations: bool = True) -> Self:
        engine = make_engine(url)
        if run_migrations:
            await migrate(engine)
        return cls(engine, pen=pen)

    async def close(self) -> None:
        await self.flush_contacts()
        await self.engine.dispose()

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction; commits on exit, then bumps the cache generation."""
        async with self.engine.begin() as conn:
            yield conn
        self.generation += 1
        self.outbox_event.set()

    def read(self) -> Any:
        return self.engine.connect()

    async def _site(self, conn: AsyncConnection, scope: RequestScope, site_id: int) -> sa.Row:
        row = (
            await conn.execute(sa.select(sites).where(sites.c.id == site_id, scope.site_condition()))
        ).first()
        if row is None:
            raise NotFound(f"no EndDevice {site_id} for this client")
        return row
