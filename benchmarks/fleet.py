"""A fleet of sites on one server: how many sites-equivalent it holds at 0 errors and p99 < 1 s.

Run: ``python benchmarks/fleet.py [--clients 500] [--step-seconds 15] [--modes keepalive reconnect]
[--backends sqlite postgresql]``

Each simulated site has its own client certificate (issued once with the certs/ toolkit and kept in
``~/.cache/derlink-bench``, or ``$DERLINK_BENCH_CACHE``) and talks mutual TLS to the server. Its cycle is
the CSIP-AUS one: every poll it GETs its DOE program's DERControlList (``l=48``) and ActiveDERControlList,
and ``/tm`` every 10th poll; every 5th poll (300 s) it POSTs a reading to its MirrorUsagePoint. Before the
run, each site has a day-ahead DOE schedule (48 half-hour intervals from the current half hour, bulk
uploaded) and a DefaultDERControl is in place for every site.

Time compression: the clients' clock runs ``c`` times faster (a 60 s poll every 60/c s), so ``--clients``
sites at compression ``c`` are ``clients x c`` sites-equivalent in request rate. The server's clock is not
compressed (DOE intervals start and end in real time), so each cached document is polled ``c`` times as
often as in reality: the cache hit rate printed is an upper bound of a real fleet's. Memory is per
simulated site (growth over the loaded server before any client connected: each site holds a connection
and its cached documents), not per site-equivalent.

The rate is stepped up (compression doubling, then one step between the last good and the first bad) for
``--step-seconds`` each; a step holds if it had no error, a p99 below 1 s and the sites kept their
schedule (achieved >= 90 % of the offered request rate: each site waits for its replies, as a gateway
does). The server is pinned to core 0 and the load generator to core 1 with taskset; the generator's own
CPU is printed, so that a generator-bound step is visible (near 1.0). The generator is one Python process
on asyncio sockets with ``ssl.SSLObject`` (``benchmarks/_common.LeanHttps``): aiohttp's client cost it
about 1 ms per request, so it ran out of core before the server did.
Modes: ``keepalive`` (one connection per site, kept) and ``reconnect`` (a new TLS connection every poll,
TLS sessions resumed). The server runs with ``idle_timeout = 75`` so that a 60 s poller's connection
stays open. Backends: SQLite; PostgreSQL (a throwaway cluster as in tests/postgres_fixture.py, not
pinned) with one server process; ``postgresql-2``: ``workers = 2``, both processes on core 0 too (so it
shows what the second process and the cross-process cache cost, not scaling: there is no third core).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from _common import (  # noqa: E402
    LeanHttps,
    cpu_seconds,
    device_certificates,
    header,
    loadavg,
    pick,
    pki_dir,
    rss_kib,
    spawn,
)

QUICK_ARGS = ["--clients", "100", "--step-seconds", "6", "--modes", "keepalive"]
POLL_S, POST_EVERY, TM_EVERY = 60.0, 5, 10
P99_LIMIT_S = 1.0
INTERVALS = 48


# ------------------------------------------------------------------------------------------------ server


async def serve(pki: str, data_dir: str, database_url: str, devices_file: str, workers: str) -> None:
    import logging

    import sqlalchemy as sa

    from server.app import start_server
    from server.config import ServerConfig
    from server.headend.doe import ingest, iterate
    from server.store import Store, build_control_base, make_engine, migrate
    from server.store.schema import programs, sites

    logging.basicConfig(level=logging.ERROR)
    devices = json.loads(Path(devices_file).read_text())  # noqa: ASYNC240 (before serving)
    config = ServerConfig(
        data_dir=Path(data_dir),
        database_url=database_url or None,
        port=0,
        admin_port=0,
        headend_port=0,
        cert_dir=Path(pki),
        idle_timeout=75.0,
        log_level="ERROR",
        workers=int(workers),
    )
    logging.getLogger("derlink.server.access").setLevel(logging.WARNING)
    engine = make_engine(config.resolved_database_url)
    await migrate(engine)
    store = Store(engine)
    await store.admin.ensure_standard_programs()
    now = int(time.time())
    async with engine.begin() as conn:
        doe = (await conn.execute(sa.select(programs.c.id).where(programs.c.key == "doe"))).scalar_one()
        await conn.execute(
            sites.insert(),
            [
                {
                    "id": i + 1,
                    "lfdi": d["lfdi"],
                    "sfdi": i + 1,
                    "enabled": True,
                    "changed_time": now,
                    "registered_time": now,
                }
                for i, d in enumerate(devices)
            ],
        )
    start = now - now % 1800
    csv = "lfdi,start,duration,import_limit_w,export_limit_w\n" + "".join(
        f"{d['lfdi']},{start + 1800 * k},1800,{8000 + k},{5000 - 50 * k}\n"
        for d in devices
        for k in range(INTERVALS)
    )
    await ingest(store, iterate([csv.encode()]), fmt="csv", actor="bench")
    await store.admin.set_default_control("doe", "all", base=build_control_base(export_limit_w=5000))
    running = await start_server(config, store)
    pids = [os.getpid()] + [w.pid for w in running.workers]
    print(
        json.dumps({"port": running.port, "admin_port": running.admin_port, "doe": doe, "pids": pids}),
        flush=True,
    )
    await asyncio.Event().wait()


# --------------------------------------------------------------------------------------------- generator


class Site:
    def __init__(self, index: int, identity: dict[str, str], context: Any) -> None:
        self.index = index
        self.edev = f"/edev/{index + 1}"
        self.lfdi = identity["lfdi"]
        self.client = LeanHttps(context)  # its connection, kept or not, and TLS session
        self.mup: str | None = None
        self.mmr = f"{index + 1:032X}"  # its MirrorMeterReading's mRID
        self.polls = 0


class Step:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.errors: list[str] = []


async def generate(pki: str, devices_file: str, info: dict[str, Any], args: dict) -> None:
    import ssl

    import aiohttp

    from certs.pki import load_pki
    from certs.tls import client_ssl_context
    from sep2.xml import to_xml
    from server.notify_client import ReplyError
    from tests.test_server_harness import meter_reading, mup

    devices = json.loads(Path(devices_file).read_text())  # noqa: ASYNC240 (before the load)
    pids = info["pids"]  # the server's processes (workers > 1: more than one)

    def server_cpu() -> float:
        return sum(cpu_seconds(pid) for pid in pids)

    def server_rss() -> int:
        return sum(rss_kib(pid) for pid in pids)

    ca = load_pki(pki).ca_chain
    base = f"https://127.0.0.1:{info['port']}"
    metrics_url = f"http://127.0.0.1:{info['admin_port']}/metrics"
    keepalive = args["mode"] == "keepalive"
    sites = [Site(i, d, client_ssl_context(d["chain"], d["key"], ca)) for i, d in enumerate(devices)]
    derc = f"/derp/{info['doe']}/derc?l={INTERVALS}"
    actderc = f"/derp/{info['doe']}/actderc?l=1"
    counter = iter(range(10**9))
    step: Step = Step()

    async def request(site: Site, method: str, path: str, data: bytes | None = None) -> Any:
        started = time.perf_counter()
        current = step
        try:
            async with asyncio.timeout(60):
                reply = await site.client.request(method, base + path, data)
        except (ReplyError, OSError, ssl.SSLError, TimeoutError) as exc:
            current.errors.append(f"{method} {path.split('?')[0]}: {type(exc).__name__} {exc}")
            site.client.close()
            return None
        if reply.status >= 300:
            detail = header(reply, "x-error-detail")
            current.errors.append(f"{method} {path.split('?')[0]}: HTTP {reply.status} {detail}")
        current.latencies.append(time.perf_counter() - started)
        return reply

    async def poll(site: Site) -> None:
        try:
            await request(site, "GET", site.edev + derc)
            await request(site, "GET", site.edev + actderc)
            if site.polls % TM_EVERY == site.index % TM_EVERY:
                await request(site, "GET", "/tm")
            if site.polls % POST_EVERY == site.index % POST_EVERY and site.mup:
                body = to_xml(meter_reading(1500, 1_700_000_000 + 300 * next(counter), site.mmr))
                await request(site, "POST", site.mup, body)
        finally:
            if not keepalive:
                site.client.close()
        site.polls += 1

    def close_all() -> None:
        for site in sites:
            site.client.close()

    # Setup (not measured): every site creates its MirrorUsagePoint.
    rss_before = server_rss()  # the server with its data, before any client connected
    setup = Step()
    step = setup

    async def make_mup(site: Site) -> None:
        reply = await request(site, "POST", "/mup", to_xml(mup(site.lfdi, mmr_mrid=site.mmr)))
        if reply is not None and reply.status == 201:
            site.mup = header(reply, "location")

    for chunk in range(0, len(sites), 50):
        await asyncio.gather(*(make_mup(s) for s in sites[chunk : chunk + 50]))
    if setup.errors:
        close_all()
        raise SystemExit(f"setup failed: {setup.errors[:3]}")

    async def metrics(session: Any) -> tuple[float, float]:
        async with session.get(metrics_url) as reply:
            text = await reply.text()
        hits = sum(float(v) for v in re.findall(r"^derlink_cache_hits_total (\S+)$", text, re.M))
        gets = sum(
            float(v) for v in re.findall(r'^derlink_http_requests_total\{method="GET".*\} (\S+)$', text, re.M)
        )
        return hits, gets

    async def run_step(compression: float, seconds: float) -> dict[str, Any]:
        nonlocal step
        step = Step()
        interval = POLL_S / compression
        stop = time.monotonic() + seconds

        async def site_loop(site: Site) -> None:
            next_at = time.monotonic() + random.random() * interval  # spread phases
            while next_at < stop:
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                await poll(site)
                next_at += interval
                if next_at < time.monotonic():  # fell behind: that is the server's (or our) limit showing
                    next_at = time.monotonic()

        async with aiohttp.ClientSession() as plain:
            hits0, gets0 = await metrics(plain)
            cpu0, own0, wall0 = server_cpu(), cpu_seconds(), time.monotonic()
            await asyncio.gather(*(site_loop(s) for s in sites))
            wall = max(seconds, time.monotonic() - wall0)  # the polls due in ``seconds``, and their replies
            cpu, own = server_cpu() - cpu0, cpu_seconds() - own0
            hits, gets = await metrics(plain)
        done = sorted(step.latencies)
        sites_eq = len(sites) * compression
        return {
            "compression": compression,
            "sites_equivalent": sites_eq,
            "requests": len(done),
            "req_per_s": len(done) / wall,
            "offered_per_s": sites_eq / POLL_S * (2 + 1 / TM_EVERY + 1 / POST_EVERY),
            "errors": len(step.errors),
            "first_error": step.errors[0] if step.errors else None,
            "p50": pick(done, 0.5),
            "p99": pick(done, 0.99),
            "server_cpu": cpu / wall,
            "server_cpu_ms_per_site_minute": cpu / wall * 60_000 / sites_eq,
            "server_cpu_ms_per_request": cpu * 1000 / max(1, len(done)),
            "generator_cpu": own / wall,
            "cache_hit_rate": (hits - hits0) / max(1.0, gets - gets0),
            "server_rss_kib": server_rss(),
            "server_rss_growth_kib": server_rss() - rss_before,
        }

    def holds(result: dict[str, Any]) -> bool:
        """No error, p99 under the limit, and the sites kept their schedule (they wait for each reply)."""
        kept_up = result["req_per_s"] >= 0.9 * result["offered_per_s"]
        return result["errors"] == 0 and result["p99"] < P99_LIMIT_S and kept_up

    # Warm-up (not measured): one poll each, so connections are open and caches filled as in a running fleet.
    await asyncio.gather(*(poll(s) for s in sites))
    seconds = args["step_seconds"]
    tried: dict[float, dict[str, Any]] = {}

    async def attempt(compression: float) -> bool:
        result = await run_step(compression, max(seconds, 3 * POLL_S / compression))
        print(json.dumps({"step": result}), flush=True)
        tried[compression] = result
        return holds(result)

    # Double while it holds (halve while it does not), then one step between the last good and first bad.
    compression = args["start_compression"]
    up = await attempt(compression)
    while args["min_compression"] <= compression <= args["max_compression"]:
        compression = compression * 2 if up else compression / 2
        if not args["min_compression"] <= compression <= args["max_compression"]:
            break
        if await attempt(compression) != up:
            break
    good_c = [c for c, r in tried.items() if holds(r)]
    bad_c = [c for c, r in tried.items() if not holds(r) and c > max(good_c, default=0)]
    if good_c and bad_c:
        await attempt(max(good_c) * 1.4)
    passing = [r for r in tried.values() if holds(r)]
    good = max(passing, key=lambda r: r["compression"]) if passing else None
    failing = [r for r in tried.values() if not holds(r)]
    bad = min(failing, key=lambda r: r["compression"]) if failing else None
    close_all()
    print(json.dumps({"held": good, "first_failing": bad}), flush=True)


# ------------------------------------------------------------------------------------------------ driver


def postgres() -> Any:
    """A throwaway PostgreSQL cluster (tests/postgres_fixture.py's), as a context manager."""
    import contextlib

    from tests import postgres_fixture

    fixture = postgres_fixture.postgres_cluster
    function = getattr(fixture, "__wrapped__", None) or fixture._get_wrapped_function()  # type: ignore[attr-defined]
    return contextlib.contextmanager(function)()


def run_one(backend: str, url: str, mode: str, args: argparse.Namespace, devices_file: str, pki: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        workers = "2" if backend == "postgresql-2" else "1"
        server, info = spawn(__file__, 0, "--role", "server", pki, tmp, url, devices_file, workers)
        try:
            plan = {
                "mode": mode,
                "step_seconds": args.step_seconds,
                "start_compression": args.start_compression,
                "max_compression": args.max_compression,
                "min_compression": args.min_compression,
            }
            import subprocess

            command = [
                "taskset", "-c", "1", sys.executable, __file__, "--role", "generator", pki, devices_file,
                json.dumps(info), json.dumps(plan),
            ]  # fmt: skip
            generator = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=HERE.parent)
            final: dict[str, Any] = {}
            assert generator.stdout is not None
            for line in generator.stdout:
                message = json.loads(line)
                if "step" in message:
                    print(step_line(backend, mode, message["step"]), flush=True)
                else:
                    final = message
            generator.wait()
            return final
        finally:
            server.terminate()
            server.wait(10)


def step_line(backend: str, mode: str, s: dict[str, Any]) -> str:
    return (
        f"  {backend:12} {mode:9} x{s['compression']:<6g} {s['sites_equivalent']:>8.0f} sites-eq "
        f"{s['req_per_s']:6.0f}/{s['offered_per_s']:<6.0f} req/s  "
        f"p50 {s['p50'] * 1000:6.1f} ms  p99 {s['p99'] * 1000:7.1f} ms  "
        f"errors {s['errors']:4}  server CPU {s['server_cpu']:4.2f}  gen CPU {s['generator_cpu']:4.2f}  "
        f"cache hits {s['cache_hit_rate']:5.1%}" + (f"  ({s['first_error']})" if s["errors"] else "")
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--clients", type=int, default=500, help="simulated sites, each with its own certificate"
    )
    parser.add_argument("--step-seconds", type=float, default=15.0)
    parser.add_argument("--start-compression", type=float, default=16.0)
    parser.add_argument("--max-compression", type=float, default=1024.0)
    parser.add_argument("--min-compression", type=float, default=1.0)
    parser.add_argument(
        "--modes", nargs="+", default=["keepalive", "reconnect"], choices=["keepalive", "reconnect"]
    )
    parser.add_argument(
        "--backends", nargs="+", default=["sqlite"], choices=["sqlite", "postgresql", "postgresql-2"]
    )
    parser.add_argument("--role", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        role, *rest = args.role
        if role == "server":
            asyncio.run(serve(*rest))
        else:
            asyncio.run(generate(rest[0], rest[1], json.loads(rest[2]), json.loads(rest[3])))
        return 0

    pki = str(pki_dir())
    devices = device_certificates(args.clients)
    print(
        f"{args.clients} simulated sites (own certificates), poll {POLL_S:g} s / post "
        f"{POLL_S * POST_EVERY:g} s compressed x c; {args.step_seconds:g} s per step; load {loadavg()}"
    )
    print(
        "server on core 0, load generator on core 1 (one Python process: asyncio sockets with ssl.SSLObject, "
        "benchmarks/_common.LeanHttps)"
    )
    held: dict[tuple[str, str], dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        devices_file = str(Path(tmp) / "devices.json")
        Path(devices_file).write_text(json.dumps(devices))
        for backend in args.backends:
            if backend == "sqlite":
                for mode in args.modes:
                    held[(backend, mode)] = run_one(backend, "", mode, args, devices_file, pki)
            else:
                with postgres() as cluster:
                    for mode in args.modes:
                        url = cluster.new_database("fleet")
                        held[(backend, mode)] = run_one(backend, url, mode, args, devices_file, pki)
    print(f"held at 0 errors and p99 < {P99_LIMIT_S:g} s (load average {loadavg()}):")
    for (backend, mode), final in held.items():
        g = final.get("held")
        key = f"fleet_{backend}_{mode}"
        if g is None:
            print(f"  {backend:10} {mode:9} none: the first step failed ({final.get('first_failing')})")
            print(f"RESULT {key}_sites_equivalent 0 sites")
            continue
        print(
            f"  {backend:10} {mode:9} {g['sites_equivalent']:8.0f} sites-eq ({g['req_per_s']:.0f} req/s, "
            f"p99 {g['p99'] * 1000:.0f} ms): server {g['server_cpu_ms_per_site_minute']:.3f} ms CPU per site "
            f"per minute ({g['server_cpu_ms_per_request']:.2f} ms/request), "
            f"RSS {g['server_rss_kib'] / 1024:.0f} MiB, "
            f"+{g['server_rss_growth_kib'] / args.clients:.0f} KiB per simulated site, "
            f"cache hits {g['cache_hit_rate']:.1%}, generator CPU {g['generator_cpu']:.2f}"
        )
        print(f"RESULT {key}_sites_equivalent {g['sites_equivalent']:.0f} sites goal=>=100000")
        print(f"RESULT {key}_server_cpu_ms_per_site_minute {g['server_cpu_ms_per_site_minute']:.4f} ms")
        print(f"RESULT {key}_server_cpu_ms_per_request {g['server_cpu_ms_per_request']:.3f} ms")
        print(f"RESULT {key}_rss_kib_per_site {g['server_rss_growth_kib'] / args.clients:.0f} KiB/site")
        print(f"RESULT {key}_cache_hit_rate {g['cache_hit_rate']:.4f} fraction")
        print(f"RESULT {key}_generator_cpu {g['generator_cpu']:.2f} cores")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
