"""Prepared reads for the hot 2030.5 GETs: Core statements built once, executed without per-call compiling.

A :class:`Query` is a Core statement with named ``bindparam`` s, built once at import. :class:`FastReads`
runs it:

* on a SQLite file, on a reader connection of the stdlib driver, synchronously on the event loop: the SQL
  is compiled once by SQLAlchemy for the dialect (an ``IN`` list is expanded to its length), and a read of a
  few indexed rows takes microseconds, where the async driver took four thread hand-offs per statement and
  SQLAlchemy's execution another tens of microseconds. WAL readers never wait for the writer; each
  statement sees the last commit (autocommit, as the async reads were).
* elsewhere (PostgreSQL, an in-memory SQLite), through the async engine with the same statement, whose
  compiled form SQLAlchemy caches.

Rows keep attribute access (``row.id``) and ``_mapping``; Boolean columns come back as ``bool``.
"""

from __future__ import annotations

import sqlite3
from collections import namedtuple
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from server.store.engine import SQLITE_BUSY_TIMEOUT_MS

_POSTCOMPILE = "__[POSTCOMPILE_"


class Query:
    """A prebuilt statement; its SQLite text is compiled on first use (per length of each IN list)."""

    def __init__(self, stmt: sa.Select[Any]) -> None:
        self.stmt = stmt
        columns = list(stmt.selected_columns)
        self.names = list(stmt.selected_columns.keys())
        self.booleans = [i for i, c in enumerate(columns) if isinstance(c.type, sa.Boolean)]
        self.row = _row_class(self.names)
        self._compiled: Any = None
        self._texts: dict[tuple[int, ...], tuple[str, list[tuple[str, bool]]]] = {}

    def sqlite(self, dialect: Any, params: dict[str, Any]) -> tuple[str, list[Any]]:
        """(SQL, positional arguments) for the stdlib driver."""
        if self._compiled is None:
            self._compiled = self.stmt.compile(dialect=dialect)
        compiled = self._compiled
        expanding = [name for name in compiled.positiontup if f"{_POSTCOMPILE}{name}]" in compiled.string]
        lengths = tuple(len(params[name]) for name in expanding)
        text = self._texts.get(lengths)
        if text is None:
            sql = compiled.string
            for name, n in zip(expanding, lengths, strict=True):
                sql = sql.replace(f"{_POSTCOMPILE}{name}]", ", ".join("?" * n) if n else "NULL")
            order = [(name, name in expanding) for name in compiled.positiontup]
            text = self._texts[lengths] = (sql, order)
        sql, order = text
        defaults = compiled.params
        args: list[Any] = []
        for name, expand in order:
            value = params[name] if name in params else defaults[name]
            if expand:
                args.extend(value)
            else:
                args.append(value)
        return sql, args

    def convert(self, raw: tuple[Any, ...]) -> Any:
        if self.booleans:
            values = list(raw)
            for i in self.booleans:
                if values[i] is not None:
                    values[i] = bool(values[i])
            raw = tuple(values)
        return self.row._make(raw)


def _row_class(names: Iterable[str]) -> type:
    base = namedtuple("FastRow", list(names), rename=True)  # type: ignore[misc]

    class FastRow(base):  # type: ignore[valid-type,misc]
        __slots__ = ()

        @property
        def _mapping(self) -> dict[str, Any]:
            return self._asdict()

    return FastRow


class FastReads:
    """Runs :class:`Query` objects for a store (see the module docstring)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.dialect = engine.dialect
        url = engine.url
        database = url.database or ""
        self.path = (
            database
            if url.get_backend_name() == "sqlite"
            and database not in ("", ":memory:")
            and "mode=memory" not in str(url)
            else None
        )
        self._conn: sqlite3.Connection | None = None

    def _reader(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_MS)}")
            conn.execute("PRAGMA query_only=1")
            self._conn = conn
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[Reads]:
        """Reads sharing one connection (PostgreSQL); on SQLite the shared reader."""
        if self.path is not None:
            yield _SqliteReads(self)
            return
        async with self.engine.connect() as conn:
            yield _EngineReads(conn)

    async def all(self, query: Query, **params: Any) -> list[Any]:
        async with self.connect() as db:
            return await db.all(query, **params)

    async def first(self, query: Query, **params: Any) -> Any:
        async with self.connect() as db:
            return await db.first(query, **params)


class Reads:
    async def all(self, query: Query, **params: Any) -> list[Any]:
        raise NotImplementedError

    async def first(self, query: Query, **params: Any) -> Any:
        rows = await self.all(query, **params)
        return rows[0] if rows else None


class _SqliteReads(Reads):
    __slots__ = ("_fast",)

    def __init__(self, fast: FastReads) -> None:
        self._fast = fast

    async def all(self, query: Query, **params: Any) -> list[Any]:
        sql, args = query.sqlite(self._fast.dialect, params)
        rows = self._fast._reader().execute(sql, args).fetchall()
        if query.booleans:
            return [query.convert(row) for row in rows]
        make = query.row._make
        return [make(row) for row in rows]


class _EngineReads(Reads):
    __slots__ = ("_conn",)

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def all(self, query: Query, **params: Any) -> list[Any]:
        return list((await self._conn.execute(query.stmt, params)).all())
