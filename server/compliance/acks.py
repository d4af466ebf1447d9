"""Acknowledgements of one control: who received, started, completed or rejected it, and who is silent.

A control asks for Responses with its ``responseRequired`` bitmap (IEEE 2030.5-2018 §12.1.3, Table 27 for
the status codes). Over the sites its target covers (now), the summary counts:

* ``by_status``: for each status, the sites that sent it (a site that sent received, started and completed
  counts once in each);
* ``latest``: each site once, in its most advanced state (a rejection outranks everything, then completed /
  cancelled / superseded, then started, then received, else ``none``);
* ``non_responders``: sites with no Response ``within`` seconds after the control was published. Before that
  time has passed they are ``awaiting``, not non-responders.

A control that a later one split (server.store.timeline) is answered through its pieces too: their Responses
count for the original.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from server.compliance.targets import target_sites_query
from server.store import controls, programs, responses, sites

STATUS_NAMES = {
    1: "received",
    2: "started",
    3: "completed",
    4: "opted out",
    5: "opted in",
    6: "cancelled",
    7: "superseded",
    252: "rejected: invalid",
    253: "rejected: expired",
    254: "rejected: not applicable",
}
DEFAULT_WITHIN_S = 300


def status_name(status: int) -> str:
    return STATUS_NAMES.get(status, f"status {status}")


def _rank(status: int) -> int:
    if status >= 252:
        return 4
    if status in (3, 6, 7):
        return 3
    return {2: 2, 1: 1}.get(status, 1)


@dataclass
class SiteAck:
    site_id: int
    lfdi: str
    nmi: str | None
    statuses: list[int] = field(default_factory=list)
    first_at: int | None = None
    last_at: int | None = None

    @property
    def latest(self) -> str:
        if not self.statuses:
            return "none"
        return status_name(max(self.statuses, key=lambda s: (_rank(s), s)))


class UnknownControl(LookupError):
    pass


async def _control(conn: AsyncConnection, mrid: str) -> sa.Row:
    row = (
        await conn.execute(
            sa.select(controls, programs.c.key.label("program"))
            .join(programs, programs.c.id == controls.c.program_id)
            .where(controls.c.mrid == mrid.upper())
        )
    ).first()
    if row is None:
        raise UnknownControl(f"mrid: no control {mrid}")
    return row


def _family(row: Any) -> sa.ColumnElement[bool]:
    """The control and the pieces it was split into (``split_from``, when the schema has it)."""
    if "split_from" in controls.c:
        return sa.or_(controls.c.id == row.id, controls.c.split_from == row.id)
    return controls.c.id == row.id


async def site_acks(conn: AsyncConnection, row: Any) -> list[SiteAck]:
    targeted = {
        s.id: SiteAck(s.id, s.lfdi, s.nmi) for s in (await conn.execute(target_sites_query(row.target)))
    }
    query = (
        sa.select(responses.c.site_id, responses.c.status, responses.c.received_at)
        .join(controls, controls.c.id == responses.c.control_id)
        .where(_family(row))
        .order_by(responses.c.id)
    )
    for site_id, status, at in await conn.execute(query):
        ack = targeted.get(site_id)
        if ack is None:  # answered, but no longer targeted (left the group): still worth showing
            site = (
                await conn.execute(sa.select(sites.c.lfdi, sites.c.nmi).where(sites.c.id == site_id))
            ).one()
            ack = targeted[site_id] = SiteAck(site_id, site.lfdi, site.nmi)
        if status not in ack.statuses:
            ack.statuses.append(status)
        ack.first_at = at if ack.first_at is None else min(ack.first_at, at)
        ack.last_at = at if ack.last_at is None else max(ack.last_at, at)
    return sorted(targeted.values(), key=lambda a: a.site_id)


async def ack_summary(
    conn: AsyncConnection, mrid: str, *, now: int, within_s: int = DEFAULT_WITHIN_S
) -> dict[str, Any]:
    """The acknowledgement summary of the control ``mrid`` (see the module docstring)."""
    if not isinstance(within_s, int) or within_s < 0:
        raise ValueError(f"within: a number of seconds >= 0, got {within_s!r}")
    row = await _control(conn, mrid)
    acks = await site_acks(conn, row)
    due = row.creation_time + within_s
    by_status: dict[str, int] = {}
    latest: dict[str, int] = {}
    for ack in acks:
        for status in ack.statuses:
            by_status[status_name(status)] = by_status.get(status_name(status), 0) + 1
        latest[ack.latest] = latest.get(ack.latest, 0) + 1
    silent = [a for a in acks if not a.statuses]
    late = [a for a in acks if a.first_at is not None and a.first_at > due]
    overdue = now >= due
    return {
        "mrid": row.mrid,
        "program": row.program,
        "target": row.target,
        "created": row.creation_time,
        "response_required": row.response_required,
        "within_s": within_s,
        "due": due,
        "sites_targeted": len(acks),
        "acknowledged": len(acks) - len(silent),
        "by_status": by_status,
        "latest": latest,
        "none": len(silent),
        "late": [a.lfdi for a in late],
        "non_responders": [a.lfdi for a in silent] if overdue else [],
        "awaiting": [] if overdue else [a.lfdi for a in silent],
    }


async def ack_csv(conn: AsyncConnection, mrid: str, *, within_s: int = DEFAULT_WITHIN_S) -> str:
    """One line per targeted site: its statuses, first and last Response, and whether it answered in time."""
    row = await _control(conn, mrid)
    due = row.creation_time + within_s
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        ["mrid", "lfdi", "nmi", "latest", "statuses", "first_response_at", "last_response_at", "in_time"]
    )
    for ack in await site_acks(conn, row):
        writer.writerow(
            [
                row.mrid,
                ack.lfdi,
                ack.nmi or "",
                ack.latest,
                " ".join(str(s) for s in ack.statuses),
                ack.first_at if ack.first_at is not None else "",
                ack.last_at if ack.last_at is not None else "",
                "" if ack.first_at is None else str(ack.first_at <= due).lower(),
            ]
        )
    return out.getvalue()
