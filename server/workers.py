"""Several server processes on one PostgreSQL database and one port (``workers = N``).

The first process binds the 2030.5 port with SO_REUSEPORT and starts N-1 more that bind the same port
(the kernel spreads connections over them); the head-end and admin listeners run in the first only.
Each process keeps its response cache: what a commit changed (its tokens, ``server.store.versions``) is
published on the PostgreSQL channel ``derlink_versions`` with NOTIFY after the commit, and every other
process moves the same tokens on when it hears it (LISTEN), so a document cached anywhere is dropped
within the time a notification takes to arrive. Notification delivery needs nothing more: every process
runs a sender and outbox rows are claimed by compare-and-set (``server.store.pubsub``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Iterable
from typing import Any

from server.store.versions import Token, Versions

log = logging.getLogger("derlink.server.workers")

CHANNEL = "derlink_versions"
MAX_PAYLOAD = 7000  # bytes; PostgreSQL refuses NOTIFY payloads of 8000 and more


def asyncpg_dsn(database_url: str) -> str:
    """The SQLAlchemy URL (``postgresql+asyncpg://...``) as a DSN for asyncpg itself."""
    return "postgresql://" + database_url.split("://", 1)[1]


def payloads(tokens: list[Token] | None, origin: int) -> list[str]:
    """NOTIFY payloads for one commit: ``{"o": pid, "t": [[kind, key], ...]}``, or ``"t": null`` for
    everything (also when the tokens would not fit in one payload)."""
    if tokens is not None:
        text = json.dumps({"o": origin, "t": [list(t) for t in tokens]}, separators=(",", ":"))
        if len(text.encode()) <= MAX_PAYLOAD:
            return [text]
    return [json.dumps({"o": origin, "t": None})]


class VersionBus:
    """Publishes this process's commits and applies the other processes' (see the module docstring)."""

    def __init__(self, versions: Versions, database_url: str) -> None:
        self.versions = versions
        self.dsn = asyncpg_dsn(database_url)
        self.pid = os.getpid()
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._listener: Any = None
        self.applied = 0  # commits of other processes applied here

    async def start(self) -> None:
        await self._listen()
        self.versions.on_bump = self._published
        self._tasks.append(asyncio.create_task(self._publish_forever(), name="derlink-version-bus"))

    async def _listen(self) -> None:
        import asyncpg

        self._listener = await asyncpg.connect(self.dsn)
        await self._listener.add_listener(CHANNEL, self._heard)
        self._listener.add_termination_listener(self._lost)

    def _lost(self, _conn: Any) -> None:
        """The listening connection dropped: what was missed is unknown, so nothing cached is trusted."""
        if self.versions.on_bump is None:
            return  # stopping
        log.warning("lost the change channel to the other server processes; reconnecting")
        self.versions.bump(None, local=False)
        self._tasks.append(asyncio.create_task(self._relisten(), name="derlink-version-bus-listen"))

    async def _relisten(self) -> None:
        while True:
            try:
                await self._listen()
            except Exception:  # the database is restarting or unreachable: keep trying
                await asyncio.sleep(1.0)
                continue
            self.versions.bump(None, local=False)  # changes made while it was away
            return

    async def stop(self) -> None:
        self.versions.on_bump = None
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._listener is not None:
            await self._listener.close()

    def _published(self, tokens: Iterable[Token] | None) -> None:
        for payload in payloads(None if tokens is None else list(tokens), self.pid):
            self._queue.put_nowait(payload)

    async def _publish_forever(self) -> None:
        import asyncpg

        conn = None
        try:
            while True:
                payload = await self._queue.get()
                while True:
                    try:
                        if conn is None:
                            conn = await asyncpg.connect(self.dsn)
                        await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, payload)
                        break
                    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                        log.exception("could not publish a change to the other server processes; retrying")
                        conn = None
                        await asyncio.sleep(1.0)
        finally:
            if conn is not None:
                await conn.close()

    def _heard(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        message = json.loads(payload)
        if message.get("o") == self.pid:
            return
        tokens = message.get("t")
        self.versions.bump(None if tokens is None else [(t[0], t[1]) for t in tokens], local=False)
        self.applied += 1
