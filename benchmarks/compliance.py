"""Compliance assessment of a fleet for one day: 10,000 sites x 288 five-minute site readings.

Run: ``python benchmarks/compliance.py [--sites 10000]``

1. A fresh SQLite store (migrations, as ``derlink server`` runs it) gets N sites in 10 feeder groups, a
   day-ahead DOE for every site (48 half-hour intervals, bulk upload), a 30-minute emergency zero export on
   one feeder, and one day of synthetic site power readings at a 300 s postRate: most sites follow their
   limits, 1 % are stuck exporting 3 kW, 1 % go silent at noon (not timed; written with sqlite3 directly).
2. Timed: ``server.compliance.assess.assess`` over the whole fleet and day, keeping one summary per site.
   Peak RSS is sampled before and after, to show memory is bounded by the chunk, not by the fleet.
3. Baseline, in the same run: reading the same site readings with one plain SELECT through the same
   engine (no judging). The ratio is assess / baseline time (lower is better).
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

QUICK_ARGS = ["--sites", "1000"]  # benchmarks/run_all.py --quick
DAY = 86400
POST = 300


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def build(url: str, db: Path, sites: int, t0: int) -> None:
    from gateway.client import mapping as m
    from sep2.identity import sfdi_from_lfdi
    from sep2.xml import to_xml
    from server.headend.doe import ingest, iterate
    from server.store import Store, build_control_base

    store = await Store.open(url)
    store.clock = lambda: t0 - 3600
    await store.admin.ensure_standard_programs()
    for g in range(10):
        await store.admin.create_group(f"feeder-{g}")
    await store.close()
    rt = m.reading_type(m.Quantity("w", "Active power (W)", 38, 37, 1, 0, 0), POST)
    rt_xml = to_xml(rt).decode()
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO sites (id, lfdi, sfdi, enabled, changed_time, registered_time, nmi) "
        "VALUES (?, ?, ?, 1, ?, ?, ?)",
        ((i, f"{i:040X}", sfdi_from_lfdi(f"{i:040X}"), t0, t0, f"N{i:09d}") for i in range(1, sites + 1)),
    )
    conn.executemany(
        "INSERT INTO memberships (site_id, group_id) VALUES (?, ?)",
        ((i, 1 + i % 10) for i in range(1, sites + 1)),
    )
    conn.executemany(
        "INSERT INTO mups (id, site_id, mrid, role_flags, service_category, status, created_at) "
        "VALUES (?, ?, ?, '0003', 0, 1, ?)",
        ((i, i, f"{i:032X}", t0) for i in range(1, sites + 1)),
    )
    conn.executemany(
        "INSERT INTO meter_readings (id, mup_id, mrid, reading_type) VALUES (?, ?, ?, ?)",
        ((i, i, f"{i:031X}1", rt_xml) for i in range(1, sites + 1)),
    )

    def rows():  # type: ignore[no-untyped-def]
        for i in range(1, sites + 1):
            stuck, silent = i % 100 == 7, i % 100 == 8
            for k in range(DAY // POST):
                at = t0 + k * POST
                if silent and k >= DAY // POST // 2:
                    break
                emergency = i % 10 == 0 and t0 + 43200 <= at < t0 + 45000
                w = -3000 if stuck else (-20 if emergency else -1800 - (i % 150))
                yield (i, at, POST, w, at)

    conn.executemany(
        "INSERT INTO readings (meter_reading_id, time_start, duration, value, received_at) "
        "VALUES (?, ?, ?, ?, ?)",
        rows(),
    )
    conn.execute("COMMIT")
    conn.close()
    store = await Store.open(url)
    store.clock = lambda: t0 - 3600
    csv = "nmi,start,duration,import_limit_w,export_limit_w\n" + "".join(
        f"N{i:09d},{t0 + k * 1800},1800,9000,2000\n" for i in range(1, sites + 1) for k in range(48)
    )
    await ingest(store, iterate([csv.encode()]), fmt="csv", actor="bench")
    store.clock = lambda: t0 + 43200
    await store.admin.create_control(
        "emergency",
        "group:feeder-0",
        start=t0 + 43200,
        duration=1800,
        base=build_control_base(export_limit_w=0),
    )
    await store.close()


async def main(sites: int) -> None:
    import sqlalchemy as sa

    from server.compliance.assess import assess
    from server.store import Store, readings

    t0 = 1_800_000_000 // DAY * DAY
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.sqlite"
        url = f"sqlite+aiosqlite:///{db}"
        started = time.perf_counter()
        await build(url, db, sites, t0)
        print(f"built {sites} sites x {DAY // POST} readings in {time.perf_counter() - started:.1f} s")
        store = await Store.open(url, run_migrations=False)

        async with store.read() as conn:
            started = time.perf_counter()
            n = 0
            for first in range(1, sites + 1, 250):  # by meter reading, as the assessment reads them
                rows = await conn.execute(
                    sa.select(readings.c.meter_reading_id, readings.c.time_start, readings.c.value).where(
                        readings.c.meter_reading_id.in_(range(first, first + 250)),
                        readings.c.time_start >= t0,
                        readings.c.time_start < t0 + DAY,
                    )
                )
                n += len(rows.all())
            base_s = time.perf_counter() - started
        rss_before = rss_mib()
        async with store.read() as conn:
            started = time.perf_counter()
            out = await assess(conn, "all", t0, t0 + DAY, now=t0 + DAY)
            seconds = time.perf_counter() - started
        rss_after = rss_mib()
        await store.close()
    summary = out.as_json()
    print(
        f"assessed {summary['sites']} sites, {summary['readings']} readings in {seconds:.1f} s "
        f"(plain SELECT of {n} readings: {base_s:.1f} s); breached {summary['sites_breached']}, "
        f"silent {len(summary['silent'])}, findings {len(summary['findings'])}; "
        f"peak RSS {rss_before:.0f} -> {rss_after:.0f} MiB"
    )
    assert summary["sites"] == sites and summary["sites_breached"] == sites // 100
    assert len(summary["silent"]) == sites // 100
    print(f"RESULT compliance_day_seconds {seconds:.2f} s ratio={seconds / base_s:.2f} goal=<=120")
    print(f"RESULT compliance_sites_per_s {sites / seconds:.0f} sites/s")
    print(f"RESULT compliance_peak_rss_growth {rss_after - rss_before:.0f} MiB goal=<=400")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=10_000)
    args = parser.parse_args()
    asyncio.run(main(args.sites))
