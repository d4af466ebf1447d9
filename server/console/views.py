"""Read models of the console: the few queries the head-end API does not have yet.

Everything here is aggregated in SQL and bounded (LIMIT/OFFSET pages, grouped counts), so a page costs the
same at 100k sites as at ten. When the operator-outcomes work (issue 13) adds its own store queries for
acknowledgement summaries, compliance and the effective schedule, the functions below are the seams to
replace: the templates only see the dicts they return.
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa

from server.headend.core import der_of
from server.headend.core import target_names as operator_targets
from server.headend.doe import site_intervals
from server.store import (
    _group_member_sites,
    _site_targets,
    audit_log,
    controls,
    groups,
    memberships,
    programs,
    responses,
    sites,
)
from server.store.targets import key_sites

RESPONSE_WORDS = {
    1: "received the control",
    2: "started the control",
    3: "completed the control",
    4: "opted out",
    6: "acknowledged the cancellation",
    7: "acknowledged it was superseded",
    252: "rejected it: not a valid event for this device",
    253: "rejected it: the event had expired when it arrived",
    254: "rejected it: not applicable to this device",
}
STATUS_SHORT = {1: "received", 2: "started", 3: "completed", 4: "opted out", 6: "cancelled", 7: "superseded"}


def response_words(status: int) -> str:
    return RESPONSE_WORDS.get(status, f"sent status {status}")


def status_short(status: int) -> str:
    return STATUS_SHORT.get(status, "rejected" if status >= 252 else str(status))


def silent_after(config: Any) -> int:
    """A site is silent when nothing was heard from it for three poll/post periods (at least a minute)."""
    return max(60, 3 * max(int(config.poll_rate or 0), int(config.post_rate or 0)))


def _live(now: int) -> list[Any]:
    return [
        controls.c.cancelled_at.is_(None),
        controls.c.superseded_at.is_(None),
        controls.c.start + controls.c.duration > now,
    ]


async def site_counts(store: Any, now: int, threshold: int, site_cond: Any = None) -> dict[str, int]:
    """Sites total, online, silent and never heard from: three counts over ``ix_sites_last_contact``.

    ``sites.last_contact`` is kept by the contact write path (``SitesStore.flush_contacts``, to 20 s), so
    these are index range counts rather than a join of every site with the clients it was heard through
    (1.9 s at 100k sites).
    """
    silent_before = now - threshold

    def count(*cond: Any) -> Any:
        if site_cond is not None:
            cond = (*cond, site_cond)
        return sa.select(sa.func.count()).select_from(sites).where(*cond).scalar_subquery()

    query = sa.select(
        count(),
        count(sites.c.last_contact >= silent_before),
        count(sites.c.last_contact < silent_before),
    )
    async with store.read() as conn:
        total, online, silent = (await conn.execute(query)).one()
    return {"total": total, "online": online, "silent": silent, "never": total - online - silent}


async def target_names(conn: Any, keys: list[str]) -> dict[str, str]:
    """The head-end's operator targets, worded for the page: "all sites", and a control for one DER
    alone as its site and DER id."""
    names = await operator_targets(conn, keys)
    return {
        k: "all sites" if k == "all" else f"{n} · DER {der}" if (der := der_of(k)) is not None else n
        for k, n in names.items()
    }


async def live_by_program(store: Any, now: int) -> list[dict[str, Any]]:
    query = (
        sa.select(programs.c.key, programs.c.primacy, sa.func.count(controls.c.id))
        .join(controls, sa.and_(controls.c.program_id == programs.c.id, *_live(now)), isouter=True)
        .group_by(programs.c.id, programs.c.key, programs.c.primacy)
        .order_by(programs.c.primacy, programs.c.key)
    )
    async with store.read() as conn:
        rows = (await conn.execute(query)).all()
    return [{"program": k, "primacy": p, "live": n} for k, p, n in rows]


async def live_emergencies(store: Any, now: int) -> list[dict[str, Any]]:
    query = (
        sa.select(controls)
        .join(programs, programs.c.id == controls.c.program_id)
        .where(programs.c.key == "emergency", *_live(now))
        .order_by(controls.c.id.desc())
        .limit(50)
    )
    async with store.read() as conn:
        rows = (await conn.execute(query)).all()
        names = await target_names(conn, [r.target for r in rows])
    return [
        {
            "mrid": r.mrid,
            "target": names[r.target],
            "start": r.start,
            "end": r.start + r.duration,
            "description": r.description,
            "pending": r.start > now,
        }
        for r in rows
    ]


def _recipients_query(key: str) -> Any:
    if key == "all":
        return sa.select(sites.c.id)
    return key_sites(key)


async def ack_summary(store: Any, mrid: str, *, offset: int = 0, limit: int = 50) -> dict[str, Any] | None:
    """Recipients of a control, each site's latest Response status, and the sites that sent none."""
    async with store.read() as conn:
        row = (await conn.execute(sa.select(controls).where(controls.c.mrid == mrid.upper()))).first()
        if row is None:
            return None
        recipients = _recipients_query(row.target).subquery()
        total = (await conn.execute(sa.select(sa.func.count()).select_from(recipients))).scalar_one()
        latest = (
            sa.select(sa.func.max(responses.c.id).label("id"))
            .where(responses.c.control_id == row.id)
            .group_by(responses.c.site_id)
            .subquery()
        )
        by_status = dict(
            (
                await conn.execute(
                    sa.select(responses.c.status, sa.func.count())
                    .where(responses.c.id.in_(sa.select(latest.c.id)))
                    .group_by(responses.c.status)
                )
            ).all()
        )
        answered = sa.select(responses.c.site_id).where(responses.c.control_id == row.id)
        silent_cond = [sites.c.id.in_(sa.select(recipients)), sites.c.id.not_in(answered)]
        n_silent = (
            await conn.execute(sa.select(sa.func.count()).select_from(sites).where(*silent_cond))
        ).scalar_one()
        non_responders = (
            await conn.execute(
                sa.select(sites.c.lfdi, sites.c.nmi, sites.c.label, sites.c.last_contact)
                .where(*silent_cond)
                .order_by(sites.c.id)
                .offset(offset)
                .limit(limit)
            )
        ).all()
        names = await target_names(conn, [row.target])
    responded = sum(by_status.values())
    return {
        "mrid": row.mrid,
        "target": names[row.target],
        "recipients": total,
        "responded": responded,
        "by_status": {status_short(s): n for s, n in sorted(by_status.items())},
        "rejected": sum(n for s, n in by_status.items() if s >= 252),
        "non_responder_count": n_silent,
        "non_responders": [dict(r._mapping) for r in non_responders],
        "response_required": row.response_required,
    }


async def recent_controls(store: Any, limit: int = 8) -> list[str]:
    async with store.read() as conn:
        return list(
            (
                await conn.execute(sa.select(controls.c.mrid).order_by(controls.c.id.desc()).limit(limit))
            ).scalars()
        )


async def search_sites(
    store: Any, now: int, threshold: int, *, q: str = "", group: str = "", offset: int = 0, limit: int = 25
) -> dict[str, Any]:
    """Sites by NMI / LFDI prefix, SFDI, label substring or group; one page, with comms state.

    An identifier match wins: the NMI and LFDI prefixes are index range scans (not ``LIKE``, which SQLite
    cannot serve from an index) and the SFDI an equality, so finding a site by its NMI costs the same at
    100k sites as at 100. Only when no identifier matches does the search scan the labels.
    """
    cond: list[Any] = []
    q = q.strip()
    async with store.read() as conn:
        if q:
            ids = [_prefix(sites.c.nmi, q.upper()), _prefix(sites.c.lfdi, q.upper())]
            if q.isdigit() and len(q) <= 19:
                ids.append(sites.c.sfdi == int(q))
            found = (await conn.execute(sa.select(sites.c.id).where(sa.or_(*ids)).limit(1))).first()
            cond.append(sa.or_(*ids) if found else sites.c.label.like(f"%{_escape_like(q)}%", escape="\\"))
        if group:
            gid = (await conn.execute(sa.select(groups.c.id).where(groups.c.name == group))).scalar()
            if gid is None:
                return {"error": f"group: no group named {group!r}", "total": 0, "items": [], "offset": 0}
            cond.append(sites.c.id.in_(_group_member_sites(gid)))
        if group and not q:  # count the group's memberships (an index range), not 100k sites against them
            members = _group_member_sites(gid).subquery()
            counting = sa.select(sa.func.count(sa.distinct(members.c.site_id)))
        else:
            counting = sa.select(sa.func.count()).select_from(sites).where(*cond)
        total = (await conn.execute(counting)).scalar_one()
        rows = (
            await conn.execute(sa.select(sites).where(*cond).order_by(sites.c.id).offset(offset).limit(limit))
        ).all()
        member_rows = (
            await conn.execute(
                sa.select(memberships.c.site_id, groups.c.name)
                .join(groups, groups.c.id == memberships.c.group_id)
                .where(memberships.c.site_id.in_([r.id for r in rows]))
            )
        ).all()
    names: dict[int, list[str]] = {}
    for m in member_rows:
        names.setdefault(m.site_id, []).append(m.name)
    items = []
    for r in rows:
        seen = r.last_contact
        items.append(
            {
                "lfdi": r.lfdi,
                "sfdi": r.sfdi,
                "nmi": r.nmi,
                "label": r.label,
                "groups": sorted(names.get(r.id, [])),
                "last_contact": seen,
                "comms": comms_state(seen, now, threshold),
            }
        )
    return {"total": total, "offset": offset, "limit": limit, "items": items, "error": None}


def _prefix(column: Any, text: str) -> Any:
    """``column`` starts with ``text``, as a range an index serves: [text, text with its last char + 1)."""
    return sa.and_(column >= text, column < text[:-1] + chr(ord(text[-1]) + 1))


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def comms_state(seen: int | None, now: int, threshold: int) -> str:
    if seen is None:
        return "never"
    return "online" if now - seen <= threshold else "silent"


async def group_tree(store: Any) -> list[dict[str, Any]]:
    """Groups as a depth-first list with depth, direct members and live controls targeted at each."""
    async with store.read() as conn:
        rows = (await conn.execute(sa.select(groups).order_by(groups.c.name))).all()
        direct = dict(
            (
                await conn.execute(
                    sa.select(memberships.c.group_id, sa.func.count()).group_by(memberships.c.group_id)
                )
            ).all()
        )
        live = dict(
            (
                await conn.execute(
                    sa.select(controls.c.target, sa.func.count())
                    .where(*_live(store.clock()))
                    .group_by(controls.c.target)
                )
            ).all()
        )
    children: dict[int | None, list[Any]] = {}
    for row in rows:
        children.setdefault(row.parent_id, []).append(row)
    out: list[dict[str, Any]] = []

    def walk(parent: int | None, depth: int) -> None:
        for row in children.get(parent, []):
            out.append(
                {
                    "name": row.name,
                    "description": row.description,
                    "depth": depth,
                    "members": direct.get(row.id, 0),
                    "live_controls": live.get(f"g:{row.id}", 0),
                }
            )
            walk(row.id, depth + 1)

    walk(None, 0)
    return out


async def emergency_scope(store: Any, target: str) -> dict[str, Any]:
    """What an emergency for ``target`` reaches: the number of sites and the groups involved."""
    async with store.read() as conn:
        if target in ("all", ""):
            n = (await conn.execute(sa.select(sa.func.count()).select_from(sites))).scalar_one()
            return {"target": "all", "sites": n, "groups": ["all (broadcast)"]}
        if target.startswith("group:"):
            row = (await conn.execute(sa.select(groups).where(groups.c.name == target[6:]))).first()
            if row is None:
                return {"target": target, "error": f"target: no group named {target[6:]!r}"}
            n = (
                await conn.execute(
                    sa.select(sa.func.count()).select_from(_group_member_sites(row.id).subquery())
                )
            ).scalar_one()
            subgroups = [row.name]
            frontier = [row.id]
            while frontier:
                kids = (
                    await conn.execute(
                        sa.select(groups.c.id, groups.c.name).where(groups.c.parent_id.in_(frontier))
                    )
                ).all()
                subgroups += [k.name for k in kids]
                frontier = [k.id for k in kids]
            return {"target": target, "sites": n, "groups": subgroups}
        ref = target.split(":", 1)[1] if ":" in target else target
        cond = sites.c.nmi == ref if target.startswith("nmi:") else sites.c.lfdi == ref.upper()
        row = (await conn.execute(sa.select(sites.c.id).where(cond))).first()
        if row is None:
            return {"target": target, "error": f"target: no site {ref!r}"}
        return {"target": target, "sites": 1, "groups": []}


async def restore_progress(store: Any, now: int) -> list[dict[str, Any]]:
    """Staged-restore waves still holding (live emergency controls named 'Staged restore wave N')."""
    query = (
        sa.select(controls)
        .join(programs, programs.c.id == controls.c.program_id)
        .where(programs.c.key == "emergency", controls.c.description.like("Staged restore wave %"))
        .where(controls.c.creation_time >= now - 86400)
        .order_by(controls.c.id.desc())
        .limit(20)
    )
    async with store.read() as conn:
        rows = (await conn.execute(query)).all()
        names = await target_names(conn, [r.target for r in rows])
    return [
        {
            "mrid": r.mrid,
            "wave": r.description,
            "target": names[r.target],
            "release_at": r.start + r.duration,
            "released": r.start + r.duration <= now or r.cancelled_at is not None,
            "remaining_s": max(0, r.start + r.duration - now),
        }
        for r in rows
    ]


async def site_plot_series(store: Any, site: dict[str, Any], now: int, window: int = 3600) -> dict[str, Any]:
    """Site power (W, + import / - export) and the envelope over the last ``window`` seconds."""
    since = now - window
    points: list[tuple[int, float]] = []
    for item in await store.admin.site_readings(site["lfdi"], since=since, limit=20000):
        rt = item["reading_type"]
        # The site meter's MirrorMeterReading is W with flowDirection forward (1); DERs report reverse.
        if getattr(rt, "uom", None) != 38 or getattr(rt, "flowDirection", None) != 1:
            continue
        mult = getattr(rt, "powerOfTenMultiplier", 0) or 0
        points.append((item["time_start"], item["value"] * 10.0**mult))
    async with store.read() as conn:
        keys = [k for k, _ in await _site_targets(conn, site["id"])]
        rows = (
            await conn.execute(
                sa.select(controls, programs.c.key.label("program"), programs.c.primacy)
                .join(programs, programs.c.id == controls.c.program_id)
                .where(
                    controls.c.target.in_(keys),
                    controls.c.start < now + 600,
                    controls.c.start + controls.c.duration > since,
                )
                .order_by(controls.c.start)
                .limit(500)
            )
        ).all()
    windows = []
    for r in rows:
        base = json.loads(r.base)
        end = r.start + r.duration
        if r.cancelled_at is not None:
            end = min(end, r.cancelled_at)
        if r.superseded_at is not None:
            end = min(end, r.superseded_at)
        windows.append(
            {
                "program": r.program,
                "primacy": r.primacy,
                "start": r.start,
                "end": end,
                "export_w": _watts(base.get("opModExpLimW")),
                "import_w": _watts(base.get("opModImpLimW")),
                "generation_w": _watts(base.get("opModGenLimW")),
                "connect": base.get("opModConnect"),
            }
        )
    for d in await site_intervals(store, site["id"], since=since, limit=500):
        windows.append(
            {
                "program": "doe",
                "primacy": None,
                "start": d["start"],
                "end": d["start"] + d["duration"],
                "export_w": d.get("export_limit_w"),
                "import_w": d.get("import_limit_w"),
                "generation_w": d.get("generation_limit_w"),
                "connect": None,
            }
        )
    return {"since": since, "until": now, "points": sorted(points), "windows": windows}


def _watts(power: Any) -> float | None:
    if not isinstance(power, dict) or "value" not in power:
        return None
    return power["value"] * 10.0 ** power.get("multiplier", 0)


async def compliance(
    store: Any, now: int, threshold: int, *, group: str = "", since: int, until: int
) -> dict[str, Any]:
    """What can be judged today: per control in the range, recipients vs Responses; silent sites."""
    async with store.read() as conn:
        site_cond = None
        keys: list[str] = ["all"]
        if group:
            gid = (await conn.execute(sa.select(groups.c.id).where(groups.c.name == group))).scalar()
            if gid is None:
                return {"error": f"group: no group named {group!r}"}
            site_cond = sites.c.id.in_(_group_member_sites(gid))
            # the group and its ancestors reach its members
            chain = [gid]
            parent = (await conn.execute(sa.select(groups.c.parent_id).where(groups.c.id == gid))).scalar()
            while parent is not None:
                chain.append(parent)
                parent = (
                    await conn.execute(sa.select(groups.c.parent_id).where(groups.c.id == parent))
                ).scalar()
            keys += [f"g:{g}" for g in chain]
        ctl_cond = [controls.c.start < until, controls.c.start + controls.c.duration > since]
        if group:
            ctl_cond.append(controls.c.target.in_(keys))
        mrids = list(
            (
                await conn.execute(
                    sa.select(controls.c.mrid).where(*ctl_cond).order_by(controls.c.start.desc()).limit(200)
                )
            ).scalars()
        )
        silent_q = sa.select(sites.c.lfdi, sites.c.nmi, sites.c.label, sites.c.last_contact.label("seen"))
        if site_cond is not None:
            silent_q = silent_q.where(site_cond)
        sub = silent_q.subquery()
        silent_rows = (
            await conn.execute(
                sa.select(sub)
                .where(sa.or_(sub.c.seen.is_(None), sub.c.seen < now - threshold))
                .order_by(sub.c.lfdi)
                .limit(500)
            )
        ).all()
    per_control = [s for s in [await ack_summary(store, m, limit=20) for m in mrids] if s is not None]
    counts = await site_counts(store, now, threshold, site_cond)
    return {
        "error": None,
        "group": group or "all",
        "since": since,
        "until": until,
        "sites": counts,
        "controls": per_control,
        "silent": [dict(r._mapping) for r in silent_rows],
    }


async def recent_audit(store: Any, limit: int = 10) -> list[dict[str, Any]]:
    async with store.read() as conn:
        rows = (await conn.execute(sa.select(audit_log).order_by(audit_log.c.id.desc()).limit(limit))).all()
    return [dict(r._mapping) for r in rows]
