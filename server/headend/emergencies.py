"""Emergencies: a command on the emergency program now, and lifting it (at once, spread, waves)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from aiohttp import web

from server.headend import models as m
from server.headend.core import (
    EMERGENCY_PROGRAM,
    HeadEnd,
    control_base,
)
from server.headend.errors import HeadEndError
from server.headend.routing import Route
from server.store import (
    Store,
    _enqueue,
    controls,
)

ROUTES = [
    Route("POST", "/api/emergency", "emergency", True, "Emergency command on the emergency program, now",
          m.EmergencyIssued, body=m.Emergency, status=201),
    Route("POST", "/api/emergency/lift", "emergency_lift", True,
          "Lift emergency controls, at once, spread by randomisation, or in group waves", m.Lifted,
          body=m.EmergencyLift),
]  # fmt: skip


async def emergency(head: HeadEnd, request: web.Request, body: m.Emergency) -> Any:
    limits = {**m.EMERGENCY_ACTIONS[body.action], "generation_limit_w": body.generation_limit_w}
    mrid = await head.admin.create_control(
        EMERGENCY_PROGRAM,
        body.target,
        start=None,
        duration=body.duration,
        base=control_base(m.ControlLimits.model_validate(limits)),
        randomize_duration=body.randomize_duration,
        response_required="03",
        description=f"Emergency {body.action}"[:32],
        actor=head.actor(request),
        reason=body.reason,
    )
    return {"mrid": mrid, "action": body.action, "target": body.target, "duration": body.duration}


async def emergency_lift(head: HeadEnd, request: web.Request, body: m.EmergencyLift) -> Any:
    return await lift_emergency(
        head.store,
        target=body.target,
        mrid=body.mrid,
        spread=body.spread,
        waves=body.waves,
        wave_interval=body.wave_interval,
        actor=head.actor(request),
        reason=body.reason,
    )


async def lift_emergency(
    store: Store,
    *,
    target: str | None,
    mrid: str | None,
    spread: int | None,
    waves: list[str] | None,
    wave_interval: int | None,
    actor: str,
    reason: str | None,
) -> dict[str, Any]:
    """End the live emergency controls of ``target`` (or the one ``mrid``).

    * at once: cancelled (EventStatus 2);
    * ``spread``: cancelled with randomisation (EventStatus 3, randomizeDuration = spread), so each site
      ends the curtailment at a random moment within the spread;
    * ``waves``: cancelled, and each wave group k>0 gets the same limits again on the emergency program
      for k x ``wave_interval`` seconds, so wave k is released at now + k x interval. Sites of the
      lifted target that are in no wave are released with the first wave.
    """
    now = store.clock()
    admin = store.admin
    async with store.write() as conn:
        program_id = await admin._program_id(conn, EMERGENCY_PROGRAM)
        cond = [
            controls.c.program_id == program_id,
            controls.c.cancelled_at.is_(None),
            controls.c.superseded_at.is_(None),
            controls.c.start + controls.c.duration > now,
        ]
        if mrid is not None:
            cond.append(controls.c.mrid == mrid.upper())
        else:
            cond.append(controls.c.target == await admin._resolve_target(conn, target))
        rows = (await conn.execute(sa.select(controls).where(*cond))).all()
        if not rows:
            raise HeadEndError(
                404,
                f"{'mrid' if mrid else 'target'}: no live emergency control to lift",
                "mrid" if mrid else "target",
            )
        wave_keys = [await admin._resolve_target(conn, w) for w in waves] if waves else []
        created = []
        for row in rows:
            values: dict[str, Any] = {"cancelled_at": now, "version": controls.c.version + 1}
            if spread is not None:
                values["randomize_duration"] = spread
            await conn.execute(controls.update().where(controls.c.id == row.id).values(**values))
            await _enqueue(conn, now, kinds=("derc", "actderc"), program_id=program_id, target=row.target)
            for k, key in enumerate(wave_keys):
                if k == 0:
                    continue
                new = doe_free_mrid(store)
                await conn.execute(
                    controls.insert().values(
                        mrid=new,
                        program_id=program_id,
                        target=key,
                        start=now,
                        duration=k * wave_interval,
                        randomize_start=None,
                        randomize_duration=None,
                        response_required=row.response_required,
                        base=row.base,
                        description=f"Staged restore wave {k + 1}"[:32],
                        creation_time=now,
                        version=0,
                    )
                )
                await _enqueue(conn, now, kinds=("derc", "actderc"), program_id=program_id, target=key)
                created.append(
                    {"mrid": new, "wave": k + 1, "target": waves[k], "release_at": now + k * wave_interval}
                )
        await admin._audit(
            conn,
            actor,
            "emergency.lift",
            target or mrid,
            reason,
            lifted=[row.mrid for row in rows],
            spread=spread,
            waves=waves,
            wave_interval=wave_interval,
        )
    return {
        "lifted": [row.mrid for row in rows],
        "mode": "spread" if spread is not None else "waves" if waves else "immediate",
        "spread": spread,
        "waves": created,
    }


def doe_free_mrid(store: Store) -> str:
    """A random mRID that can never be mistaken for a derived DOE mRID (those start with D)."""
    from sep2.mrid import new_mrid

    while True:
        mrid = new_mrid(store.pen)
        if not mrid.startswith("D"):
            return mrid
