"""The compliance assessment: each site's stored telemetry against the limits that were published to it.

Seed 000 GS14 (conformance framework), seed 001 L695 (4.3.11 assess compliance and conformance) and L847
(breach and compensation). For a scope (a site, a group with its nested groups, or every site) and a time
range, per site:

* **the limits that applied**, rebuilt from what the server published and when (:func:`site_limits`):
  DERControls of every program the site sees, each over [start, end) from its publication until it was
  cancelled or superseded (so a control that a later one split stops where its pieces take over), and the
  bulk DOE intervals from their upload. Within a program the newest wins
  (:func:`server.store.timeline.paint`); across programs, per mode, the lowest primacy wins (IEEE
  2030.5-2018 §12.1.3.2); a mode no event sets takes the program's DefaultDERControl (current value:
  defaults keep no history). At the connection point the export limit is the tightest of opModExpLimW,
  opModGenLimW, and 0 while opModConnect or opModEnergize is false;
* **compliant intervals and breaches** by :mod:`server.compliance.judge` (the demo's rules);
* **silence**: gaps in the site readings longer than ``silent_posts`` x the site's postRate;
* **non-responders**: controls asking for Responses that got none within ``ack_within_s``;
* **capability mismatches**: a control used a mode the site's DERCapability does not declare
  (``csipaus:doeModesSupported`` for the limits, ``modesSupported`` for connect/energize);
* **emergency curtailment**: per emergency control, per group, the export the sites shed against what was
  asked (seed 000 L641 "curtailment quantities");
* **findings**: sites whose breaches or silence add up to ``persistent_breach_s``; the operator may act on
  one with a normal, audited control (:func:`act_on_finding`; seed 001 L847 "reversion to zero export").

Sites are assessed in chunks (:data:`CHUNK_SITES`), so memory stays bounded by the chunk, not the fleet.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from sep2 import resources as r
from sep2.xml import from_xml
from server.compliance.judge import IntervalResult, Rules, settle_from, tally
from server.compliance.targets import target_sites_query
from server.store import (
    controls,
    default_controls,
    der_documents,
    ders,
    doe_intervals,
    doe_uploads,
    groups,
    memberships,
    meter_readings,
    mups,
    programs,
    rate_settings,
    readings,
    responses,
    sites,
)
from server.store.doe import MAX_DURATION
from server.store.timeline import Piece, Window, paint

CHUNK_SITES = 250
UOM_W, FLOW_FORWARD = 38, 1
MODES = ("export", "import", "generation", "connect", "energize")
# csipaus:doeModesSupported bits and DERControlType (modesSupported) bits for the modes judged here.
DOE_BITS = {"export": 0, "import": 1, "generation": 2}
MODE_BITS = {"connect": 2, "energize": 3}
EMERGENCY_PROGRAM = "emergency"
BASELINE_S = 900  # emergency curtailment: mean export over this long before the command


# ------------------------------------------------------------------------------------------ settings


@dataclass(frozen=True, slots=True)
class Setting:
    """What one published control (or DOE interval, or default) asked, and who set it."""

    modes: tuple[tuple[str, float | bool], ...]
    source: str  # "control <mRID>", "DOE upload <n>", "default <mRID>"
    program: str
    mrid: str | None = None

    def get(self, mode: str) -> float | bool | None:
        for name, value in self.modes:
            if name == mode:
                return value
        return None


@lru_cache(maxsize=4096)
def _base_modes(text: str) -> tuple[tuple[str, float | bool], ...]:
    data = json.loads(text)
    out: list[tuple[str, float | bool]] = []
    for mode, name in (
        ("export", "opModExpLimW"),
        ("import", "opModImpLimW"),
        ("generation", "opModGenLimW"),
    ):
        power = data.get(name)
        if power is not None:
            out.append((mode, power["value"] * 10.0 ** (power.get("multiplier") or 0)))
    for mode, name in (("connect", "opModConnect"), ("energize", "opModEnergize")):
        if data.get(name) is not None:
            out.append((mode, bool(data[name])))
    return tuple(out)


@lru_cache(maxsize=65536)
def _doe_setting(
    export_w: int | None, import_w: int | None, generation_w: int | None, upload_id: int
) -> Setting:
    modes = tuple(
        (mode, float(value))
        for mode, value in (("export", export_w), ("import", import_w), ("generation", generation_w))
        if value is not None
    )
    return Setting(modes, f"DOE upload {upload_id}", "doe")


def connection_limits(get: Any) -> tuple[float | None, float | None, str | None, str | None]:
    """(export W, import W, export set by, import set by) at the connection point from per-mode winners.

    ``get(mode)`` -> (value, Setting) or None."""
    export_w: float | None = None
    export_by: str | None = None
    for mode in ("export", "generation"):
        found = get(mode)
        if found is not None and (export_w is None or found[0] < export_w):
            export_w, export_by = float(found[0]), found[1].source
    for mode in ("connect", "energize"):
        found = get(mode)
        if found is not None and found[0] is False:
            export_w, export_by = 0.0, found[1].source
    imp = get("import")
    return export_w, (float(imp[0]) if imp else None), export_by, (imp[1].source if imp else None)


# ------------------------------------------------------------------------------------------ limits


@dataclass
class LimitSegment:
    start: int
    end: int
    export_limit_w: float | None
    import_limit_w: float | None
    export_set_by: str | None
    import_set_by: str | None
    modes: frozenset[str] = frozenset()


@dataclass
class Published:
    """Everything published that can matter for a chunk of sites over a range, read once."""

    programs: list[Any]
    controls_by_target: dict[str, list[Any]]
    defaults: dict[tuple[int, str], Any]
    does: dict[int, list[tuple[Any, ...]]]  # (site, start, duration, export, import, generation, upload, at)


def site_limits(
    published: Published, site_keys: list[tuple[str, int]], site_id: int, t0: int, t1: int
) -> list[LimitSegment]:
    """The limits that applied to one site over [t0, t1), with provenance, as non-overlapping segments."""
    rank = dict(site_keys)
    group_ids = {int(k[2:]) for k in rank if k.startswith("g:")}
    visible = [p for p in published.programs if p.group_id is None or p.group_id in group_ids]
    per_program: list[tuple[Any, list[Piece[Setting]]]] = []
    for program in visible:
        windows: list[Window[Setting]] = []
        for key in rank:
            for c in published.controls_by_target.get(key, ()):
                if c.program_id != program.id:
                    continue
                retired = min((t for t in (c.cancelled_at, c.superseded_at) if t is not None), default=None)
                setting = Setting(_base_modes(c.base), f"control {c.mrid}", program.key, c.mrid)
                windows.append(
                    Window(
                        c.start,
                        c.start + c.duration,
                        c.creation_time,
                        retired,
                        (c.creation_time, 0, c.id, 0),
                        setting,
                    )
                )
        if program.key == "doe":
            for _site, start, duration, exp, imp, gen, upload_id, at in published.does.get(site_id, ()):
                # A hole (no limit: a site control replaced the rows there, server.store.doe) hides the
                # older rows and sets nothing; it ranks just below the control that made it.
                hole = exp is None and imp is None and gen is None
                windows.append(
                    Window(
                        start,
                        start + duration,
                        at,
                        None,
                        (at, 0, -1, 0) if hole else (at, upload_id, -duration, start),
                        _doe_setting(exp, imp, gen, upload_id),
                    )
                )
        per_program.append((program, paint(windows, since=t0, until=t1)))
    defaults: dict[str, tuple[float | bool, Setting]] = {}
    for program in visible:  # sorted by primacy: the first default that sets a mode wins
        rows = [published.defaults[(program.id, k)] for k in rank if (program.id, k) in published.defaults]
        if not rows:
            continue
        row = max(rows, key=lambda d: rank[d.target])
        setting = Setting(_base_modes(row.base), f"default {row.mrid}", program.key, row.mrid)
        for mode, value in setting.modes:
            defaults.setdefault(mode, (value, setting))
    cuts = sorted({t0, t1} | {t for _, pieces in per_program for p in pieces for t in (p.start, p.end)})
    out: list[LimitSegment] = []
    index = {id(prog): 0 for prog, _ in per_program}
    for a, b in itertools.pairwise(cuts):
        if a >= b or a < t0 or b > t1:
            continue
        winners: dict[str, tuple[float | bool, Setting]] = {}
        for program, pieces in per_program:
            i = index[id(program)]
            while i < len(pieces) and pieces[i].end <= a:
                i += 1
            index[id(program)] = i
            if i < len(pieces) and pieces[i].start <= a:
                for mode, value in pieces[i].item.modes:
                    winners.setdefault(mode, (value, pieces[i].item))
        for mode, found in defaults.items():
            winners.setdefault(mode, found)
        exp, imp, exp_by, imp_by = connection_limits(winners.get)
        if exp is None and imp is None:
            continue
        modes = frozenset(winners)
        last = out[-1] if out else None
        if (
            last
            and last.end == a
            and (last.export_limit_w, last.import_limit_w, last.export_set_by, last.import_set_by)
            == (exp, imp, exp_by, imp_by)
        ):
            last.end = b
            last.modes |= modes
        else:
            out.append(LimitSegment(a, b, exp, imp, exp_by, imp_by, modes))
    return out


# ------------------------------------------------------------------------------------------ results


@dataclass(kw_only=True)
class SiteInterval(IntervalResult):
    export_set_by: str | None = None
    import_set_by: str | None = None


@dataclass
class SiteAssessment:
    site_id: int
    lfdi: str
    nmi: str | None
    intervals: list[SiteInterval] = field(default_factory=list)
    readings: int = 0
    post_rate_s: int = 300
    last_reading: int | None = None
    silent_periods: list[tuple[int, int]] = field(default_factory=list)
    silent_now: bool = False
    non_responded: list[str] = field(default_factory=list)
    mismatches: list[dict[str, Any]] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)  # the site's own groups (curtailment per group)

    @property
    def breached(self) -> list[SiteInterval]:
        return [i for i in self.intervals if i.compliant is False]

    @property
    def breach_s(self) -> int:
        return sum(i.breach_s for i in self.intervals)

    @property
    def silent_s(self) -> int:
        return sum(b - a for a, b in self.silent_periods)

    def summary(self, *, detail: bool = False) -> dict[str, Any]:
        judged = [i for i in self.intervals if i.compliant is not None]
        within = sum(i.readings_within for i in self.intervals)
        total = sum(i.readings_judged for i in self.intervals)
        out: dict[str, Any] = {
            "lfdi": self.lfdi,
            "nmi": self.nmi,
            "intervals": len(self.intervals),
            "intervals_judged": len(judged),
            "intervals_compliant": sum(1 for i in judged if i.compliant),
            "readings": self.readings,
            "readings_judged": total,
            "compliance_pct": round(100.0 * within / total, 2) if total else None,
            "breaches": [breach_json(i) for i in self.breached],
            "breach_s": self.breach_s,
            "post_rate_s": self.post_rate_s,
            "last_reading": self.last_reading,
            "silent": self.silent_now,
            "silent_periods": [{"from": a, "to": b, "seconds": b - a} for a, b in self.silent_periods],
            "non_responded": self.non_responded,
            "capability_mismatches": self.mismatches,
        }
        if detail:
            out["interval_detail"] = [i.as_json() for i in self.intervals]
        return out


def breach_json(i: SiteInterval) -> dict[str, Any]:
    limit_w = i.export_limit_w if i.worst_limit == "export" else i.import_limit_w
    return {
        "from": i.start_unix,
        "to": i.end_unix,
        "limit": i.worst_limit,
        "limit_w": limit_w,
        "set_by": i.export_set_by if i.worst_limit == "export" else i.import_set_by,
        "worst_excess_w": round(i.worst_excess_w, 1),
        "worst_at": i.worst_at_unix,
        "breach_s": i.breach_s,
        "readings_outside": i.readings_judged - i.readings_within,
        "readings_judged": i.readings_judged,
    }


# ------------------------------------------------------------------------------------------ reading


async def _rows(conn: AsyncConnection, stmt: sa.Select) -> list[tuple[Any, ...]]:
    """Plain tuples of a SELECT. On SQLite through the driver's ``fetchall`` (one thread hop instead of one
    per row: the assessment reads millions of readings); elsewhere through SQLAlchemy."""
    if conn.dialect.name != "sqlite":
        return [tuple(row) for row in await conn.execute(stmt)]
    compiled = stmt.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
    params = [compiled.params[name] for name in compiled.positiontup or ()]
    raw = (await conn.get_raw_connection()).driver_connection
    async with raw.execute(str(compiled), params) as cursor:
        return list(await cursor.fetchall())


@lru_cache(maxsize=1024)
def _is_site_power(reading_type_xml: str) -> int | None:
    """The power-of-ten multiplier of a site active power ReadingType (W, forward flow), else None."""
    rt = from_xml(reading_type_xml.encode(), r.ReadingType)
    if rt.uom == UOM_W and rt.flowDirection == FLOW_FORWARD and not rt.phase:
        return rt.powerOfTenMultiplier or 0
    return None


async def site_targets_bulk(
    conn: AsyncConnection, site_ids: list[int]
) -> tuple[dict[int, list[tuple[str, int]]], dict[int, list[str]]]:
    """Per site: its target keys with specificity (as the 2030.5 side ranks them), and its own groups."""
    names: dict[int, str] = {}
    parents: dict[int, int | None] = {}
    for gid, parent, name in await conn.execute(sa.select(groups.c.id, groups.c.parent_id, groups.c.name)):
        parents[gid], names[gid] = parent, name
    direct: dict[int, list[int]] = defaultdict(list)
    for site_id, gid in await conn.execute(
        sa.select(memberships.c.site_id, memberships.c.group_id).where(memberships.c.site_id.in_(site_ids))
    ):
        direct[site_id].append(gid)
    out = {}
    for site_id in site_ids:
        hops: dict[int, int] = {}
        for gid in direct.get(site_id, ()):
            hop, g = 1, gid
            while g is not None and hops.get(g, 10**6) > hop:
                hops[g] = hop
                g, hop = parents.get(g), hop + 1
        out[site_id] = (
            [(f"s:{site_id}", 1000)] + [(f"g:{g}", 500 - h) for g, h in hops.items()] + [("all", 0)]
        )
    return out, {site_id: sorted(names[g] for g in gids) for site_id, gids in direct.items()}


async def published_controls(conn: AsyncConnection, site_ids: list[int], t0: int, t1: int) -> Published:
    """Everything that could set these sites' limits over [t0, t1): programs, controls, defaults, DOE rows."""
    progs = list((await conn.execute(sa.select(programs).order_by(programs.c.primacy, programs.c.id))).all())
    by_target: dict[str, list[Any]] = defaultdict(list)
    site_keys = [f"s:{i}" for i in site_ids]
    rows = await conn.execute(
        sa.select(controls).where(
            controls.c.start < t1,
            controls.c.start + controls.c.duration > t0,
            controls.c.creation_time < t1,
            sa.or_(~controls.c.target.like("s:%"), controls.c.target.in_(site_keys)),
        )
    )
    for row in rows:
        by_target[row.target].append(row)
    defaults = {(d.program_id, d.target): d for d in await conn.execute(sa.select(default_controls))}
    does: dict[int, list[tuple[Any, ...]]] = defaultdict(list)
    for d in await _rows(
        conn,
        sa.select(
            doe_intervals.c.site_id,
            doe_intervals.c.start,
            doe_intervals.c.duration,
            doe_intervals.c.export_w,
            doe_intervals.c.import_w,
            doe_intervals.c.generation_w,
            doe_intervals.c.upload_id,
            doe_uploads.c.at,
        )
        .join(doe_uploads, doe_uploads.c.id == doe_intervals.c.upload_id)
        .where(
            doe_intervals.c.site_id.in_(site_ids),
            doe_intervals.c.start > t0 - MAX_DURATION,
            doe_intervals.c.start < t1,
        ),
    ):
        does[d[0]].append(d)
    return Published(progs, by_target, defaults, does)


async def site_readings(
    conn: AsyncConnection, site_ids: list[int], t0: int, t1: int
) -> dict[int, list[tuple[int, float, int]]]:
    """Site power readings per site over [t0, t1): (time, W + import, duration)."""
    mmrs: dict[int, tuple[int, int]] = {}
    for mmr_id, site_id, rt_xml in await conn.execute(
        sa.select(meter_readings.c.id, mups.c.site_id, meter_readings.c.reading_type)
        .join(mups, mups.c.id == meter_readings.c.mup_id)
        .where(mups.c.site_id.in_(site_ids))
    ):
        multiplier = _is_site_power(rt_xml)
        if multiplier is not None:
            mmrs[mmr_id] = (site_id, multiplier)
    out: dict[int, list[tuple[int, float, int]]] = defaultdict(list)
    if not mmrs:
        return out
    result = await _rows(
        conn,
        sa.select(readings.c.meter_reading_id, readings.c.time_start, readings.c.value, readings.c.duration)
        .where(
            readings.c.meter_reading_id.in_(list(mmrs)),
            readings.c.time_start >= t0,
            readings.c.time_start < t1,
        )
        .order_by(readings.c.meter_reading_id, readings.c.time_start),  # the unique index's order
    )
    for mmr_id, at, value, duration in result:
        site_id, multiplier = mmrs[mmr_id]
        out[site_id].append((at, value * 10.0**multiplier if multiplier else float(value), duration or 0))
    if len({site for site, _ in mmrs.values()}) != len(mmrs):  # several site meters: interleave them
        for series in out.values():
            series.sort()
    return out


async def _post_rates(
    conn: AsyncConnection, targets: dict[int, list[tuple[str, int]]], default: int
) -> dict[int, int]:
    rows = (await conn.execute(sa.select(rate_settings).where(rate_settings.c.resource == "post"))).all()
    settings = {row.target: row.value for row in rows}
    out = {}
    for site_id, keys in targets.items():
        found = [(rank, settings[k]) for k, rank in keys if k in settings]
        out[site_id] = max(found)[1] if found else default
    return out


@lru_cache(maxsize=1024)
def _capability(xml: str) -> tuple[int | None, int | None]:
    cap = from_xml(xml.encode(), r.DERCapability)
    doe = int(cap.doeModesSupported, 16) if cap.doeModesSupported else None
    modes = int(cap.modesSupported, 16) if cap.modesSupported else None
    return doe, modes


async def _capabilities(
    conn: AsyncConnection, site_ids: list[int]
) -> dict[int, list[tuple[int | None, int | None]]]:
    out: dict[int, list[tuple[int | None, int | None]]] = defaultdict(list)
    for site_id, xml in await conn.execute(
        sa.select(ders.c.site_id, der_documents.c.xml)
        .join(ders, ders.c.id == der_documents.c.der_id)
        .where(ders.c.site_id.in_(site_ids), der_documents.c.kind == "dercap")
    ):
        out[site_id].append(_capability(xml))
    return out


# ------------------------------------------------------------------------------------------ the service


@dataclass
class Assessment:
    scope: str
    t0: int
    t1: int
    rules: Rules
    sites: int = 0
    sites_judged: int = 0
    sites_compliant: int = 0
    breaches: int = 0
    readings: int = 0
    silent: list[str] = field(default_factory=list)
    non_responders: dict[str, list[str]] = field(default_factory=dict)  # mRID -> LFDIs
    mismatches: list[dict[str, Any]] = field(default_factory=list)
    findings: list[dict[str, Any]] = field(default_factory=list)
    curtailment: list[dict[str, Any]] = field(default_factory=list)
    site_results: list[dict[str, Any]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "scope": self.scope,
            "from": self.t0,
            "to": self.t1,
            "rules": self.rules.__dict__,
            "sites": self.sites,
            "sites_judged": self.sites_judged,
            "sites_compliant": self.sites_compliant,
            "sites_breached": self.sites_judged - self.sites_compliant,
            "breaches": self.breaches,
            "readings": self.readings,
            "silent": self.silent,
            "non_responders": self.non_responders,
            "capability_mismatches": self.mismatches,
            "findings": self.findings,
            "curtailment": self.curtailment,
            "site_results": self.site_results,
        }


async def assess_sites(
    conn: AsyncConnection,
    scope: str,
    t0: int,
    t1: int,
    *,
    now: int,
    rules: Rules = Rules(),
    default_post_rate: int = 300,
    chunk: int = CHUNK_SITES,
) -> AsyncIterator[tuple[SiteAssessment, list[LimitSegment], list[tuple[int, float, int]]]]:
    """Each site of ``scope`` assessed over [t0, t1), chunk by chunk, with its limits and readings."""
    if not t0 < t1:
        raise ValueError(f"to: the range must end after it starts ({t0} >= {t1})")
    site_rows = list((await conn.execute(target_sites_query(scope).order_by(sites.c.id))).all())
    for i in range(0, len(site_rows), chunk):
        part = site_rows[i : i + chunk]
        ids = [s.id for s in part]
        targets, own_groups = await site_targets_bulk(conn, ids)
        published = await published_controls(conn, ids, t0, t1)
        series = await site_readings(conn, ids, t0, t1)
        rates = await _post_rates(conn, targets, default_post_rate)
        caps = await _capabilities(conn, ids)
        acked = await _acknowledged(conn, published, ids)
        for s in part:
            limits = site_limits(published, targets[s.id], s.id, t0, t1)
            result = SiteAssessment(
                s.id, s.lfdi, s.nmi, post_rate_s=rates[s.id], groups=own_groups.get(s.id, [])
            )
            previous: tuple[float | None, float | None] | None = None
            last_end = None
            for seg in limits:
                now_limits = (seg.export_limit_w, seg.import_limit_w)
                settle = settle_from(
                    rules, seg.start, previous if last_end == seg.start else None, now_limits
                )
                result.intervals.append(
                    SiteInterval(
                        start_unix=seg.start,
                        end_unix=seg.end,
                        judged_from_unix=min(settle, seg.end),
                        export_limit_w=seg.export_limit_w,
                        import_limit_w=seg.import_limit_w,
                        export_set_by=seg.export_set_by,
                        import_set_by=seg.import_set_by,
                    )
                )
                previous, last_end = now_limits, seg.end
            data = series.get(s.id, [])
            tally(rules, result.intervals, data)
            result.readings = len(data)
            result.last_reading = data[-1][0] if data else None
            result.silent_periods = _silences(data, t0, min(t1, now), rules.silent_posts * result.post_rate_s)
            result.silent_now = bool(result.silent_periods) and result.silent_periods[-1][1] >= min(t1, now)
            result.non_responded = _non_responded(
                published, targets[s.id], acked.get(s.id, set()), rules, now
            )
            result.mismatches = _mismatches(limits, published, targets[s.id], s.id, caps.get(s.id))
            yield result, limits, data


def _silences(data: list[tuple[int, float, int]], t0: int, t1: int, gap: int) -> list[tuple[int, int]]:
    out = []
    last = t0
    for at, _w, _d in data:
        if at - last > gap:
            out.append((last, at))
        if at > last:
            last = at
    if t1 - last > gap:
        out.append((last, t1))
    return out


def _asks_response(c: Any) -> bool:
    return bool(c.response_required) and int(c.response_required, 16) != 0


async def _acknowledged(
    conn: AsyncConnection, published: Published, site_ids: list[int]
) -> dict[int, set[int]]:
    """For each site, the ids of the controls (originals, for pieces) it sent any Response to."""
    ids = {
        c.id: getattr(c, "split_from", None) or c.id
        for rows in published.controls_by_target.values()
        for c in rows
    }
    if not ids:
        return {}
    out: dict[int, set[int]] = defaultdict(set)
    query = sa.select(responses.c.site_id, responses.c.control_id).where(
        responses.c.site_id.in_(site_ids), responses.c.control_id.in_(list(ids))
    )
    for site_id, control_id in await conn.execute(query):
        out[site_id].add(ids[control_id])
    return out


def _non_responded(
    published: Published, keys: list[tuple[str, int]], acked: set[int], rules: Rules, now: int
) -> list[str]:
    out = []
    for key, _ in keys:
        for c in published.controls_by_target.get(key, ()):
            if getattr(c, "split_from", None):  # a piece: its original asks for the Responses
                continue
            if _asks_response(c) and c.creation_time + rules.ack_within_s <= now and c.id not in acked:
                out.append(c.mrid)
    return sorted(out)


def _mismatches(
    limits: list[LimitSegment],
    published: Published,
    keys: list[tuple[str, int]],
    site_id: int,
    caps: list[tuple[int | None, int | None]] | None,
) -> list[dict[str, Any]]:
    used = frozenset().union(*(seg.modes for seg in limits)) if limits else frozenset()
    if not used:
        return []
    if not caps:
        return [{"mode": None, "problem": "no DERCapability declared", "modes_used": sorted(used)}]
    doe = 0
    modes = 0
    for d, m in caps:
        doe |= d or 0
        modes |= m or 0
    out = []
    for mode in sorted(used):
        if mode in DOE_BITS and not doe >> DOE_BITS[mode] & 1:
            out.append({"mode": mode, "problem": "csipaus:doeModesSupported does not include it"})
        if mode in MODE_BITS and not modes >> MODE_BITS[mode] & 1:
            out.append({"mode": mode, "problem": "DERCapability.modesSupported does not include it"})
    return out


async def assess(
    conn: AsyncConnection,
    scope: str,
    t0: int,
    t1: int,
    *,
    now: int,
    rules: Rules = Rules(),
    default_post_rate: int = 300,
    detail: bool = False,
    keep_sites: bool = True,
) -> Assessment:
    """The assessment of ``scope`` over [t0, t1) (see the module docstring)."""
    out = Assessment(scope, t0, t1, rules)
    emergency = await _emergencies(conn, scope, t0, t1)
    curtail: dict[int, dict[str, Any]] = {}
    async for site, _limits, data in assess_sites(
        conn, scope, t0, t1, now=now, rules=rules, default_post_rate=default_post_rate
    ):
        out.sites += 1
        out.readings += site.readings
        judged = [i for i in site.intervals if i.compliant is not None]
        if judged:
            out.sites_judged += 1
            out.sites_compliant += not site.breached
        out.breaches += len(site.breached)
        if site.silent_now:
            out.silent.append(site.lfdi)
        for mrid in site.non_responded:
            out.non_responders.setdefault(mrid, []).append(site.lfdi)
        for m in site.mismatches:
            out.mismatches.append({"lfdi": site.lfdi, **m})
        for kind, seconds in (("breach", site.breach_s), ("silence", site.silent_s)):
            if seconds and seconds >= rules.persistent_breach_s:
                out.findings.append(
                    {
                        "lfdi": site.lfdi,
                        "kind": f"persistent {kind}",
                        "seconds": seconds,
                        "suggested_action": "zero export (seed 001 L847)",
                    }
                )
        for e in emergency:
            if site.site_id in e["site_ids"]:
                _curtail_site(curtail.setdefault(e["id"], _curtail_entry(e)), e, site, data, rules)
        if keep_sites:
            out.site_results.append(site.summary(detail=detail))
    out.curtailment = [_curtail_json(c) for c in curtail.values()]
    return out


# ------------------------------------------------------------------------------------------ curtailment


async def _emergencies(conn: AsyncConnection, scope: str, t0: int, t1: int) -> list[dict[str, Any]]:
    rows = (
        await conn.execute(
            sa.select(controls)
            .join(programs, programs.c.id == controls.c.program_id)
            .where(
                programs.c.key == EMERGENCY_PROGRAM,
                controls.c.start < t1,
                controls.c.start + controls.c.duration > t0,
            )
            .order_by(controls.c.id)
        )
    ).all()
    in_scope = {row.id for row in await conn.execute(target_sites_query(scope))}
    out = []
    for row in rows:
        if getattr(row, "split_from", None):
            continue
        members = {s.id for s in await conn.execute(target_sites_query(row.target))} & in_scope
        if not members:
            continue
        modes = dict(_base_modes(row.base))
        asked = min(
            [float(v) for k, v in modes.items() if k in ("export", "generation")]
            + [0.0 for k, v in modes.items() if k in ("connect", "energize") and v is False],
            default=None,
        )
        end = min(t for t in (row.start + row.duration, row.cancelled_at) if t is not None)
        out.append(
            {
                "id": row.id,
                "mrid": row.mrid,
                "target": row.target,
                "start": row.start,
                "end": end,
                "export_limit_w": asked,
                "site_ids": members,
            }
        )
    return out


def _curtail_entry(e: dict[str, Any]) -> dict[str, Any]:
    return {"emergency": e, "groups": defaultdict(lambda: [0, 0.0, 0.0, 0.0, 0])}


def _mean_export(data: Iterable[tuple[int, float, int]], a: int, b: int) -> float | None:
    values = [max(-w, 0.0) for at, w, _ in data if a <= at < b]
    return sum(values) / len(values) if values else None


def _curtail_site(
    entry: dict[str, Any],
    e: dict[str, Any],
    site: SiteAssessment,
    data: list[tuple[int, float, int]],
    rules: Rules,
) -> None:
    before = _mean_export(data, e["start"] - BASELINE_S, e["start"])
    during = _mean_export(data, e["start"] + int(rules.settle_s), e["end"])
    for name in ("all targeted", *site.groups):
        row = entry["groups"][name]
        row[0] += 1
        if before is None or during is None:
            row[4] += 1  # no telemetry to measure it
            continue
        asked = max(before - (e["export_limit_w"] if e["export_limit_w"] is not None else before), 0.0)
        row[1] += before
        row[2] += asked
        row[3] += max(before - during, 0.0)


def _curtail_json(entry: dict[str, Any]) -> dict[str, Any]:
    e = entry["emergency"]
    groups_out = []
    for name, (n, before, asked, achieved, unmeasured) in entry["groups"].items():
        groups_out.append(
            {
                "group": name,
                "sites": n,
                "unmeasured_sites": unmeasured,
                "baseline_export_w": round(before, 1),
                "asked_w": round(asked, 1),
                "achieved_w": round(achieved, 1),
                "achieved_pct": round(100.0 * achieved / asked, 1) if asked else None,
            }
        )
    return {
        "mrid": e["mrid"],
        "target": e["target"],
        "from": e["start"],
        "to": e["end"],
        "groups": groups_out,
    }


CSV_COLUMNS = (
    "lfdi",
    "nmi",
    "intervals_judged",
    "intervals_compliant",
    "compliance_pct",
    "breaches",
    "breach_s",
    "worst_excess_w",
    "readings",
    "last_reading",
    "silent",
    "non_responded",
    "capability_mismatches",
)


def assessment_csv(result: Assessment) -> str:
    """One line per site of an assessment (kept with ``keep_sites``)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for site in result.site_results:
        writer.writerow(
            [
                site["lfdi"],
                site["nmi"] or "",
                site["intervals_judged"],
                site["intervals_compliant"],
                "" if site["compliance_pct"] is None else site["compliance_pct"],
                len(site["breaches"]),
                site["breach_s"],
                max((b["worst_excess_w"] for b in site["breaches"]), default=""),
                site["readings"],
                site["last_reading"] or "",
                str(site["silent"]).lower(),
                " ".join(site["non_responded"]),
                " ".join(str(m["mode"]) for m in site["capability_mismatches"]),
            ]
        )
    return out.getvalue()


async def act_on_finding(
    admin: Any, lfdi: str, *, duration: int, actor: str, reason: str, export_limit_w: float = 0.0
) -> str:
    """Issue the compensating control for a finding: a normal DOE-program control for the site with an
    audited reason (seed 001 L847: "reversion to zero export limits for persistent breaches")."""
    from server.store import build_control_base

    if not reason:
        raise ValueError("reason: required for a compensating control (it is audited)")
    return await admin.create_control(
        "doe",
        f"site:{lfdi}",
        duration=duration,
        base=build_control_base(export_limit_w=export_limit_w),
        description="Compliance: zero export"[:32],
        actor=actor,
        reason=reason,
    )
