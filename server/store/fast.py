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
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from server.store import engine as _engine

_POSTCOMPILE = "__[POSTCOMPILE_"


class Query:
    """A prebuilt statement; its SQLite text is compiled on first use (per length of each IN list)."""

    def __init__(self, stmt: Any) -> None:
        """``stmt``: a Core statement, or a function of the dialect name returning one (a dialect insert)."""
        self._build = stmt if callable(stmt) else None
        self.stmt = stmt if self._build is None else None
        self._stmts: dict[str, Any] = {}
        probe = self.stmt if self.stmt is not None else self._build("sqlite")
        columns = list(getattr(probe, "selected_columns", None) or [])
        self.names = [c.key for c in columns] if columns else []
        if columns:
            self.names = list(probe.selected_columns.keys())
        self.booleans = [i for i, c in enumerate(columns) if isinstance(c.type, sa.Boolean)]
        self.row = _row_class(self.names) if self.names else None
        self._compiled: Any = None
        self._texts: dict[tuple[int, ...], tuple[str, list[tuple[str, bool]]]] = {}

    def statement(self, dialect: Any) -> Any:
        if self._build is None:
            return self.stmt
        stmt = self._stmts.get(dialect.name)
        if stmt is None:
            stmt = self._stmts[dialect.name] = self._build(dialect.name)
        return stmt

    def sqlite(self, dialect: Any, params: dict[str, Any]) -> tuple[str, list[Any]]:
        """(SQL, positional arguments) for the stdlib driver."""
        if self._compiled is None:
            self._compiled = self.statement(dialect).compile(dialect=dialect)
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
            conn.execute(f"PRAGMA busy_timeout={int(_engine.SQLITE_BUSY_TIMEOUT_MS)}")
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

    @property
    def sqlite_path(self) -> str | None:
        """The SQLite file, when the stdlib driver can reach the same database."""
        return self.path

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
        return list((await self._conn.execute(query.statement(self._conn.dialect), params)).all())


# ---------------------------------------------------------------------------------------- grouped writes


class Writes:
    """What a write of :meth:`server.store.base.StoreBase.grouped` may do, synchronously, inside the
    group's transaction (on SQLite in the store's writer thread; elsewhere inside ``run_sync``)."""

    def all(self, query: Query, **params: Any) -> list[Any]:
        raise NotImplementedError

    def first(self, query: Query, **params: Any) -> Any:
        rows = self.all(query, **params)
        return rows[0] if rows else None

    def insert(self, query: Query, **params: Any) -> int:
        """Run an INSERT; the new row's id."""
        raise NotImplementedError

    def execute(self, query: Query, rows: list[dict[str, Any]] | None = None, **params: Any) -> None:
        """Run a write statement, once per item of ``rows`` if given."""
        raise NotImplementedError


class SqliteWrites(Writes):
    """On the writer's stdlib connection; driver errors raised as SQLAlchemy's (the server maps those)."""

    def __init__(self, conn: sqlite3.Connection, dialect: Any) -> None:
        self.conn = conn
        self.dialect = dialect

    def all(self, query: Query, **params: Any) -> list[Any]:
        sql, args = query.sqlite(self.dialect, params)
        with _driver_errors(sql):
            rows = self.conn.execute(sql, args).fetchall()
        return [query.convert(row) for row in rows]

    def insert(self, query: Query, **params: Any) -> int:
        sql, args = query.sqlite(self.dialect, params)
        with _driver_errors(sql):
            return int(self.conn.execute(sql, args).lastrowid or 0)

    def execute(self, query: Query, rows: list[dict[str, Any]] | None = None, **params: Any) -> None:
        if rows is None:
            sql, args = query.sqlite(self.dialect, params)
            with _driver_errors(sql):
                self.conn.execute(sql, args)
            return
        if not rows:
            return
        sql, _ = query.sqlite(self.dialect, rows[0])
        with _driver_errors(sql):
            self.conn.executemany(sql, [query.sqlite(self.dialect, row)[1] for row in rows])


class EngineWrites(Writes):
    """On a SQLAlchemy connection (inside ``AsyncConnection.run_sync``)."""

    def __init__(self, conn: sa.Connection) -> None:
        self.conn = conn

    def all(self, query: Query, **params: Any) -> list[Any]:
        return list(self.conn.execute(query.statement(self.conn.dialect), params).all())

    def insert(self, query: Query, **params: Any) -> int:
        return int(self.conn.execute(query.statement(self.conn.dialect), params).inserted_primary_key[0])

    def execute(self, query: Query, rows: list[dict[str, Any]] | None = None, **params: Any) -> None:
        if rows is not None and not rows:
            return
        self.conn.execute(query.statement(self.conn.dialect), rows if rows is not None else params)


@contextmanager
def _driver_errors(sql: str) -> Iterator[None]:
    try:
        yield
    except sqlite3.IntegrityError as exc:
        raise sa.exc.IntegrityError(sql, None, exc) from exc
    except sqlite3.OperationalError as exc:
        raise sa.exc.OperationalError(sql, None, exc) from exc
    except sqlite3.DatabaseError as exc:
        raise sa.exc.DatabaseError(sql, None, exc) from exc


def open_writer(path: str) -> sqlite3.Connection:
    """The writer thread's connection: the pragmas of ``server.store.engine``, transactions explicit."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout={int(_engine.SQLITE_BUSY_TIMEOUT_MS)}")
    conn.execute("PRAGMA synchronous=FULL")  # committed means on disk before we acknowledge
    conn.execute("PRAGMA foreign_keys=ON")
    return conn
