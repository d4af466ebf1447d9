"""Telemetry for operators: stored readings in real units, tagged with their device and phase, with group
totals (issue 13 item 5).

A stored reading is an integer scaled by its ReadingType's ``powerOfTenMultiplier`` (IEEE 2030.5-2018
ReadingType; ``uom`` UomType, ``phase`` PhaseCode). Here every value is ``value x 10^multiplier`` in the
named unit; the device is the MirrorUsagePoint's role: the site meter (roleFlags isPremisesAggregationPoint)
or a DER (isDER), named by its description.

Each series also carries ``role``: ``site meter``, ``PV`` or ``battery``. RoleFlagsType has no bit that
tells PV from storage, so a DER MirrorUsagePoint is a battery when it mirrors a stored-energy channel (Wh,
ReadingType kind 12 energy: what CSIP-AUS storage reports and STO-01/STO-04 read), whenever it posted it,
and PV otherwise. Group totals per interval are given for each role.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from functools import lru_cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from sep2 import resources as r
from sep2.xml import from_xml
from server.compliance.targets import target_sites_query
from server.store import meter_readings, mups, readings, sites

UNITS = {38: "W", 63: "var", 61: "VA", 29: "V", 33: "Hz", 5: "A", 72: "Wh", 73: "varh"}
PHASES = {0: None, 129: "A", 65: "B", 33: "C", 128: "AB", 64: "BC", 32: "CA", 224: "ABC"}
# RoleFlagsType (IEEE 2030.5-2018): bit 1 isPremisesAggregationPoint, bit 3 isDER (bit 6 is isSubmeter)
ROLE_DER, ROLE_PREMISES = 0x0008, 0x0002
MAX_ROWS = 1_000_000


@lru_cache(maxsize=1024)
def _reading_type(xml: str) -> tuple[str, int, str | None, str]:
    """(unit, multiplier, phase, quantity) of a stored ReadingType."""
    rt = from_xml(xml.encode(), r.ReadingType)
    unit = UNITS.get(rt.uom or 0, f"uom {rt.uom}")
    phase = PHASES.get(rt.phase or 0, f"phase {rt.phase}")
    flow = {1: "forward (import)", 19: "reverse (generation)"}.get(rt.flowDirection or 0, "")
    quantity = f"{unit} {flow}".strip()
    return unit, rt.powerOfTenMultiplier or 0, phase, quantity


def series_role(role_flags: str, storage: bool) -> str:
    """``site meter``, ``PV`` or ``battery`` (``storage``: the MirrorUsagePoint mirrors stored energy)."""
    flags = int(role_flags or "0", 16)
    if flags & ROLE_PREMISES and not flags & ROLE_DER:
        return "site meter"
    if flags & ROLE_DER:
        return "battery" if storage else "PV"
    return "other"


async def _storage_mups(conn: AsyncConnection, mup_ids: set[int]) -> set[int]:
    """The MirrorUsagePoints among ``mup_ids`` that mirror a stored-energy reading (Wh, kind 12)."""
    found: set[int] = set()
    ids = sorted(mup_ids)
    for i in range(0, len(ids), 500):
        rows = await conn.execute(
            sa.select(meter_readings.c.mup_id, meter_readings.c.reading_type).where(
                meter_readings.c.mup_id.in_(ids[i : i + 500])
            )
        )
        for mup_id, xml in rows:
            if _reading_type(xml)[0] == "Wh":
                found.add(mup_id)
    return found


def device_role(role_flags: str, description: str | None) -> str:
    flags = int(role_flags or "0", 16)
    if flags & ROLE_DER:
        return f"DER: {description or 'unnamed'}"
    if flags & ROLE_PREMISES:
        return "site meter"
    return description or f"roleFlags {role_flags}"


def reading_json(row: Any) -> dict[str, Any]:
    """One stored reading for the site detail: the value in its unit (multiplier applied), its device and
    phase; the stored integer stays as ``raw_value``."""
    unit, multiplier, phase, quantity = _reading_type(row.reading_type)
    return {
        "time_start": row.time_start,
        "duration": row.duration,
        "description": row.description,
        "device": device_role(row.role_flags, row.device),
        "quantity": quantity,
        "phase": phase,
        "value": round(row.value * 10.0**multiplier, 6),
        "unit": unit,
        "raw_value": row.value,
        "received_at": row.received_at,
        "mrid": row.mrid,
        "mup_mrid": row.mup_mrid,
    }


async def telemetry(
    conn: AsyncConnection, scope: str, t0: int, t1: int, *, limit: int = MAX_ROWS
) -> dict[str, Any]:
    """Readings of the sites of ``scope`` over [t0, t1) in real units, and site-meter power totals per
    interval start over those sites."""
    if not t0 < t1:
        raise ValueError(f"to: the range must end after it starts ({t0} >= {t1})")
    site_ids = sa.select(target_sites_query(scope).subquery().c.id)
    rows = await conn.execute(
        sa.select(
            sites.c.lfdi,
            sites.c.nmi,
            mups.c.id.label("mup_id"),
            mups.c.role_flags,
            mups.c.description.label("device"),
            meter_readings.c.description,
            meter_readings.c.reading_type,
            readings.c.time_start,
            readings.c.duration,
            readings.c.value,
        )
        .join(mups, mups.c.site_id == sites.c.id)
        .join(meter_readings, meter_readings.c.mup_id == mups.c.id)
        .join(readings, readings.c.meter_reading_id == meter_readings.c.id)
        .where(sites.c.id.in_(site_ids), readings.c.time_start >= t0, readings.c.time_start < t1)
        .order_by(sites.c.lfdi, readings.c.time_start, meter_readings.c.id)
        .limit(limit)
    )
    rows = rows.all()
    storage = await _storage_mups(
        conn, {row.mup_id for row in rows if int(row.role_flags or "0", 16) & ROLE_DER}
    )
    series = []
    totals: dict[int, list[float]] = defaultdict(lambda: [0.0, 0])
    der_totals: dict[str, dict[int, list[float]]] = {"PV": defaultdict(lambda: [0.0, 0]),
                                                      "battery": defaultdict(lambda: [0.0, 0])}  # fmt: skip
    for row in rows:
        unit, multiplier, phase, quantity = _reading_type(row.reading_type)
        value = row.value * 10.0**multiplier
        role = device_role(row.role_flags, row.device)
        kind = series_role(row.role_flags, row.mup_id in storage)
        series.append(
            {
                "lfdi": row.lfdi,
                "nmi": row.nmi,
                "device": role,
                "role": kind,
                "quantity": quantity,
                "description": row.description,
                "phase": phase,
                "time": row.time_start,
                "duration": row.duration,
                "value": round(value, 6),
                "unit": unit,
            }
        )
        if role == "site meter" and unit == "W" and phase is None:
            totals[row.time_start][0] += value
            totals[row.time_start][1] += 1
        elif kind in der_totals and unit == "W" and phase is None:
            der_totals[kind][row.time_start][0] += value
            der_totals[kind][row.time_start][1] += 1
    return {
        "scope": scope,
        "from": t0,
        "to": t1,
        "readings": series,
        "truncated": len(series) >= limit,
        "group_totals": [
            {"time": t, "site_power_w": round(total, 3), "sites": n, "unit": "W"}
            for t, (total, n) in sorted(totals.items())
        ],
        # + generation / discharge, - charging (flowDirection 19), per role and interval start
        "der_totals": [
            {"time": t, "role": kind, "power_w": round(total, 3), "devices": n, "unit": "W"}
            for kind, by_time in der_totals.items()
            for t, (total, n) in sorted(by_time.items())
        ],
    }


def telemetry_csv(data: dict[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    columns = ("lfdi", "nmi", "device", "role", "quantity", "phase", "time", "duration", "value", "unit")
    writer.writerow(columns)
    for item in data["readings"]:
        writer.writerow(["" if item[c] is None else item[c] for c in columns])
    return out.getvalue()
