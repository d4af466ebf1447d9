"""Bulk DOE intervals (``doe_intervals``, written by ``server.headend.doe``) read as DERControls of the
``doe`` program: ids ``DOE_ID_BASE + start``, derived mRIDs (see ``server.headend.doe`` for the format)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from server.store.codec import build_control_base, to_jsonable
from server.store.schema import doe_intervals, doe_uploads

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


def _to_control_row(pen: int, program_id: int, row: Any) -> DoeControlRow:
    return DoeControlRow(
        id=DOE_ID_BASE + row.start,
        mrid=doe_mrid(pen, row.site_id, row.start, row.upload_id),
        program_id=program_id,
        target=f"s:{row.site_id}",
        start=row.start,
        duration=row.duration,
        base=_base_json(row),
        creation_time=row.at,
    )


def _window(site_id: int, after: int) -> list[Any]:
    return [
        doe_intervals.c.site_id == site_id,
        doe_intervals.c.start > after - MAX_DURATION,  # keeps the scan an index range
        doe_intervals.c.start + doe_intervals.c.duration > after,
    ]


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
    """(count, first ``limit`` rows by start, next change time) of a site's DOE intervals ending after
    ``after``."""
    cond = _window(site_id, after)
    if active_only:
        cond.append(doe_intervals.c.start <= now)
    summary = (
        await conn.execute(
            sa.select(
                sa.func.count(),
                sa.func.min(
                    sa.case(
                        (doe_intervals.c.start > now, doe_intervals.c.start),
                        else_=doe_intervals.c.start + doe_intervals.c.duration,
                    )
                ),
            ).where(*cond)
        )
    ).one()
    if not summary[0] or limit <= 0:
        return summary[0], [], summary[1]
    rows = (
        await conn.execute(
            sa.select(doe_intervals, doe_uploads.c.at)
            .join(doe_uploads, doe_uploads.c.id == doe_intervals.c.upload_id)
            .where(*cond)
            .order_by(doe_intervals.c.start)
            .limit(limit)
        )
    ).all()
    return summary[0], [_to_control_row(pen, program_id, row) for row in rows], summary[1]


async def doe_control(
    conn: AsyncConnection, pen: int, site_id: int, program_id: int, control_id: int
) -> DoeControlRow | None:
    row = (
        await conn.execute(
            sa.select(doe_intervals, doe_uploads.c.at)
            .join(doe_uploads, doe_uploads.c.id == doe_intervals.c.upload_id)
            .where(doe_intervals.c.site_id == site_id, doe_intervals.c.start == control_id - DOE_ID_BASE)
        )
    ).first()
    return _to_control_row(pen, program_id, row) if row is not None else None


def is_doe_program(program_row: Any) -> bool:
    return getattr(program_row, "key", None) == DOE_PROGRAM
