"""A Boffer portfolio read from a derlink server's database (issue 18: "from derlink's own data").

Per site of the scope: the DER documents it last PUT (IEEE 2030.5 clause 10.10), the limits the server
published to it over each 5-minute period (rebuilt as the compliance assessment does, from controls, bulk
DOE intervals and defaults: :func:`server.compliance.assess.site_limits`), and its recent site-power
readings as a persistence forecast of native load.  Each (site, period) goes through the pure
:func:`aggregator.boffer.derlink_source.site_from_der_documents`.  Read-only: one read connection, no writes.

The limit of a period is the tightest that applies at any moment of it, so the offer stays inside the
envelope for the whole interval.  The load forecast is the mean net import over ``lookback_s`` before
``start`` (exports count as 0 W): the connection point does not separate native load from generation.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sqlalchemy as sa

from aggregator.boffer.derlink_source import site_from_der_documents
from aggregator.boffer.model import Portfolio
from sep2.xml import from_xml
from server.compliance.assess import published_controls, site_limits, site_readings, site_targets_bulk
from server.compliance.targets import resolve_scope, target_sites_query
from server.store import der_documents, ders, sites
from server.store.schema import DER_DOCUMENT_TYPES

PERIOD_S = 300  # a 5-minute dispatch interval (seed 004 L144)
ROLES = {"dercap": "cap", "derg": "settings", "dera": "availability"}


@dataclass
class StorePortfolio:
    portfolio: Portfolio
    start: int
    skipped: list[str] = field(default_factory=list)  # why a site or DER was left out


async def _der_documents(conn: Any, site_ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    per_der: dict[tuple[int, int], dict[str, Any]] = {}
    for site_id, der_id, kind, xml in await conn.execute(
        sa.select(ders.c.site_id, ders.c.id, der_documents.c.kind, der_documents.c.xml)
        .join(der_documents, der_documents.c.der_id == ders.c.id)
        .where(ders.c.site_id.in_(site_ids), der_documents.c.kind.in_(list(ROLES)))
        .order_by(ders.c.site_id, ders.c.id)
    ):
        doc = from_xml(xml.encode(), DER_DOCUMENT_TYPES[kind])
        per_der.setdefault((site_id, der_id), {})[ROLES[kind]] = doc
    out: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for (site_id, _der), docs in per_der.items():
        out[site_id].append(docs)
    return out


def _period_limits(segments: list[Any], start: int, periods: int) -> tuple[np.ndarray, np.ndarray]:
    """(export W, import W) per period: the tightest over the period, +inf where nothing limits it."""
    export = np.full(periods, np.inf)
    imp = np.full(periods, np.inf)
    for seg in segments:
        first = max(0, (seg.start - start) // PERIOD_S)
        last = min(periods, -(-(seg.end - start) // PERIOD_S))
        if seg.export_limit_w is not None:
            export[first:last] = np.minimum(export[first:last], seg.export_limit_w)
        if seg.import_limit_w is not None:
            imp[first:last] = np.minimum(imp[first:last], seg.import_limit_w)
    return export, imp


async def portfolio_from_store(
    store: Any, *, group: str | None, start: int, periods: int, lookback_s: int = 3600
) -> StorePortfolio:
    """The portfolio of ``group`` (its nested groups included; every site when None) for ``periods``
    5-minute periods from ``start`` (unix seconds).  Sites are named by NMI, else LFDI."""
    if periods < 1:
        raise ValueError(f"periods: must be >= 1, got {periods}")
    if lookback_s < 0:
        raise ValueError(f"lookback_s: must be >= 0, got {lookback_s}")
    end = start + periods * PERIOD_S
    skipped: list[str] = []
    async with store.read() as conn:
        key = await resolve_scope(conn, group=group)
        rows = list((await conn.execute(target_sites_query(key).order_by(sites.c.id))).all())
        if not rows:
            raise ValueError(f"group: no sites in {group or 'the database'}")
        ids = [row.id for row in rows]
        targets, _own = await site_targets_bulk(conn, ids)
        published = await published_controls(conn, ids, start, end)
        series = await site_readings(conn, ids, start - lookback_s, start)
        documents = await _der_documents(conn, ids)
    names: list[str] = []
    cols: dict[str, list[np.ndarray]] = defaultdict(list)
    for row in rows:
        name = row.nmi or row.lfdi
        ders_ = [d for d in documents.get(row.id, []) if d.get("cap") is not None]
        if len(ders_) < len(documents.get(row.id, [])):
            skipped.append(f"{name}: a DER without DERCapability left out")
        if not ders_:
            skipped.append(f"{name}: no DERCapability: site left out")
            continue
        segments = site_limits(published, targets[row.id], row.id, start, end)
        export, imp = _period_limits(segments, start, periods)
        load = [max(w, 0.0) for _at, w, _d in series.get(row.id, [])]
        per_period = [
            site_from_der_documents(
                name,
                ders_,
                import_limit_w=None if np.isinf(imp[p]) else float(imp[p]),
                export_limit_w=None if np.isinf(export[p]) else float(export[p]),
                recent_load_w=load,
            )
            for p in range(periods)
        ]
        names.append(name)
        for attr in ("native_load", "uncontrolled_gen", "flex_load", "flex_gen"):
            cols[attr].append(np.array([getattr(s, attr) for s in per_period]))
        cols["import_limit"].append(np.array([np.inf if s.import_limit is None else s.import_limit
                                              for s in per_period]))  # fmt: skip
        cols["export_limit"].append(np.array([np.inf if s.export_limit is None else s.export_limit
                                              for s in per_period]))  # fmt: skip
    if not names:
        raise ValueError("portfolio: no site has a DERCapability to offer")
    portfolio = Portfolio(
        site_ids=names,
        **{attr: np.vstack(values) for attr, values in cols.items()},
        energy_stored=np.zeros(len(names)),
    )
    portfolio.check()
    return StorePortfolio(portfolio, start, skipped)
