"""Head-end routes for a site's standing data (issue 13 item 6; seed 000 GS06, seed 001 L583).

    GET /api/sites/{site}/ders           each DER: its documents (nameplate, settings, status, availability)
                                         with values in real units, and the DER MirrorUsagePoints' latest
                                         readings (per-DER telemetry)
    GET /api/sites/{site}/ders/history   ?der=<id>&kind=dercap|derg|ders|dera&since=<time>&limit=<n>:
                                         what changed and when, newest first
    PUT /api/sites/{site}/ders           {"count": N, "reason"?}: the server creates (or removes) DER
                                         instances until the site's DERList holds N

How a site gets several DERs: in 2030.5 (§10.10) the server provides the DERList and the client PUTs each
DER's DERCapability / DERSettings / DERStatus / DERAvailability; there is no client request to create a
DER. So the server creates them: one at registration (in-band, or out of band by default), or as many as
the operator declares (``register_site(der_count=N)``, this PUT, ``derlink ctl sites ders SITE --count N``).
A gateway with as many devices as DERs PUTs each device's documents to its own DER; otherwise it reports
the site as one aggregated DER on the first, which is how CSIP-AUS treats a multi-DER site (procedures
MUL-01...03; the GFEMS totals of the SAPN/CPPCUE handbooks). Controls target the site; the operator may
also give one DER a control (``der`` in POST /api/controls), published in that DER's own DERProgramList
(2030.5 §10.10 ``AssociatedDERProgramListLink``; see server.api), which CSIP-AUS does not use.

A DER's MirrorUsagePoint is not linked to its DER in 2030.5 (MirrorUsagePoint carries only deviceLFDI):
the DER telemetry is listed by MirrorUsagePoint (roleFlags isDER), named by its description.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Annotated, Any, Literal

import sqlalchemy as sa
from aiohttp import web
from pydantic import Field

from sep2.xml import from_xml
from server.headend import models as m
from server.headend.core import HeadEnd
from server.headend.routing import Route
from server.headend.telemetry import ROLE_DER, reading_json
from server.store import DER_DOCUMENT_TYPES, der_documents, der_history, ders, meter_readings, mups, readings
from server.store.codec import to_jsonable

DerKind = Literal["dercap", "derg", "ders", "dera"]


class DerItem(m.Answer):
    id: int
    href: str
    documents: dict[str, dict[str, Any]] = Field(description="per document kind, values in real units")
    changes: int = Field(description="entries in the DER's standing-data history")


class DerTelemetry(m.Answer):
    mirror_usage_point: str | None
    device: str | None
    readings: list[dict[str, Any]]


class SiteDers(m.Answer):
    site: str
    ders: list[DerItem]
    telemetry: list[DerTelemetry]


class DerHistoryQuery(m.Query):
    der: Annotated[int, Field(ge=0)] | None = None
    kind: DerKind | None = None
    since: m.Timestamp | None = None
    limit: Annotated[int, Field(ge=1, le=1000)] = 100


class DerChange(m.Answer):
    der: int
    kind: str
    document: str
    at: int
    changes: dict[str, Any]
    units: dict[str, str]


class DerHistory(m.Answer):
    site: str
    items: list[DerChange]


class DerCount(m.Body):
    count: int
    reason: m.Reason | None = None


class DerCounted(m.Answer):
    site: str
    count: int
    added: int


ROUTES = [
    Route("GET", "/api/sites/{site}/ders", "site_ders", False, "A site's DERs: documents and telemetry",
          SiteDers),
    Route("PUT", "/api/sites/{site}/ders", "site_ders_count", True,
          "Set how many DER instances the site's DERList holds", DerCounted, body=DerCount),
    Route("GET", "/api/sites/{site}/ders/history", "site_ders_history", False,
          "Changes of a site's DER documents, newest first", DerHistory, query=DerHistoryQuery),
]  # fmt: skip

# 2030.5 quantity types (value x 10^multiplier) and their units.
UNITS = {"ActivePower": "W", "ReactivePower": "var", "ApparentPower": "VA", "WattHour": "Wh",
         "AmpereHour": "Ah", "VoltageRMS": "V", "CurrentRMS": "A"}  # fmt: skip
DOCUMENT_UNITS = {
    kind: {
        f.name: UNITS[f.metadata["xsd_type"]]
        for f in dataclasses.fields(cls)
        if f.metadata.get("xsd_type") in UNITS
    }
    for kind, cls in DER_DOCUMENT_TYPES.items()
}


def real_units(data: Any) -> Any:
    """A document as JSON with each ``{"value", "multiplier"}`` quantity as one number in its unit."""
    if isinstance(data, dict):
        if "value" in data and set(data) <= {"value", "multiplier"}:
            value = data["value"] * 10.0 ** data.get("multiplier", 0)
            return int(value) if float(value).is_integer() else value
        return {k: real_units(v) for k, v in data.items()}
    if isinstance(data, list):
        return [real_units(v) for v in data]
    return data


async def site_ders(head: HeadEnd, request: web.Request) -> Any:
    async with head.store.read() as conn:
        site = await head.site_row(conn, request.match_info["site"])
        der_ids = (
            (await conn.execute(sa.select(ders.c.id).where(ders.c.site_id == site.id).order_by(ders.c.id)))
            .scalars()
            .all()
        )
        docs = (await conn.execute(sa.select(der_documents).where(der_documents.c.der_id.in_(der_ids)))).all()
        changes = dict(
            (
                await conn.execute(
                    sa.select(der_history.c.der_id, sa.func.count())
                    .where(der_history.c.der_id.in_(der_ids))
                    .group_by(der_history.c.der_id)
                )
            ).all()
        )
        points = (
            await conn.execute(
                sa.select(mups.c.id, mups.c.mrid, mups.c.description, mups.c.role_flags)
                .where(mups.c.site_id == site.id)
                .order_by(mups.c.id)
            )
        ).all()
        points = [p for p in points if int(p.role_flags or "0", 16) & ROLE_DER]
        point_ids = [p.id for p in points]
        latest = (  # the newest reading of each of their MirrorMeterReadings
            sa.select(sa.func.max(readings.c.id))
            .join(meter_readings, meter_readings.c.id == readings.c.meter_reading_id)
            .where(meter_readings.c.mup_id.in_(point_ids))
            .group_by(readings.c.meter_reading_id)
        )
        rows = (
            await conn.execute(
                sa.select(
                    readings.c.time_start,
                    readings.c.duration,
                    readings.c.value,
                    readings.c.received_at,
                    meter_readings.c.mrid,
                    meter_readings.c.description,
                    meter_readings.c.reading_type,
                    meter_readings.c.mup_id,
                    mups.c.mrid.label("mup_mrid"),
                    mups.c.role_flags,
                    mups.c.description.label("device"),
                )
                .join(meter_readings, meter_readings.c.id == readings.c.meter_reading_id)
                .join(mups, mups.c.id == meter_readings.c.mup_id)
                .where(readings.c.id.in_(latest))
                .order_by(meter_readings.c.id)
            )
        ).all()
    by_der: dict[int, dict[str, Any]] = {i: {} for i in der_ids}
    for row in docs:
        doc = to_jsonable(from_xml(row.xml.encode(), DER_DOCUMENT_TYPES[row.kind]))
        units = {k: u for k, u in DOCUMENT_UNITS[row.kind].items() if k in doc}
        by_der[row.der_id][row.kind] = {"updated_at": row.updated_at, **real_units(doc), "units": units}
    return {
        "site": site.lfdi,
        "ders": [
            {
                "id": der_id,
                "href": f"/edev/{site.id}/der/{der_id}",
                "documents": by_der[der_id],
                "changes": changes.get(der_id, 0),
            }
            for der_id in der_ids
        ],
        "telemetry": [
            {
                "mirror_usage_point": p.mrid,
                "device": p.description,
                "readings": [reading_json(r) for r in rows if r.mup_id == p.id],
            }
            for p in points
        ],
    }


async def site_ders_history(head: HeadEnd, request: web.Request, query: DerHistoryQuery) -> Any:
    der, kind, since, limit = query.der, query.kind, query.since, query.limit
    async with head.store.read() as conn:
        site = await head.site_row(conn, request.match_info["site"])
        select = (
            sa.select(der_history)
            .join(ders, ders.c.id == der_history.c.der_id)
            .where(ders.c.site_id == site.id)
        )
        if der is not None:
            select = select.where(der_history.c.der_id == der)
        if kind is not None:
            select = select.where(der_history.c.kind == kind)
        if since is not None:
            select = select.where(der_history.c.at >= since)
        rows = (await conn.execute(select.order_by(der_history.c.id.desc()).limit(limit))).all()
    return {
        "site": site.lfdi,
        "items": [
            {
                "der": row.der_id,
                "kind": row.kind,
                "document": DER_DOCUMENT_TYPES[row.kind].__name__,
                "at": row.at,
                "changes": json.loads(row.changes),
                "units": {k: u for k, u in DOCUMENT_UNITS[row.kind].items() if k in json.loads(row.changes)},
            }
            for row in rows
        ],
    }


async def site_ders_count(head: HeadEnd, request: web.Request, body: DerCount) -> Any:
    async with head.store.read() as conn:
        site = await head.site_row(conn, request.match_info["site"])
    actor = head.actor(request)
    added = await head.admin.set_der_count(site.lfdi, body.count, actor=actor, reason=body.reason)
    return {"site": site.lfdi, "count": body.count, "added": added}
