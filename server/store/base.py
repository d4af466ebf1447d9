"""The store's engine and transactions, and the scope gate every domain goes through (``_site``)."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, Self, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from sep2 import time as sep2time
from server.errors import NotFound
from server.store.engine import make_engine, migrate
from server.store.fast import EngineWrites, FastReads, Reads, SqliteWrites, Writes, open_writer
from server.store.quotas import Quotas
from server.store.schema import (
    sites,
)
from server.store.scope import RequestScope, scoped
from server.store.versions import CHANNEL, Token, Versions, announcements

log = logging.getLogger("derlink.server.store")
T = TypeVar("T")
GROUP_MAX = 256  # writes committed together at most (bounds one transaction's length)
_Job = tuple[Callable[[Writes], Any], "asyncio.Future[Any]"]


_NOTIFY = sa.text("SELECT pg_notify(:channel, :payload)")


class StoreBase:
    """The engine, transactions and the scope gate. ``versions`` says what each committed write changed
    (see ``server.store.versions``); ``generation`` counts committed writes.

    On PostgreSQL every write transaction that may change a document (``write``, ``changing``, ``grouped``)
    also announces its tokens with ``pg_notify`` before its COMMIT. PostgreSQL delivers a NOTIFY to the
    listeners at commit, atomically with the data, and drops it with a rollback: so any process writing
    through a Store (a server, a worker, a script or admin command with no server) is heard by every server
    process's cache (``server.workers``), with no gap after the commit and no publisher to lose on a crash.
    """

    def __init__(self, engine: AsyncEngine, *, pen: int = 0, clock: Any = sep2time.now) -> None:
        self.engine = engine
        self.fast = FastReads(engine)  # prepared reads of the hot GETs (server.store.fast)
        self.quotas = Quotas()  # per-client caps (server.store.quotas); start_server sets them from config
        self.pen = pen
        self.clock = clock
        self.generation = 0
        self.versions = Versions()
        self.announces = engine.dialect.name == "postgresql"  # pg_notify in each write transaction
        self.depends = self.versions.depends
        self.touch = self.versions.touch
        self.outbox_event = asyncio.Event()
        self._pending_contacts: dict[str, int] = {}
        self._site_contact_written: dict[str, int] = {}  # lfdi -> when its sites' last_contact was written
        self._group: list[_Job] = []
        self._group_task: asyncio.Task[None] | None = None
        self._writer: ThreadPoolExecutor | None = None  # SQLite: the thread running grouped()
        self._writer_conn: sqlite3.Connection | None = None
        self.commits = 0  # transactions committed by grouped()
        self.grouped_writes = 0  # writes they held

    @classmethod
    async def open(cls, url: str, *, pen: int = 0, run_migrations: bool = True) -> Self:
        engine = make_engine(url)
        if run_migrations:
            await migrate(engine)
        return cls(engine, pen=pen)

    async def close(self) -> None:
        if self._group_task is not None:
            await self._group_task
        if self._writer is not None:
            await asyncio.get_running_loop().run_in_executor(self._writer, self._close_writer)
            self._writer.shutdown()
            self._writer = None
        try:
            await self.flush_contacts()  # last-contact times are advisory: never a reason to fail a stop
        except Exception as exc:
            log.warning("could not record the last client contact times at close: %s", exc)
        self.fast.close()
        await self.engine.dispose()

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction; commits on exit. It does not say what it changes, so every cached document
        is invalidated (writers outside the store package; the store's own use :meth:`changing`)."""
        async with self.engine.begin() as conn:
            yield conn
            await self._announce(conn, None)
        self.generation += 1
        self.versions.bump(None)
        self.outbox_event.set()

    @asynccontextmanager
    async def changing(self, *touched: Token) -> AsyncIterator[AsyncConnection]:
        """A write transaction that names what it changes, here or with ``touch`` inside; after the commit
        only documents built from those tokens are invalid (all of them if it named nothing)."""
        with self.versions.writing(touched) as changes:
            async with self.engine.begin() as conn:
                yield conn
                await self._announce(conn, changes or None)
        self.generation += 1
        self.versions.bump(changes or None)
        self.outbox_event.set()

    def _announcements(self, tokens: set[Token] | None) -> list[dict[str, str]]:
        if not self.announces:
            return []
        payloads = announcements(tokens, self.versions.origin)
        return [{"channel": CHANNEL, "payload": payload} for payload in payloads]

    async def _announce(self, conn: AsyncConnection, tokens: set[Token] | None) -> None:
        """Inside the transaction, just before its COMMIT: tell the other processes what it changes."""
        for params in self._announcements(tokens):
            await conn.execute(_NOTIFY, params)

    async def grouped(self, work: Callable[[Writes], T]) -> T:
        """Group commit: run ``work`` in one write transaction with the other writes waiting at the moment,
        and return its result only after that transaction has committed (so nothing acknowledged is lost).

        ``work`` is a plain function of :class:`server.store.fast.Writes` (prepared statements): the whole
        group runs in one call, on SQLite in the store's writer thread (one thread hand-off per group, where
        each statement of an async write took four), elsewhere inside ``run_sync``. While one group commits
        (the fsync), new writes queue up and form the next group. ``work`` names what it changes with
        ``touch``. When one write of a group fails, the group is rolled back, that write gets its error and
        the others run again in a fresh transaction: ``work`` must have no effects outside its transaction.
        """
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._group.append((work, future))
        if self._group_task is None:
            self._group_task = asyncio.create_task(self._commit_groups(), name="derlink-group-commit")
        return await future

    async def _commit_groups(self) -> None:
        try:
            while self._group:
                group = self._group[:GROUP_MAX]
                self._group = self._group[GROUP_MAX:]
                works = [work for work, _future in group]
                try:
                    if self.fast.sqlite_path is not None:
                        if self._writer is None:
                            self._writer = ThreadPoolExecutor(1, thread_name_prefix="derlink-writer")
                        loop = asyncio.get_running_loop()
                        outcomes, changes = await loop.run_in_executor(
                            self._writer, self._sqlite_group, works
                        )
                    else:
                        outcomes, changes = await self._engine_group(works)
                except Exception as exc:  # the transaction itself failed (busy, disk): none of it happened
                    for _work, future in group:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                self.generation += 1
                self.commits += 1
                self.grouped_writes += sum(1 for ok, _ in outcomes if ok)
                self.versions.bump(changes or None)
                # No outbox_event: grouped writes (readings, Responses, MUPs, DER documents) queue no
                # Notification, and waking the sender for each group cost it two outbox queries.
                for (_work, future), (ok, value) in zip(group, outcomes, strict=True):
                    if future.done():
                        continue
                    if ok:
                        future.set_result(value)
                    else:
                        future.set_exception(value)
        finally:
            self._group_task = None

    def _run_works(self, db: Writes, works: list[Any], pending: list[int]) -> tuple[dict[int, Any], Any]:
        """Run the pending works in order; stop at the first that fails: (results, (index, error) or None)."""
        results: dict[int, Any] = {}
        for i in pending:
            try:
                results[i] = works[i](db)
            except sa.exc.OperationalError:
                raise  # the database (busy, disk), not this write: the group fails
            except Exception as exc:
                return results, (i, exc)
        return results, None

    def _sqlite_group(self, works: list[Any]) -> tuple[list[tuple[bool, Any]], set[Any]]:
        """In the writer thread: the group in one transaction (BEGIN IMMEDIATE waits for other writers)."""
        if self._writer_conn is None:
            assert self.fast.sqlite_path is not None
            self._writer_conn = open_writer(self.fast.sqlite_path)
        conn = self._writer_conn
        db = SqliteWrites(conn, self.engine.dialect)
        outcomes: list[tuple[bool, Any]] = [(False, None)] * len(works)
        pending = list(range(len(works)))
        while True:
            with self.versions.writing(()) as changes:
                try:
                    conn.execute("BEGIN IMMEDIATE")
                except sqlite3.OperationalError as exc:
                    raise sa.exc.OperationalError("BEGIN IMMEDIATE", None, exc) from exc
                try:
                    results, failed = self._run_works(db, works, pending)
                    if failed is None:
                        conn.execute("COMMIT")
                except BaseException as exc:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    if isinstance(exc, sqlite3.OperationalError):
                        raise sa.exc.OperationalError("COMMIT", None, exc) from exc
                    raise
            if failed is None:
                for i, value in results.items():
                    outcomes[i] = (True, value)
                return outcomes, set(changes)
            conn.execute("ROLLBACK")
            outcomes[failed[0]] = (False, failed[1])
            pending.remove(failed[0])

    async def _engine_group(self, works: list[Any]) -> tuple[list[tuple[bool, Any]], set[Any]]:
        outcomes: list[tuple[bool, Any]] = [(False, None)] * len(works)
        pending = list(range(len(works)))
        while True:
            state: dict[str, Any] = {}

            def run(sync_conn: sa.Connection, state: dict[str, Any] = state) -> None:
                with self.versions.writing(()) as changes:
                    state["results"], state["failed"] = self._run_works(
                        EngineWrites(sync_conn), works, pending
                    )
                    state["changes"] = set(changes)
                if state["failed"] is not None:
                    raise _Redo
                for params in self._announcements(state["changes"] or None):  # committed with the group
                    sync_conn.execute(_NOTIFY, params)

            try:
                async with self.engine.begin() as conn:
                    await conn.run_sync(run)
            except _Redo:
                index, exc = state["failed"]
                outcomes[index] = (False, exc)
                pending.remove(index)
                continue
            for i, value in state["results"].items():
                outcomes[i] = (True, value)
            return outcomes, state["changes"]

    def _close_writer(self) -> None:
        if self._writer_conn is not None:
            self._writer_conn.close()
            self._writer_conn = None

    def read(self) -> Any:
        return self.engine.connect()

    async def _site(self, conn: AsyncConnection, scope: RequestScope, site_id: int) -> sa.Row:
        """The only way to a site on the 2030.5 side: filtered by the scope."""
        self.depends(("site", site_id))
        row = (
            await conn.execute(sa.select(sites).where(sites.c.id == site_id, scope.site_condition()))
        ).first()
        if row is None:
            raise NotFound(f"no EndDevice {site_id} for this client")
        return row

    async def _site_read(self, db: Reads, scope: RequestScope, site_id: int) -> Any:
        """:meth:`_site` as a prepared read (outside a write transaction)."""
        self.depends(("site", site_id))
        row = await db.first(_SITE[scope.kind], site_id=site_id, **scope.bind())
        if row is None:
            raise NotFound(f"no EndDevice {site_id} for this client")
        return row


_SITE = scoped(lambda cond: sa.select(sites).where(sites.c.id == sa.bindparam("site_id"), cond))


class _Redo(Exception):
    """One write of a group failed: roll the group back and run the others again."""
