"""Bulk dynamic operating envelopes: streamed, atomic ingest and the DERControls rendered from them.

An upload is a CSV or JSON stream of rows ``site (NMI or LFDI) x interval start x duration x import/export
limits (+ optional generation/load limits)``. It is applied in ONE transaction: every row or none. Rows
replace an earlier DOE of the same site, interval start and duration; a row of another length that overlaps
an earlier one replaces it only over its own span. The stream is parsed chunk by chunk and written in large
``executemany`` batches while the next batch is parsed, so 100k sites x 48 intervals never sits in memory
and the database is busy while Python parses.

Storage is the lean ``doe_intervals`` table (integer columns, clustered on (site, start, duration), no
rowid). The 2030.5 side (``server.store.doe``) publishes each site's non-overlapping schedule as
DERControls of the ``doe`` program, with derived ids and mRIDs.
"""

from __future__ import annotations

import asyncio
import codecs
import csv
import dataclasses
import json
import operator
import re
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from sep2 import resources as r
from sep2.base import INTEGER_RANGES
from sep2.power import MULTIPLIER_RANGE
from server.limits import InputError, check_json_tree, json_decoder
from server.store import Store, _enqueue, _insert, controls, doe_intervals, doe_uploads, programs, sites
from server.store.doe import (
    DOE_ID_BASE,
    DOE_PROGRAM,
    MAX_DURATION,
    doe_mrid,
    parse_doe_mrid,
    published_pieces,
    site_rows,
)

# The read side lives in server.store.doe; re-exported for the head-end API.
__all__ = ["DOE_ID_BASE", "DOE_PROGRAM", "MAX_DURATION", "doe_mrid", "parse_doe_mrid"]

MAX_START = 2**36 - 1  # fits the 9 hex digits of the derived mRID (year 4147)
# The largest amount an ActivePower (Int16 value x 10^multiplier) can carry, from sep2.power's own ranges.
MAX_WATTS = INTEGER_RANGES["Int16"][1] * 10 ** (MULTIPLIER_RANGE.stop - 1)
MAX_ERRORS = 50
BATCH_ROWS = 50_000
CHUNK_BYTES = 1 << 20

SITE_COLUMNS = ("nmi", "lfdi", "site")
LIMIT_COLUMNS = ("import_limit_w", "export_limit_w", "generation_limit_w", "load_limit_w")
REQUIRED_COLUMNS = ("start", "duration", "import_limit_w", "export_limit_w")
ALL_COLUMNS = (*SITE_COLUMNS, "start", "duration", *LIMIT_COLUMNS)
_LFDI = re.compile(r"^[0-9A-Fa-f]{40}$")

_ROW_KEYS = ("site_id", "start", "duration", "import_w", "export_w", "generation_w", "load_w")


def _sqlite_upsert(width: int, upload_id: int) -> str:
    """Rows carry ``width`` leading columns of _ROW_KEYS (5 without generation/load limits: fewer
    parameters to bind is measurably faster); the upload id is the same for all rows, so it is a literal."""
    names = ", ".join(_ROW_KEYS[:width])
    marks = ", ".join("?" * width)
    return f"INSERT OR REPLACE INTO doe_intervals ({names}, upload_id) VALUES ({marks}, {int(upload_id)})"


# ------------------------------------------------------------------------------------------ ingest


class IngestError(ValueError):
    """The upload was rejected and nothing changed. ``errors`` are (line or record number, message)."""

    def __init__(self, errors: list[tuple[int, str]], more: int = 0, unit: str = "line") -> None:
        self.errors = errors
        self.more = more
        self.unit = unit
        shown = "; ".join(f"{unit} {n}: {m}" for n, m in errors[:5])
        extra = len(errors) + more - min(len(errors), 5)
        super().__init__(shown + (f"; and {extra} more" if extra > 0 else ""))

    def as_json(self) -> dict[str, Any]:
        return {
            "error": str(self),
            "errors": [{self.unit: n, "message": m} for n, m in self.errors],
            "more_errors": self.more,
        }


@dataclass
class IngestResult:
    upload_id: int
    rows: int
    sites: int
    first_start: int | None
    last_end: int | None
    seconds: float

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _RowError(ValueError):
    pass


class RowParser:
    """Turns cells into ``(site_id, start, duration, import_w, export_w, generation_w, load_w)``.

    The fast path is a handful of dict lookups and ``int()`` calls; anything unusual falls back to a slow,
    careful path that produces an error naming the field.
    """

    def __init__(self, by_nmi: dict[str, int], by_lfdi: dict[str, int]) -> None:
        self.by_nmi = by_nmi
        self.by_lfdi = by_lfdi
        self.site_column = "site"
        self.index: dict[str, int] = {}
        self._starts: dict[Any, int] = {}
        self._durations: dict[Any, int] = {}

    def set_columns(self, names: list[str]) -> None:
        names = [n.strip().lower() for n in names]
        unknown = [n for n in names if n not in ALL_COLUMNS]
        if unknown:
            raise _RowError(f"{unknown[0]}: unknown column (expected {', '.join(ALL_COLUMNS)})")
        present_sites = [n for n in SITE_COLUMNS if n in names]
        if len(present_sites) != 1:
            raise _RowError("site: exactly one of the columns nmi, lfdi or site is required")
        missing = [n for n in REQUIRED_COLUMNS if n not in names]
        if missing:
            raise _RowError(f"{missing[0]}: required column is missing")
        self.site_column = present_sites[0]
        self.index = {n: i for i, n in enumerate(names)}
        self.site_map = self.by_lfdi if self.site_column == "lfdi" else self.by_nmi

    # -- slow, precise conversions

    def site(self, value: Any) -> int:
        column = self.site_column
        if value is None or str(value).strip() == "":
            raise _RowError(f"{column}: required")
        text = str(value).strip()
        if column == "lfdi" or (column == "site" and _LFDI.match(text)):
            found = self.by_lfdi.get(text.upper())
            if found is None:
                raise _RowError(f"{column}: no site with LFDI {text!r}")
            return found
        found = self.by_nmi.get(text)
        if found is None:
            raise _RowError(f"{column}: no site with NMI {text!r}")
        return found

    def start(self, value: Any) -> int:
        cached = self._starts.get(value)
        if cached is not None:
            return cached
        if isinstance(value, bool) or value is None or value == "":
            raise _RowError("start: required (Unix seconds or ISO 8601 with a UTC offset)")
        if isinstance(value, int):
            seconds = value
        else:
            text = str(value).strip()
            if re.fullmatch(r"-?\d+", text):
                seconds = int(text)
            else:
                try:
                    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
                except ValueError:
                    raise _RowError(f"start: {text!r} is neither Unix seconds nor ISO 8601") from None
                if moment.tzinfo is None:
                    raise _RowError(f"start: {text!r} has no UTC offset")
                seconds = int(moment.timestamp())
        if not 0 <= seconds <= MAX_START:
            raise _RowError(f"start: {seconds} is outside 0..{MAX_START}")
        if len(self._starts) < 100_000:
            self._starts[value] = seconds
        return seconds

    def duration(self, value: Any) -> int:
        cached = self._durations.get(value)
        if cached is not None:
            return cached
        try:
            if isinstance(value, bool) or isinstance(value, float):
                raise ValueError
            seconds = int(value)
        except (TypeError, ValueError):
            raise _RowError(f"duration: {value!r} is not a whole number of seconds") from None
        if not 0 < seconds <= MAX_DURATION:
            raise _RowError(f"duration: must be 1..{MAX_DURATION} seconds, got {seconds}")
        if len(self._durations) < 10_000:
            self._durations[value] = seconds
        return seconds

    @staticmethod
    def watts(value: Any, column: str, required: bool) -> int | None:
        if value is None or (isinstance(value, str) and value.strip() == ""):
            if required:
                raise _RowError(f"{column}: required")
            return None
        try:
            if isinstance(value, bool):
                raise ValueError
            number = float(value) if not isinstance(value, int) else value
        except (TypeError, ValueError):
            raise _RowError(f"{column}: {value!r} is not a number of watts") from None
        if number != number or number in (float("inf"), float("-inf")):
            raise _RowError(f"{column}: {value!r} is not a finite number")
        if number < 0:
            raise _RowError(f"{column}: must not be negative, got {value}")
        if number > MAX_WATTS:
            try:
                r.ActivePower.from_watts(float(number))
            except (ValueError, OverflowError) as exc:
                raise _RowError(
                    f"{column}: {value} W cannot be expressed as a 2030.5 ActivePower ({exc})"
                ) from None
            raise _RowError(f"{column}: {value} W is above {MAX_WATTS} W")
        return round(number)

    def slow(self, get: Any) -> tuple[Any, ...]:
        site = self.site(get(self.site_column))
        start = self.start(get("start"))
        return (
            site,
            start,
            self.duration(get("duration")),
            self.watts(get("import_limit_w"), "import_limit_w", True),
            self.watts(get("export_limit_w"), "export_limit_w", True),
            self.watts(get("generation_limit_w"), "generation_limit_w", False),
            self.watts(get("load_limit_w"), "load_limit_w", False),
        )


class _Sink:
    """Collects parsed rows and writes them in batches inside the open transaction."""

    def __init__(self, conn: AsyncConnection, upload_id: int, batch_rows: int) -> None:
        self.conn = conn
        self.upload_id = upload_id
        self.batch_rows = batch_rows
        self.batch: list[tuple[Any, ...]] = []
        self.pending: asyncio.Task[Any] | None = None
        self.rows = 0
        self.sites: set[int] = set()
        self.first_start: int | None = None
        self.last_end: int | None = None
        self.errors: list[tuple[int, str]] = []
        self.more_errors = 0
        self.driver: Any = None

    async def open(self) -> None:
        if self.conn.dialect.name == "sqlite":
            raw = await self.conn.get_raw_connection()
            self.driver = raw.driver_connection  # the aiosqlite connection under this transaction
            await self.driver.execute("PRAGMA cache_size=-262144")

    async def close(self) -> None:
        if self.pending is not None:
            try:
                await self.pending
            finally:
                self.pending = None
        if self.driver is not None:
            await self.driver.execute("PRAGMA cache_size=-2000")

    def error(self, number: int, message: str) -> None:
        if len(self.errors) < MAX_ERRORS:
            self.errors.append((number, message))
        else:
            self.more_errors += 1
        self.batch = []

    async def add_many(self, rows: list[tuple[Any, ...]]) -> None:
        if self.errors:
            return
        self.batch.extend(rows)
        if len(self.batch) >= self.batch_rows:
            await self.flush()

    async def flush(self) -> None:
        if self.errors or not self.batch:
            self.batch = []
            return
        rows, self.batch = self.batch, []
        self.rows += len(rows)
        if self.pending is not None:
            await self.pending
        width = len(rows[0])
        if self.driver is not None:
            sql = _sqlite_upsert(width, self.upload_id)
            self.pending = asyncio.ensure_future(self.driver.executemany(sql, rows))
        else:
            stmt = _insert(self.conn, doe_intervals)
            stmt = stmt.on_conflict_do_update(
                index_elements=["site_id", "start", "duration"],
                set_={k: stmt.excluded[k] for k in (*_ROW_KEYS[3:], "upload_id")},
            )
            await self.conn.execute(
                stmt,
                [
                    {**dict(zip(_ROW_KEYS, row, strict=False)), "upload_id": self.upload_id}
                    | ({} if width == 7 else {"generation_w": None, "load_w": None})
                    for row in rows
                ],
            )


async def _text_pieces(chunks: AsyncIterable[bytes]) -> AsyncIterator[str]:
    """Decoded text in pieces that end on a line boundary (the last piece may not)."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    pending = ""
    async for chunk in chunks:
        try:
            text = pending + decoder.decode(chunk)
        except UnicodeDecodeError as exc:
            raise IngestError([(0, f"body: not UTF-8 ({exc.reason})")]) from None
        cut = text.rfind("\n")
        if cut < 0:
            pending = text
            continue
        pending = text[cut + 1 :]
        yield text[: cut + 1]
    pending += decoder.decode(b"", final=True)
    if pending:
        yield pending


async def _parse_csv(chunks: AsyncIterable[bytes], parser: RowParser, sink: _Sink) -> None:
    """CSV with a header row. The hot loop does only dict lookups, two ``int()`` calls and range checks per
    row (about 1.5 us); anything else takes the careful path that names the field."""
    line = 0  # number of the last line consumed
    header: list[str] | None = None
    index: dict[str, int] = {}
    extended = False
    i_site = i_start = i_duration = i_imp = i_exp = 0
    i_gen = i_load = -1
    site_map: dict[str, int] = {}
    starts = parser._starts
    durations = parser._durations
    split = operator.methodcaller("split", ",")
    async for text in _text_pieces(chunks):
        lines = text.splitlines()
        base = line + 1
        line += len(lines)
        if header is None:
            while lines and not lines[0].strip():
                lines.pop(0)
                base += 1
            if not lines:
                continue
            header = next(csv.reader([lines.pop(0)]))
            try:
                parser.set_columns(header)
            except _RowError as exc:
                raise IngestError([(base, str(exc))]) from None
            base += 1
            index = parser.index
            i_site, i_start, i_duration = index[parser.site_column], index["start"], index["duration"]
            i_imp, i_exp = index["import_limit_w"], index["export_limit_w"]
            i_gen, i_load = index.get("generation_limit_w", -1), index.get("load_limit_w", -1)
            extended = i_gen >= 0 or i_load >= 0
            site_map = parser.site_map
        cells_of = csv.reader(lines) if '"' in text else map(split, lines)
        rows: list[tuple[Any, ...]] = []
        append = rows.append
        for number, cells in enumerate(cells_of, base):
            try:
                imp = int(cells[i_imp])
                exp = int(cells[i_exp])
                if not (0 <= imp <= MAX_WATTS and 0 <= exp <= MAX_WATTS):
                    raise ValueError
                if extended:
                    gen = int(cells[i_gen]) if i_gen >= 0 and cells[i_gen] else None
                    load = int(cells[i_load]) if i_load >= 0 and cells[i_load] else None
                    if (gen is not None and not 0 <= gen <= MAX_WATTS) or (
                        load is not None and not 0 <= load <= MAX_WATTS
                    ):
                        raise ValueError
                    append(
                        (
                            site_map[cells[i_site]],
                            starts[cells[i_start]],
                            durations[cells[i_duration]],
                            imp,
                            exp,
                            gen,
                            load,
                        )
                    )
                else:
                    append(
                        (
                            site_map[cells[i_site]],
                            starts[cells[i_start]],
                            durations[cells[i_duration]],
                            imp,
                            exp,
                        )
                    )
            except (KeyError, ValueError, IndexError):
                if not any(c.strip() for c in cells):
                    continue  # a blank line
                cells_by_name = {name: cells[i] if i < len(cells) else None for name, i in index.items()}
                try:
                    append(parser.slow(cells_by_name.get)[: 7 if extended else 5])
                except _RowError as exc:
                    sink.error(number, str(exc))
        await _account(sink, rows)
    if header is None:
        raise IngestError([(max(line, 1), "header: the upload is empty (no CSV header row)")])


async def _parse_json(chunks: AsyncIterable[bytes], parser: RowParser, sink: _Sink) -> None:
    """A JSON array of objects, or JSON Lines; parsed record by record with ``raw_decode``."""
    decoder = json_decoder()  # bounded numbers (server.limits)
    parser.site_column = ""
    buffer = ""
    record = 0
    opened = closed = False
    max_record_chars = 1 << 20

    def set_site_column(obj: dict[str, Any]) -> None:
        names = [n for n in SITE_COLUMNS if n in obj]
        if len(names) != 1:
            raise _RowError("site: exactly one of nmi, lfdi or site is required")
        parser.site_column = names[0]

    async def texts() -> AsyncIterator[tuple[str, bool]]:
        async for text in _text_pieces(chunks):
            yield text, False
        yield "", True

    async for text, final in texts():
        buffer += text
        pos = 0
        rows: list[tuple[Any, ...]] = []
        while True:
            while pos < len(buffer) and buffer[pos] in " \t\r\n,":
                pos += 1
            if pos >= len(buffer):
                break
            char = buffer[pos]
            if closed:
                raise IngestError([(record, "body: data after the closing ']'")], unit="record")
            if char == "[" and not opened and record == 0:
                opened = True
                pos += 1
                continue
            if char == "]" and opened:
                closed = True
                pos += 1
                continue
            try:
                obj, end = decoder.raw_decode(buffer, pos)
            except json.JSONDecodeError as exc:
                if not final and len(buffer) - pos < max_record_chars:
                    break  # probably cut mid-record: read more
                raise IngestError(
                    [(record + 1, f"body: invalid JSON ({exc.msg})")], sink.more_errors, unit="record"
                ) from None
            except (ValueError, RecursionError) as exc:  # a number over the limits, or absurd nesting
                problem = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]
                raise IngestError(
                    [(record + 1, f"body: invalid JSON ({problem})")], sink.more_errors, unit="record"
                ) from None
            pos = end
            record += 1
            try:
                if not isinstance(obj, dict):
                    raise _RowError("record: must be a JSON object")
                try:
                    check_json_tree(obj, 2, "record")
                except InputError as exc:
                    raise _RowError(exc.detail) from None
                unknown = [k for k in obj if k not in ALL_COLUMNS]
                if unknown:
                    raise _RowError(f"{unknown[0]}: unknown field (expected {', '.join(ALL_COLUMNS)})")
                if not parser.site_column or parser.site_column not in obj:
                    set_site_column(obj)
                rows.append(parser.slow(obj.get))
            except _RowError as exc:
                sink.error(record, str(exc))
        buffer = buffer[pos:]
        await _account(sink, rows)
    if opened and not closed:
        raise IngestError([(record, "body: the JSON array is not closed")], unit="record")


async def _account(sink: _Sink, rows: list[tuple[Any, ...]]) -> None:
    """Track sites and the time span (C-level passes over the batch), then hand the rows to the sink."""
    if not rows or sink.errors:
        return
    sink.sites.update(map(_first, rows))
    first = min(map(_second, rows))
    last = max(map(operator.add, map(_second, rows), map(_third, rows)))
    if sink.first_start is None or first < sink.first_start:
        sink.first_start = first
    if sink.last_end is None or last > sink.last_end:
        sink.last_end = last
    await sink.add_many(rows)


_first, _second, _third = operator.itemgetter(0), operator.itemgetter(1), operator.itemgetter(2)


async def site_maps(store: Store) -> tuple[dict[str, int], dict[str, int]]:
    async with store.read() as conn:
        rows = (await conn.execute(sa.select(sites.c.id, sites.c.lfdi, sites.c.nmi))).all()
    return {row.nmi: row.id for row in rows if row.nmi}, {row.lfdi: row.id for row in rows}


async def ingest(
    store: Store,
    chunks: AsyncIterable[bytes],
    *,
    fmt: str,
    actor: str,
    reason: str | None = None,
    batch_rows: int = BATCH_ROWS,
    on_progress: Any = None,
) -> IngestResult:
    """Apply one DOE upload atomically. Raises IngestError (nothing changed) when any row is bad."""
    if fmt not in ("csv", "json"):
        raise IngestError([(0, f"format: {fmt!r} is not csv or json")])
    started = time.perf_counter()
    by_nmi, by_lfdi = await site_maps(store)
    parser = RowParser(by_nmi, by_lfdi)
    now = store.clock()
    unit = "line" if fmt == "csv" else "record"
    async with store.write() as conn:
        program_id = (
            await conn.execute(sa.select(programs.c.id).where(programs.c.key == DOE_PROGRAM))
        ).scalar_one_or_none()
        if program_id is None:
            raise IngestError([(0, f"program: there is no {DOE_PROGRAM!r} program")])
        upload_id = (
            await conn.execute(
                doe_uploads.insert().values(at=now, actor=actor, rows=0, sites=0, reason=reason)
            )
        ).inserted_primary_key[0]
        sink = _Sink(conn, upload_id, batch_rows)
        await sink.open()
        try:
            if fmt == "csv":
                await _parse_csv(chunks, parser, sink)
            else:
                await _parse_json(chunks, parser, sink)
            await sink.flush()
        except IngestError as exc:
            exc.errors = (sink.errors + exc.errors)[:MAX_ERRORS]
            exc.unit = unit
            await _abandon(sink)
            raise IngestError(exc.errors, sink.more_errors, unit) from None
        except BaseException:
            await _abandon(sink)
            raise
        await sink.close()
        if sink.errors:
            raise IngestError(sink.errors, sink.more_errors, unit)
        if sink.rows == 0:
            raise IngestError([(0, "body: the upload has no rows")], unit=unit)
        await conn.execute(
            doe_uploads.update()
            .where(doe_uploads.c.id == upload_id)
            .values(
                rows=sink.rows, sites=len(sink.sites), first_start=sink.first_start, last_end=sink.last_end
            )
        )
        await _split_site_controls(store, conn, program_id, upload_id, sink, now)
        affected = sorted(sink.sites)
        for i in range(0, len(affected), 5000):
            await _enqueue(
                conn, now, kinds=("derc", "actderc"), program_id=program_id, site_ids=affected[i : i + 5000]
            )
        await store.admin._audit(
            conn,
            actor,
            "doe.upload",
            f"{len(sink.sites)} sites",
            reason,
            upload=upload_id,
            rows=sink.rows,
            first_start=sink.first_start,
            last_end=sink.last_end,
        )
        if on_progress is not None:
            on_progress(sink.rows)
    return IngestResult(
        upload_id=upload_id,
        rows=sink.rows,
        sites=len(sink.sites),
        first_start=sink.first_start,
        last_end=sink.last_end,
        seconds=round(time.perf_counter() - started, 3),
    )


async def _split_site_controls(
    store: Store, conn: Any, program_id: int, upload_id: int, sink: _Sink, now: int
) -> None:
    """The upload's rows replace the site controls of the ``doe`` program that they overlap, as a later
    control would (newest wins over its own span): each is superseded and what the rows leave of it is
    published as pieces (:meth:`Admin.supersede_with_pieces`). One query finds the candidates: live site
    controls of the program overlapping the upload's span (usually none)."""
    assert sink.first_start is not None and sink.last_end is not None
    candidates = (
        await conn.execute(
            sa.select(controls).where(
                controls.c.program_id == program_id,
                controls.c.target >= "s:",
                controls.c.target < "s;",
                controls.c.cancelled_at.is_(None),
                controls.c.superseded_at.is_(None),
                controls.c.start < sink.last_end,
                controls.c.start + controls.c.duration > max(sink.first_start, now),
            )
        )
    ).all()
    for row in candidates:
        site_id = int(row.target[2:])
        if site_id not in sink.sites:
            continue
        end = row.start + row.duration
        cuts = (
            await conn.execute(
                sa.select(doe_intervals.c.start, doe_intervals.c.duration).where(
                    doe_intervals.c.site_id == site_id,
                    doe_intervals.c.upload_id == upload_id,
                    doe_intervals.c.start > row.start - MAX_DURATION,
                    doe_intervals.c.start < end,
                    doe_intervals.c.start + doe_intervals.c.duration > row.start,
                )
            )
        ).all()
        if cuts:
            await store.admin.supersede_with_pieces(conn, row, [(a, a + d) for a, d in cuts], now)


async def _abandon(sink: _Sink) -> None:
    """Wait for an in-flight batch before the transaction rolls back."""
    try:
        await sink.close()
    except Exception:
        pass


async def iterate(data: Iterable[bytes]) -> AsyncIterator[bytes]:
    """An in-memory or file iterable as the async chunk stream ``ingest`` reads (tests, benchmarks)."""
    for chunk in data:
        yield chunk


async def site_intervals(
    store: Store, site_id: int, *, since: int | None = None, limit: int = 500
) -> list[dict[str, Any]]:
    """The site's published DOE schedule: non-overlapping pieces, each with the upload and the uploaded
    row that set it (provenance)."""
    async with store.read() as conn:
        rows = await site_rows(conn, site_id, since if since is not None else -MAX_DURATION)
    pieces = [(p, v) for p, v in published_pieces(rows) if since is None or p.end > since][:limit]
    return [
        {
            "start": p.start,
            "duration": p.end - p.start,
            "import_limit_w": p.item.import_w,
            "export_limit_w": p.item.export_w,
            "generation_limit_w": p.item.generation_w,
            "load_limit_w": p.item.load_w,
            "mrid": doe_mrid(store.pen, site_id, p.start, v),
            "upload": p.item.upload_id,
            "row_start": p.item.start,
            "row_duration": p.item.duration,
        }
        for p, v in pieces
    ]
