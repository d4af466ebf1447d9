"""Bulk DOE ingest: 100k sites x 48 intervals (4.8M rows) on the default SQLite store.

Run: ``python benchmarks/doe_ingest.py [--sites 100000] [--intervals 48] [--http] [--replace]``

1. A fresh store (alembic migrations, WAL, synchronous=FULL: exactly what ``derlink server`` uses) gets
   N sites registered in one bulk call (not timed).
2. A day-ahead CSV (site-major, 30-minute intervals) is written to a temp file (not timed).
3. Timed: ``server.headend.doe.ingest`` streams the file in 1 MiB chunks, parses and validates every row,
   writes it in one transaction, queues notifications and audits, commits (fsync). With ``--http`` the
   file goes through the head-end API instead (real HTTP, chunked upload), which is what ``derlink ctl
   does upload`` does. ``--replace`` uploads the same intervals again with new values (every row replaces
   one) and times that too.
4. Baseline, measured in the same run: raw ``sqlite3.executemany`` of the same rows (already as tuples, no
   parsing/validation) into an identical table with the same pragmas, in one transaction.

Prints seconds, rows/s and the ratio ingest/baseline time. Goal: <= 60 s for 4.8M rows.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


QUICK_ARGS = ["--sites", "5000"]  # benchmarks/run_all.py --quick


def write_csv(path: Path, sites: int, intervals: int, start: int, export: int) -> int:
    with path.open("w") as out:
        out.write("nmi,start,duration,import_limit_w,export_limit_w\n")
        starts = [str(start + k * 1800) for k in range(intervals)]
        for s in range(sites):
            nmi = f"N{s:09d}"
            out.write("".join(f"{nmi},{t},1800,{8000 + k},{export}\n" for k, t in enumerate(starts)))
    return path.stat().st_size


async def file_chunks(path: Path):  # type: ignore[no-untyped-def]
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            yield chunk


def baseline(db: Path, sites: int, intervals: int, start: int) -> float:
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("CREATE TABLE sites (id INTEGER PRIMARY KEY, nmi TEXT)")
    conn.executemany("INSERT INTO sites VALUES (?, ?)", ((i + 1, f"N{i:09d}") for i in range(sites)))
    conn.execute(
        "CREATE TABLE doe_intervals (site_id INTEGER NOT NULL REFERENCES sites(id) ON DELETE CASCADE, "
        "start BIGINT NOT NULL, duration INTEGER NOT NULL, import_w BIGINT, export_w BIGINT, "
        "generation_w BIGINT, load_w BIGINT, upload_id INTEGER NOT NULL, PRIMARY KEY (site_id, start)) "
        "WITHOUT ROWID"
    )
    conn.execute("PRAGMA cache_size=-262144")
    begun = time.perf_counter()
    conn.execute("BEGIN")
    batch: list[tuple[int, ...]] = []
    for s in range(1, sites + 1):
        for k in range(intervals):
            batch.append((s, start + k * 1800, 1800, 8000 + k, 2000, None, None, 1))
        if len(batch) >= 50_000:
            conn.executemany("INSERT OR REPLACE INTO doe_intervals VALUES (?,?,?,?,?,?,?,?)", batch)
            batch = []
    if batch:
        conn.executemany("INSERT OR REPLACE INTO doe_intervals VALUES (?,?,?,?,?,?,?,?)", batch)
    conn.execute("COMMIT")
    elapsed = time.perf_counter() - begun
    conn.close()
    return elapsed


async def run(args: argparse.Namespace) -> None:
    from server.headend.api import bulk_register
    from server.headend.doe import ingest
    from server.store import Store

    rows = args.sites * args.intervals
    with tempfile.TemporaryDirectory(prefix="derlink-doe-") as tmp:
        tmpdir = Path(tmp)
        store = await Store.open(f"sqlite+aiosqlite:///{tmpdir / 'derlink.sqlite3'}")
        await store.admin.ensure_standard_programs()
        t0 = time.perf_counter()
        await bulk_register(
            store, [{"lfdi": f"{i + 1:040X}", "nmi": f"N{i:09d}"} for i in range(args.sites)], actor="bench"
        )
        print(f"registered {args.sites} sites in {time.perf_counter() - t0:.1f} s (not timed)")
        start = store.clock() // 1800 * 1800
        csv_path = tmpdir / "does.csv"
        size = write_csv(csv_path, args.sites, args.intervals, start, 2000)
        print(f"DOE file: {rows:,} rows, {size / 1e6:.0f} MB (not timed)")

        async def upload(path: Path) -> float:
            begun = time.perf_counter()
            if args.http:
                result = await via_http(store, path)
            else:
                result = await ingest(store, file_chunks(path), fmt="csv", actor="bench")
            elapsed = time.perf_counter() - begun
            got = result["rows"] if isinstance(result, dict) else result.rows
            assert got == rows, got
            return elapsed

        ingest_s = await upload(csv_path)
        replace_s = None
        if args.replace:
            write_csv(csv_path, args.sites, args.intervals, start, 2500)
            replace_s = await upload(csv_path)
        await store.close()
        csv_path.unlink()
        base_s = baseline(tmpdir / "baseline.sqlite3", args.sites, args.intervals, start)

    how = "HTTP head-end API" if args.http else "ingest()"
    print(f"\nDOE ingest via {how}: {args.sites:,} sites x {args.intervals} intervals = {rows:,} rows")
    print(f"  derlink ingest        : {ingest_s:7.1f} s  {rows / ingest_s:12,.0f} rows/s")
    if replace_s is not None:
        print(f"  derlink replace upload: {replace_s:7.1f} s  {rows / replace_s:12,.0f} rows/s")
    print(
        f"  baseline raw sqlite3  : {base_s:7.1f} s  {rows / base_s:12,.0f} rows/s (executemany, no parsing)"
    )
    print(f"  ratio derlink/baseline time: {ingest_s / base_s:.2f}  (speed {base_s / ingest_s:.2f} of raw)")
    print(f"  goal <= 60 s: {'MET' if ingest_s <= 60 else 'NOT MET'}")
    # benchmarks/run_all.py convention (benchmarks/README.md)
    print(f"RESULT doe_ingest_seconds {ingest_s:.2f} s ratio={ingest_s / base_s:.2f} goal=<=60")
    print(f"RESULT doe_ingest_rows_per_s {rows / ingest_s:.0f} rows/s ratio={base_s / ingest_s:.2f}")


async def via_http(store, path: Path):  # type: ignore[no-untyped-def]
    import aiohttp
    from aiohttp import web

    from server.config import ServerConfig

    token = "benchmark-token-0123456789"
    config = ServerConfig(headend_tokens=[{"name": "bench", "token": token, "role": "operator"}])
    from server.headend.api import create_headend_app

    runner = web.AppRunner(create_headend_app(store, config))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        timeout = aiohttp.ClientTimeout(total=None)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.post(
                f"http://127.0.0.1:{port}/api/does",
                data=file_chunks(path),
                headers={"Authorization": f"Bearer {token}", "Content-Type": "text/csv"},
            ) as response:
                result = await response.json()
                assert response.status == 201, result
                return result
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sites", type=int, default=100_000)
    parser.add_argument("--intervals", type=int, default=48)
    parser.add_argument("--http", action="store_true", help="upload through the head-end HTTP API")
    parser.add_argument(
        "--replace", action="store_true", help="also time a second upload replacing every row"
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
