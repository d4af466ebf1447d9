"""Requests/s of the 2030.5 server against a minimal aiohttp handler over the same mutual TLS setup.

Run: ``python benchmarks/server_throughput.py [--seconds 5] [--concurrency 32] [--only uncached]``

Each server runs in its own process: the derlink server on a fresh SQLite store in a temp dir (twice: cache
on, and cache off for the uncached figures), and a baseline aiohttp app returning a fixed body of the
DERControlList's size with the same TLS context, all three pinned to core 0. The load generator is one more
process on core 1 (keep-alive, a device certificate, ``benchmarks/_common.LeanHttps``: asyncio sockets with
``ssl.SSLObject``, about a third of aiohttp's client CPU per request); its own CPU is printed so that a
generator-bound figure is visible.

Scenarios: cached GET /dcap and 50-item DERControlList; the same uncached; POST a reading (durable, group
commit) at ``--concurrency`` and at 64; mixed: DERControlList GETs while half the workers POST readings
(the cache must survive the writes). Each is printed with its ratio to the baseline's req/s measured in
the same run, the server's CPU per request (utime+stime from /proc/<pid>/stat), p50/p99 latency and the
generator's CPU. The ``cpu x`` column is the server CPU per request over the baseline's (the bare aiohttp
handler's cost of TLS and HTTP). Goals (issue 12): the cached DERControlList GET at >= 0.5 of the
baseline's rate; server CPU per request <= 1 ms for the uncached 50-control DERControlList, <= 0.3 ms for
the uncached /dcap and <= 0.5 ms for a durable reading POST (at concurrency 64, >= 2,000 POST/s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


QUICK_ARGS = ["--seconds", "2"]  # benchmarks/run_all.py --quick
CPU_GOALS_MS = {  # server CPU per request (issue 12)
    "GET DERControlList (50) uncached": 1.0,
    "GET /dcap uncached": 0.3,
    "POST reading": 0.5,
    "POST reading c64": 0.5,
}


async def serve_derlink(pki_dir: str, data_dir: str, device_lfdi: str, cache: str = "on") -> None:
    from server.app import start_server
    from server.config import ServerConfig
    from server.store import build_control_base

    config = ServerConfig(
        data_dir=Path(data_dir),
        port=0,
        admin_port=0,
        headend_port=0,
        cert_dir=Path(pki_dir),
        cache_enabled=cache == "on",
        log_level="WARNING",
    )
    running = await start_server(config)
    admin = running.store.admin
    await admin.register_site(device_lfdi, nmi="4102000001")
    now = running.store.clock()
    for i in range(50):
        await admin.create_control(
            "doe",
            f"site:{device_lfdi}",
            start=now + 300 * i,
            duration=300,
            supersede=False,
            base=build_control_base(export_limit_w=1000 + 10 * i, import_limit_w=5000),
        )
    print(json.dumps({"port": running.port}), flush=True)
    await asyncio.Event().wait()


async def serve_baseline(pki_dir: str, body_size: int) -> None:
    from aiohttp import web

    from certs.pki import load_pki
    from certs.tls import server_ssl_context

    body = b"x" * body_size

    async def fixed(_request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/sep+xml")

    app = web.Application()
    app.router.add_get("/fixed", fixed)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    paths = load_pki(pki_dir)
    site = web.TCPSite(
        runner,
        "127.0.0.1",
        0,
        ssl_context=server_ssl_context(paths.server_chain, paths.server_key, paths.ca_chain),
    )
    await site.start()
    print(json.dumps({"port": runner.addresses[0][1]}), flush=True)
    await asyncio.Event().wait()


def cpu_seconds(pid: int | str = "self") -> float:
    """utime + stime of a process, from /proc (what the kernel charged it, all threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def spawn(*args: str) -> tuple[subprocess.Popen[str], int]:
    command = ["taskset", "-c", "0", sys.executable, __file__, *args]  # the generator runs on core 1
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    line = proc.stdout.readline() if proc.stdout else ""
    if not line:
        proc.kill()
        raise RuntimeError(f"server process {args[0]} did not start")
    return proc, json.loads(line)["port"]


@dataclass
class Figure:
    rate: float  # completed requests/s
    p50_ms: float
    p99_ms: float
    server_cpu_ms: float  # server CPU per request
    generator_cpu: float  # the load generator's CPU, fraction of one core


def _pick(sorted_seconds: list[float], q: float) -> float:
    if not sorted_seconds:
        return float("nan")
    return sorted_seconds[min(len(sorted_seconds) - 1, int(q * len(sorted_seconds)))] * 1000


async def measure(
    session, streams: list[tuple[str, str, int, Any]], seconds: float, server_pid: int
) -> list[Figure]:
    """Run the streams ``(method, url, workers, body_fn)`` together for ``seconds`` over keep-alive
    connections; one Figure per stream (server CPU is shared out by request count)."""
    deadline = time.perf_counter() + seconds
    latencies: list[list[float]] = [[] for _ in streams]

    async def worker(k: int, method: str, url: str, body_fn: Any, n: int) -> None:
        i = 0
        while time.perf_counter() < deadline:
            data = body_fn(n, i) if body_fn else None
            sent = time.perf_counter()
            reply = await session.request(method, url, data)
            if reply.status >= 300:
                raise RuntimeError(f"{method} {url}: HTTP {reply.status}")
            latencies[k].append(time.perf_counter() - sent)
            i += 1

    server_cpu, own_cpu, started = cpu_seconds(server_pid), cpu_seconds(), time.perf_counter()
    await asyncio.gather(
        *(
            worker(k, method, url, body_fn, n)
            for k, (method, url, workers, body_fn) in enumerate(streams)
            for n in range(workers)
        )
    )
    wall = time.perf_counter() - started
    server_cpu, own_cpu = cpu_seconds(server_pid) - server_cpu, cpu_seconds() - own_cpu
    total = sum(len(x) for x in latencies) or 1
    figures = []
    for done in latencies:
        done.sort()
        figures.append(
            Figure(
                len(done) / wall,
                _pick(done, 0.5),
                _pick(done, 0.99),
                server_cpu * 1000 / total,
                own_cpu / wall,
            )
        )
    return figures


async def run_load(
    pki_dir: str,
    device: str,
    ports: dict[str, int],
    pids: dict[str, int],
    seconds: float,
    concurrency: int,
    only: str | None = None,
) -> None:
    from _common import LeanHttps, header

    from certs.pki import load_pki
    from certs.tls import client_ssl_context
    from sep2 import resources as r
    from sep2.xml import to_xml
    from tests.test_server_harness import meter_reading, mup

    os.sched_setaffinity(0, {1})  # the servers are on core 0
    paths = load_pki(pki_dir)
    identity = json.loads(device)
    context = client_ssl_context(identity["chain"], identity["key"], paths.ca_chain)
    base = f"https://127.0.0.1:{ports['derlink']}"
    uncached_port, base_port = ports["uncached"], ports["baseline"]
    session = LeanHttps(context)
    try:
        reply = await session.request("GET", f"{base}/edev?l=1")
        edev = bytes(reply.body).decode().split('href="', 2)[2].split('"', 1)[0]
        derc_url = f"{base}{edev}/derp/2/derc?l=50"
        list_body = bytes((await session.request("GET", derc_url)).body)
        assert list_body.count(b"<DERControl ") == 50, "expected a 50-item DERControlList"
        reply = await session.request("POST", f"{base}/mup", to_xml(mup(identity["lfdi"])))
        mup_url = base + header(reply, "location")
        assert isinstance(r.Reading, type)
        uncached = f"https://127.0.0.1:{uncached_port}"
        fixed = f"https://127.0.0.1:{base_port}/fixed"
        for url in (derc_url, fixed, uncached + edev + "/derp/2/derc?l=50"):  # warm up
            await measure(session, [("GET", url, concurrency, None)], 0.5, pids["derlink"])
        counter = iter(range(10**9))

        def reading(_n: int, _i: int) -> bytes:  # a new interval each time: every POST inserts a row
            return to_xml(meter_reading(1500, 1_700_000_000 + 300 * next(counter)))

        get = lambda url: ("GET", url, concurrency, None)  # noqa: E731
        plan: dict[str, tuple[str, list[tuple[str, str, int, Any]]]] = {
            "baseline (fixed body)": ("baseline", [get(fixed)]),
            "GET /dcap cached": ("derlink", [get(f"{base}/dcap")]),
            "GET DERControlList (50) cached": ("derlink", [get(derc_url)]),
            "GET /dcap uncached": ("uncached", [get(f"{uncached}/dcap")]),
            "GET DERControlList (50) uncached": ("uncached", [get(uncached + edev + "/derp/2/derc?l=50")]),
            "POST reading": ("derlink", [("POST", mup_url, concurrency, reading)]),
            "POST reading c64": ("derlink", [("POST", mup_url, 64, reading)]),
        }
        results: dict[str, Figure] = {}
        for name, (server, streams) in plan.items():
            if name.startswith("baseline") or not only or re.search(only, name):
                (results[name],) = await measure(session, streams, seconds, pids[server])
        half = max(1, concurrency // 2)
        if not only or re.search(only, "mixed"):
            mixed = await measure(
                session,
                [("GET", derc_url, half, None), ("POST", mup_url, half, reading)],
                seconds,
                pids["derlink"],
            )
            results["mixed: GET DERControlList cached"], results["mixed: POST reading"] = mixed
    finally:
        session.close()
    baseline = results["baseline (fixed body)"].rate
    base_cpu = results["baseline (fixed body)"].server_cpu_ms
    print(f"body size {len(list_body)} bytes, {concurrency} connections, {seconds:.0f} s each")
    print(
        "servers on core 0, load generator on core 1: one Python process on asyncio sockets with "
        "ssl.SSLObject (benchmarks/_common.LeanHttps; its CPU is the gen column, near 1.0 = generator-bound)"
    )
    print(
        f"{'scenario':34} {'req/s':>8} {'ratio':>6} {'srv ms/req':>10} {'cpu x':>6} {'p50 ms':>7} "
        f"{'p99 ms':>7} {'gen':>5}"
    )
    for name, f in results.items():
        print(
            f"{name:34} {f.rate:8.0f} {f.rate / baseline:6.2f} {f.server_cpu_ms:10.3f} "
            f"{f.server_cpu_ms / base_cpu:6.1f} {f.p50_ms:7.1f} {f.p99_ms:7.1f} {f.generator_cpu:5.2f}"
        )
    for name, f in results.items():  # benchmarks/run_all.py convention (benchmarks/README.md)
        key = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
        goal = " goal=ratio>=0.5" if name == "GET DERControlList (50) cached" else ""
        print(f"RESULT {key}_req_per_s {f.rate:.0f} req/s ratio={f.rate / baseline:.2f}{goal}")
        cpu_goal = f" goal<={CPU_GOALS_MS[name]}" if name in CPU_GOALS_MS else ""
        print(
            f"RESULT {key}_server_cpu_ms {f.server_cpu_ms:.3f} ms baseline={base_cpu:.3f}"
            f" ratio={f.server_cpu_ms / base_cpu:.1f}{cpu_goal}"
        )
    if "GET DERControlList (50) cached" in results:
        ratio = results["GET DERControlList (50) cached"].rate / baseline
        met = "met" if ratio >= 0.5 else "NOT met"
        print(f"DERControlList GET / baseline = {ratio:.2f} (goal >= 0.5: {met})")
    for name, goal_ms in CPU_GOALS_MS.items():
        if name in results:
            cpu = results[name].server_cpu_ms
            met = "met" if cpu <= goal_ms else "NOT met"
            print(f"{name}: {cpu:.3f} ms server CPU per request (goal <= {goal_ms} ms: {met})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--only", help="run the scenarios whose name matches this regular expression")
    parser.add_argument("--serve", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--baseline", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve_derlink(*args.serve))
        return 0
    if args.baseline:
        asyncio.run(serve_baseline(args.baseline[0], int(args.baseline[1])))
        return 0

    from certs.pki import init_pki, issue_device_certificate

    with tempfile.TemporaryDirectory() as tmp:
        pki_dir = Path(tmp) / "pki"
        init_pki(pki_dir)
        identity = issue_device_certificate(pki_dir, "bench-device")
        device = json.dumps(
            {"chain": str(identity.chain_path), "key": str(identity.key_path), "lfdi": identity.lfdi}
        )
        server, port = spawn("--serve", str(pki_dir), str(Path(tmp) / "data"), identity.lfdi, "on")
        uncached, uncached_port = spawn(
            "--serve", str(pki_dir), str(Path(tmp) / "data2"), identity.lfdi, "off"
        )
        # Size the baseline body like the DERControlList the server returns (measured in a probe).
        body_size = asyncio.run(_probe_size(str(pki_dir), device, port))
        baseline, base_port = spawn("--baseline", str(pki_dir), str(body_size))
        ports = {"derlink": port, "uncached": uncached_port, "baseline": base_port}
        pids = {"derlink": server.pid, "uncached": uncached.pid, "baseline": baseline.pid}
        try:
            asyncio.run(
                run_load(str(pki_dir), device, ports, pids, args.seconds, args.concurrency, args.only)
            )
        finally:
            for proc in (server, uncached, baseline):
                proc.terminate()
                proc.wait(10)
    return 0


async def _probe_size(pki_dir: str, device: str, port: int) -> int:
    import aiohttp

    from certs.pki import load_pki
    from certs.tls import client_ssl_context

    identity = json.loads(device)
    context = client_ssl_context(identity["chain"], identity["key"], load_pki(pki_dir).ca_chain)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
        async with session.get(f"https://127.0.0.1:{port}/edev/1/derp/2/derc?l=50") as response:
            return len(await response.read())


if __name__ == "__main__":
    sys.exit(main())
