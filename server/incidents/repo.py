"""Incidents persisted in the server's store: each raise, note and transition in one transaction with its
timeline row and an ``audit_log`` row (who, what, why), committed before the caller is answered."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from server.incidents.machine import (
    Finding,
    Incident,
    Note,
    TransitionRefused,
    apply,
    new_incident,
)
from server.incidents.tables import incident_events, incidents
from server.store import Store, audit_log


class IncidentNotFound(LookupError):
    pass


def _key(incident_id: str) -> int:
    prefix, _, number = incident_id.partition("-")
    if prefix != "INC" or not number.isdigit():
        raise IncidentNotFound(f"id: no incident {incident_id!r} (ids look like INC-12)")
    return int(number)


class Incidents:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def _load(self, conn: AsyncConnection, key: int) -> Incident:
        row = (await conn.execute(sa.select(incidents).where(incidents.c.id == key))).first()
        if row is None:
            raise IncidentNotFound(f"id: no incident INC-{key}")
        events = (
            await conn.execute(
                sa.select(incident_events).where(incident_events.c.incident_id == key)
                .order_by(incident_events.c.id)
            )
        ).all()  # fmt: skip
        return Incident(
            f"INC-{key}", row.subject, row.kind, row.severity, row.reporter, row.holder, row.state,
            row.referred_to, row.root_cause,
            tuple(Note(e.at, e.actor, e.text, e.action, e.from_state, e.to_state) for e in events),
        )  # fmt: skip

    async def _audit(self, conn: AsyncConnection, actor: str, action: str, inc: Incident,
                     reason: str) -> None:  # fmt: skip
        await conn.execute(audit_log.insert().values(
            at=int(self.store.clock()), actor=actor[:64], action=f"incident.{action}"[:48], target=inc.id,
            reason=reason[:256], detail=json.dumps({"state": inc.state, "subject": inc.subject}),
        ))  # fmt: skip

    async def _write_event(self, conn: AsyncConnection, key: int, note: Note) -> None:
        await conn.execute(incident_events.insert().values(
            incident_id=key, at=int(note.at), actor=note.actor, action=note.action,
            from_state=note.from_state, to_state=note.to_state, text=note.text,
        ))  # fmt: skip

    async def _open_for(self, conn: AsyncConnection, subject: str, kind: str) -> int | None:
        return (await conn.execute(
            sa.select(incidents.c.id).where(incidents.c.subject == subject, incidents.c.kind == kind,
                                            sa.text("incidents." + _OPEN))
        )).scalar()  # fmt: skip

    async def raise_incident(self, subject: str, kind: str, severity: str, reporter: str, holder: str,
                             text: str) -> tuple[Incident, bool]:  # fmt: skip
        """(incident, created): an open incident with the same subject and kind gets a note instead."""
        now = int(self.store.clock())
        async with self.store.changing(("incidents", 0)) as conn:  # no 2030.5 document reads incidents
            existing = await self._open_for(conn, subject, kind)
            if existing is not None:
                inc = apply(await self._load(conn, existing), "note", reporter, f"again: {text}", now)
                await self._write_event(conn, existing, inc.timeline[-1])
                touch = incidents.update().where(incidents.c.id == existing).values(updated_at=now)
                await conn.execute(touch)
                await self._audit(conn, reporter, "note", inc, text)
                return inc, False
            draft = new_incident("INC-0", subject, kind, severity, reporter, holder, now, text)
            key = (await conn.execute(incidents.insert().values(
                subject=subject, kind=kind, severity=severity, reporter=reporter, holder=holder, state="open",
                opened_at=now, updated_at=now,
            ))).inserted_primary_key[0]  # fmt: skip
            await self._write_event(conn, key, draft.timeline[0])
            inc = await self._load(conn, key)
            await self._audit(conn, reporter, "raise", inc, text)
            return inc, True

    async def act(self, incident_id: str, action: str, actor: str, reason: str, *,
                  referred_to: str | None = None, root_cause: str | None = None) -> Incident:  # fmt: skip
        """Apply one action; a refused one raises TransitionRefused and writes nothing."""
        key = _key(incident_id)
        now = int(self.store.clock())
        async with self.store.changing(("incidents", 0)) as conn:  # no 2030.5 document reads incidents
            before = await self._load(conn, key)
            after = apply(before, action, actor, reason, now, referred_to=referred_to, root_cause=root_cause)
            await conn.execute(incidents.update().where(incidents.c.id == key).values(
                state=after.state, referred_to=after.referred_to, root_cause=after.root_cause, updated_at=now,
            ))  # fmt: skip
            await self._write_event(conn, key, after.timeline[-1])
            await self._audit(conn, actor, action, after, reason)
            return after

    async def get(self, incident_id: str) -> Incident:
        async with self.store.read() as conn:
            return await self._load(conn, _key(incident_id))

    @staticmethod
    def _filtered(query: Any, open_only: bool, subject: str | None) -> Any:
        if open_only:
            query = query.where(sa.text("incidents." + _OPEN))
        if subject:
            query = query.where(incidents.c.subject == subject)
        return query

    async def list(self, *, open_only: bool = False, subject: str | None = None, offset: int = 0,
                   limit: int | None = None) -> list[Incident]:  # fmt: skip
        """Oldest first; ``limit``/``offset`` page it (the console shows 50 at a time)."""
        query = self._filtered(sa.select(incidents.c.id).order_by(incidents.c.id), open_only, subject)
        if limit is not None:
            query = query.offset(offset).limit(limit)
        async with self.store.read() as conn:
            keys = (await conn.execute(query)).scalars().all()
            return [await self._load(conn, k) for k in keys]

    async def count(self, *, open_only: bool = False, subject: str | None = None) -> int:
        query = self._filtered(sa.select(sa.func.count()).select_from(incidents), open_only, subject)
        async with self.store.read() as conn:
            return int((await conn.execute(query)).scalar() or 0)

    async def raise_from_findings(self, findings: Iterable[Finding], reporter: str,
                                  holder: str) -> dict[str, Any]:  # fmt: skip
        created, noted = [], []
        for f in findings:
            inc, new = await self.raise_incident(f.subject, f.kind, f.severity, reporter, holder, f.detail)
            (created if new else noted).append(inc.id)
        return {"created": created, "noted": noted}


_OPEN = "state IN ('open', 'triaged', 'referred', 'responded', 'ready_to_verify')"
__all__ = ["IncidentNotFound", "Incidents", "TransitionRefused"]
