"""Server processes sharing one PostgreSQL database: the response cache told of the others' commits, and
several processes on one port (``workers = N``).

Every process that writes through a Store on PostgreSQL announces what each transaction changed (its
tokens, ``server.store.versions``) with ``pg_notify`` on the channel ``derlink_versions`` inside that
transaction (``server.store.base``), so the announcement is delivered exactly when the data is committed
and never for a rollback. That covers independently started servers, the workers of one server, and
scripts or admin commands writing with no server at all. Each server process with a cache runs a
:class:`VersionBus`, which LISTENs on the channel and moves the same tokens on, so a document cached
anywhere is dropped within the time a notification takes to arrive. While the listening connection is
down (and until it is back), nothing cached is trusted: what was missed is unknown.

``workers = N``: the first process binds the 2030.5 port with SO_REUSEPORT and starts N-1 more that bind
the same port (the kernel spreads connections over them); the head-end and admin listeners run in the first
only. Notification delivery needs nothing more: every process runs a sender and outbox rows are claimed by
compare-and-set (``server.store.pubsub``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from server.store.versions import CHANNEL, Versions, heard

log = logging.getLogger("derlink.server.workers")

HEARTBEAT_S = 5.0  # the listening connection is checked this often (a silently dead one hears nothing)


def asyncpg_dsn(database_url: str) -> str:
    """The SQLAlchemy URL (``postgresql+asyncpg://...``) as a DSN for asyncpg itself."""
    return "postgresql://" + database_url.split("://", 1)[1]


class VersionBus:
    """Applies the other processes' announced commits to this process's versions (module docstring)."""

    def __init__(self, versions: Versions, database_url: str, *, heartbeat: float = HEARTBEAT_S) -> None:
        self.versions = versions
        self.dsn = asyncpg_dsn(database_url)
        self.heartbeat = heartbeat
        self._tasks: list[asyncio.Task[None]] = []
        self._listener: Any = None
        self._stopping = False
        self.applied = 0  # announcements of other processes applied here
        self.lost = 0  # times the listening connection was lost

    @property
    def listener_pid(self) -> int | None:
        """The PostgreSQL backend process of the listening connection (None while there is none)."""
        return None if self._listener is None else self._listener.get_server_pid()

    async def start(self) -> None:
        await self._listen()
        self._tasks.append(asyncio.create_task(self._check_forever(), name="derlink-version-bus-check"))

    async def _listen(self) -> None:
        import asyncpg

        listener = await asyncpg.connect(self.dsn)
        try:
            await listener.add_listener(CHANNEL, self._heard)
        except BaseException:
            await listener.close()
            raise
        listener.add_termination_listener(self._lost)
        self._listener = listener

    def _lost(self, conn: Any) -> None:
        """The listening connection dropped: distrust everything cached until listening again."""
        if self._stopping or conn is not self._listener:
            return
        self._listener = None
        self.lost += 1
        log.warning("lost the change channel to the other server processes; reconnecting")
        self.versions.trusted = False
        self.versions.bump(None)
        self._tasks.append(asyncio.create_task(self._relisten(), name="derlink-version-bus-listen"))

    async def _relisten(self) -> None:
        while not self._stopping:
            try:
                await self._listen()
            except Exception:  # the database is restarting or unreachable: keep trying
                await asyncio.sleep(1.0)
                continue
            self.versions.bump(None)  # changes made while it was away; from here on, each is heard
            self.versions.trusted = True
            log.warning("listening again for the other server processes' changes")
            return

    async def _check_forever(self) -> None:
        """A connection cut without a reset (a network partition) looks alive: ask it something now and
        then, and drop it (which counts as lost) when it does not answer."""
        while True:
            await asyncio.sleep(self.heartbeat)
            listener = self._listener
            if listener is None:
                continue
            try:
                await asyncio.wait_for(listener.fetchval("SELECT 1"), self.heartbeat)
            except Exception:
                listener.terminate()  # calls _lost (its termination listener)

    async def stop(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._listener is not None:
            await self._listener.close()

    def _heard(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        origin, tokens = heard(payload)
        if origin == self.versions.origin:
            return  # this process's own commit, bumped here already
        self.versions.bump(tokens)
        self.applied += 1
