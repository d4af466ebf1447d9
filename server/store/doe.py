"""Bulk DOE intervals (``doe_intervals``, written by ``server.headend.doe``) read as DERControls of the
``doe`` program. Rows of different lengths may overlap; what is published is the site's non-overlapping
schedule (:func:`published_pieces`: a later upload wins over its span, an earlier row is cut around it):

* a site control of the ``doe`` program created after rows of the site cuts them over its span: it stores
  a *hole* (a row with no limits, under an upload of its own, :func:`cut_for_control`), which outranks
  the older rows like any later upload and is itself never published (the control is);
* a piece's id in hrefs is ``DOE_ID_BASE + start`` (unique per site, as pieces do not overlap);
* its mRID is derived, not stored: ``D`` + site (7 hex) + start (9 hex) + version (7 hex) + PEN (8 hex),
  where the version is the newest upload that shaped the piece, so a replaced or cut interval carries a
  new mRID and clients see a new event.
"""

from __future__ import annotations

import json
from bisect import bisect_left
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from server.store.codec import build_control_base, to_jsonable
from server.store.engine import _insert
from server.store.fast import Query
from server.store.schema import doe_intervals, doe_uploads
from server.store.timeline import Piece, Window, paint

DOE_PROGRAM = "doe"
DOE_ID_BASE = 10**12  # DERControl ids at or above this are DOE intervals (id = base + start)
MAX_DURATION = 86400  # one interval at most a day; also bounds the read-side index range


# ------------------------------------------------------------------------------------------ identities


def doe_mrid(pen: int, site_id: int, start: int, upload_id: int) -> str:
    return f"D{site_id:07X}{start:09X}{upload_id:07X}{pen:08X}"


def parse_doe_mrid(mrid: str) -> tuple[int, int, int] | None:
    """(site id, start, upload id) of a derived DOE mRID, or None if it is not one."""
    if len(mrid) != 32 or mrid[0] not in "Dd":
        return None
    try:
        return int(mrid[1:8], 16), int(mrid[8:17], 16), int(mrid[17:24], 16)
    except ValueError:
        return None


# ------------------------------------------------------------------------------------------ read side


@dataclass(slots=True)
class DoeControlRow:
    """A DOE interval shaped like a ``controls`` row, so the 2030.5 renderer treats both alike."""

    id: int
    mrid: str
    program_id: int
    target: str
    start: int
    duration: int
    base: str
    creation_time: int
    randomize_start: int | None = None
    randomize_duration: int | None = None
    response_required: str | None = None
    description: str | None = "DOE"
    version: int = 0
    cancelled_at: int | None = None
    superseded_at: int | None = None


def _base_json(row: Any) -> str:
    base = build_control_base(
        import_limit_w=row.import_w,
        export_limit_w=row.export_w,
        generation_limit_w=row.generation_w,
        load_limit_w=row.load_w,
    )
    return json.dumps(to_jsonable(base), separators=(",", ":"))


def _piece_row(pen: int, program_id: int, piece: Piece[Any], version: int) -> DoeControlRow:
    row = piece.item
    return DoeControlRow(
        id=DOE_ID_BASE + piece.start,
        mrid=doe_mrid(pen, row.site_id, piece.start, version),
        program_id=program_id,
        target=f"s:{row.site_id}",
        start=piece.start,
        duration=piece.end - piece.start,
        base=_base_json(row),
        creation_time=row.at,
    )


def is_hole(row: Any) -> bool:
    """A row that only cuts older rows (a control replaced them over its span): no limit of its own."""
    return row.import_w is None and row.export_w is None and row.generation_w is None and row.load_w is None


def _rank(row: Any) -> tuple[int, int, int]:
    """A later upload wins; inside one upload the shorter (more specific) row wins."""
    return (row.upload_id, -row.duration, row.start)


def published_pieces(rows: list[Any]) -> list[tuple[Piece[Any], int]]:
    """The non-overlapping DOE schedule of one site's stored rows, each piece with its mRID version.

    A row is cut where a higher-ranked row overlaps it (:func:`server.store.timeline.paint`). The version
    (the upload field of the derived mRID) is the highest upload among the row and the rows that cut it, so
    a piece gets a new mRID exactly when a later upload reshapes its row, and an uncut row keeps the mRID it
    had before any split.
    """
    windows = [Window(row.start, row.start + row.duration, 0, None, _rank(row), row) for row in rows]
    by_start = sorted(rows, key=lambda row: row.start)
    starts = [row.start for row in by_start]
    version: dict[int, int] = {}
    for row in rows:
        end = row.start + row.duration
        v = row.upload_id
        # rows overlapping this one start in (row.start - MAX_DURATION, end)
        for other in by_start[bisect_left(starts, row.start - MAX_DURATION + 1) : bisect_left(starts, end)]:
            if other.start + other.duration > row.start and _rank(other) > _rank(row):
                v = max(v, other.upload_id)
        version[id(row)] = v
    return [(piece, version[id(piece.item)]) for piece in paint(windows) if not is_hole(piece.item)]


def _window(site_id: int, after: int) -> list[Any]:
    return [
        doe_intervals.c.site_id == site_id,
        doe_intervals.c.start > after - MAX_DURATION,  # keeps the scan an index range
        doe_intervals.c.start + doe_intervals.c.duration > after,
    ]


#: Whether a site has a DOE interval ending after ``after`` (``lo`` = ``after - MAX_DURATION``).
ANY_DOE = Query(
    sa.select(doe_intervals.c.start)
    .where(
        doe_intervals.c.site_id == sa.bindparam("site_id"),
        doe_intervals.c.start > sa.bindparam("lo"),  # keeps the scan an index range
        doe_intervals.c.start + doe_intervals.c.duration > sa.bindparam("after"),
    )
    .limit(1)
)


async def site_rows(conn: AsyncConnection, site_id: int, after: int) -> list[Any]:
    """Stored rows that can shape the schedule after ``after``: those ending after it, and any row that
    overlaps one of them (for the mRID version), which all start after ``after - 2 * MAX_DURATION``."""
    query = (
        sa.select(doe_intervals, doe_uploads.c.at)
        .join(doe_uploads, doe_uploads.c.id == doe_intervals.c.upload_id)
        .where(
            doe_intervals.c.site_id == site_id,
            doe_intervals.c.start > after - 2 * MAX_DURATION,
            doe_intervals.c.start + doe_intervals.c.duration > after - MAX_DURATION,
        )
        .order_by(doe_intervals.c.start)
    )
    return list((await conn.execute(query)).all())


async def doe_controls(
    conn: AsyncConnection,
    pen: int,
    site_id: int,
    program_id: int,
    *,
    after: int,
    now: int,
    active_only: bool,
    limit: int,
) -> tuple[int, list[DoeControlRow], int | None]:
    """(count, first ``limit`` rows by start, next change time) of a site's published DOE pieces ending
    after ``after``."""
    # Cheap exit for the common case of a site with no DOE at all.
    if (
        await conn.execute(sa.select(doe_intervals.c.start).where(*_window(site_id, after)).limit(1))
    ).first() is None:
        return 0, [], None
    pieces = [
        (p, v)
        for p, v in published_pieces(await site_rows(conn, site_id, after))
        if p.end > after and (not active_only or p.start <= now)
    ]
    next_change = min((p.start if p.start > now else p.end for p, _ in pieces), default=None)
    shown = [_piece_row(pen, program_id, p, v) for p, v in pieces[: max(limit, 0)]]
    return len(pieces), shown, next_change


async def doe_piece(conn: AsyncConnection, pen: int, site_id: int, start: int) -> DoeControlRow | None:
    """The published DOE piece of a site that starts at ``start`` (program id left 0)."""
    for piece, v in published_pieces(await site_rows(conn, site_id, start)):
        if piece.start == start:
            return _piece_row(pen, 0, piece, v)
    return None


async def doe_control(
    conn: AsyncConnection, pen: int, site_id: int, program_id: int, control_id: int
) -> DoeControlRow | None:
    found = await doe_piece(conn, pen, site_id, control_id - DOE_ID_BASE)
    if found is not None:
        found.program_id = program_id
    return found


def is_doe_program(program_row: Any) -> bool:
    return getattr(program_row, "key", None) == DOE_PROGRAM


async def cut_for_control(
    conn: AsyncConnection, site_id: int, start: int, end: int, *, now: int, actor: str, mrid: str
) -> int | None:
    """A site control of the ``doe`` program replaces the site's DOE rows over [start, end): store holes
    there under an upload of their own (``doe_uploads`` history names the control), so the rows are cut
    around the control and the cut pieces get new mRIDs. Returns the upload id, or None when no DOE row
    of the site overlaps (nothing to cut)."""
    overlapping = (
        await conn.execute(
            sa.select(doe_intervals.c.start)
            .where(
                doe_intervals.c.site_id == site_id,
                doe_intervals.c.start > start - MAX_DURATION,
                doe_intervals.c.start < end,
                doe_intervals.c.start + doe_intervals.c.duration > start,
            )
            .limit(1)
        )
    ).first()
    if overlapping is None:
        return None
    spans = [(a, min(a + MAX_DURATION, end)) for a in range(start, end, MAX_DURATION)]
    upload_id = (
        await conn.execute(
            doe_uploads.insert().values(
                at=now,
                actor=actor,
                rows=len(spans),
                sites=1,
                first_start=start,
                last_end=end,
                reason=f"replaced by control {mrid}",
            )
        )
    ).inserted_primary_key[0]
    stmt = _insert(conn, doe_intervals)
    hole = {"import_w": None, "export_w": None, "generation_w": None, "load_w": None, "upload_id": upload_id}
    for a, b in spans:
        await conn.execute(
            stmt.values(site_id=site_id, start=a, duration=b - a, **hole).on_conflict_do_update(
                index_elements=["site_id", "start", "duration"], set_=hole
            )
        )
    return upload_id
