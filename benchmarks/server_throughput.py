"""Requests/s of the 2030.5 server against a minimal aiohttp handler over the same mutual TLS setup.

Run: ``python benchmarks/server_throughput.py [--seconds 5] [--concurrency 32]``

Each server runs in its own process (the derlink server on a fresh SQLite store in a temp dir, and a
baseline aiohttp app returning a fixed body of the DERControlList's size with the same TLS context); the
load generator is a third process using keep-alive aiohttp connections with a device certificate. It
measures GET /dcap, GET a 50-item DERControlList, POST a reading, and the baseline, then prints each as a
ratio of the baseline. Goal: the DERControlList GET at >= 0.5 of the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


QUICK_ARGS = ["--seconds", "2"]  # benchmarks/run_all.py --quick


async def serve_derlink(pki_dir: str, data_dir: str, device_lfdi: str) -> None:
    from server.app import start_server
    from server.config import ServerConfig
    from server.store import build_control_base

    config = ServerConfig(
        data_dir=Path(data_dir), port=0, admin_port=0, headend_port=0, cert_dir=Path(pki_dir)
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


def spawn(*args: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    line = proc.stdout.readline() if proc.stdout else ""
    if not line:
        proc.kill()
        raise RuntimeError(f"server process {args[0]} did not start")
    return proc, json.loads(line)["port"]


async def measure(session, method: str, url: str, seconds: float, concurrency: int, body_fn=None) -> float:
    """Completed requests per second over ``seconds`` with ``concurrency`` keep-alive workers."""
    deadline = time.perf_counter() + seconds
    done = 0

    async def worker(n: int) -> None:
        nonlocal done
        i = 0
        while time.perf_counter() < deadline:
            data = body_fn(n, i) if body_fn else None
            headers = {"Content-Type": "application/sep+xml"} if data else None
            async with session.request(method, url, data=data, headers=headers) as response:
                await response.read()
                if response.status >= 300:
                    raise RuntimeError(f"{method} {url}: HTTP {response.status}")
            done += 1
            i += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(n) for n in range(concurrency)))
    return done / (time.perf_counter() - started)


async def run_load(
    pki_dir: str, device: str, port: int, base_port: int, seconds: float, concurrency: int
) -> None:
    import aiohttp

    from certs.pki import load_pki
    from certs.tls import client_ssl_context
    from sep2 import resources as r
    from sep2.xml import to_xml
    from tests.test_server_harness import meter_reading, mup

    paths = load_pki(pki_dir)
    identity = json.loads(device)
    context = client_ssl_context(identity["chain"], identity["key"], paths.ca_chain)
    base = f"https://127.0.0.1:{port}"
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=context, limit=concurrency)
    ) as session:
        async with session.get(f"{base}/edev?l=1") as response:
            edev = (await response.text()).split('href="', 2)[2].split('"', 1)[0]
        derc_url = f"{base}{edev}/derp/2/derc?l=50"
        async with session.get(derc_url) as response:
            list_body = await response.read()
        assert list_body.count(b"<DERControl ") == 50, "expected a 50-item DERControlList"
        async with session.post(
            f"{base}/mup", data=to_xml(mup(identity["lfdi"])), headers={"Content-Type": "application/sep+xml"}
        ) as response:
            mup_url = base + response.headers["Location"]
        reading_body = to_xml(meter_reading(1500, 0))
        assert isinstance(r.Reading, type)
        # Warm up both servers.
        await measure(session, "GET", derc_url, 0.5, concurrency)
        await measure(session, "GET", f"https://127.0.0.1:{base_port}/fixed", 0.5, concurrency)
        results = {
            "baseline (fixed body)": await measure(
                session, "GET", f"https://127.0.0.1:{base_port}/fixed", seconds, concurrency
            ),
            "GET /dcap": await measure(session, "GET", f"{base}/dcap", seconds, concurrency),
            "GET DERControlList (50)": await measure(session, "GET", derc_url, seconds, concurrency),
            "POST reading": await measure(
                session, "POST", mup_url, seconds, concurrency, body_fn=lambda n, i: reading_body
            ),
        }
    baseline = results["baseline (fixed body)"]
    print(f"body size {len(list_body)} bytes, {concurrency} connections, {seconds:.0f} s each")
    print(f"{'scenario':28} {'req/s':>10} {'ratio':>8}")
    for name, rate in results.items():
        print(f"{name:28} {rate:10.0f} {rate / baseline:8.2f}")
    for name, rate in results.items():  # benchmarks/run_all.py convention (benchmarks/README.md)
        key = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
        goal = " goal=ratio>=0.5" if name.startswith("GET DERControlList") else ""
        print(f"RESULT {key}_req_per_s {rate:.0f} req/s ratio={rate / baseline:.2f}{goal}")
    ratio = results["GET DERControlList (50)"] / baseline
    print(
        f"DERControlList GET / baseline = {ratio:.2f} (goal >= 0.5: {'met' if ratio >= 0.5 else 'NOT met'})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--serve", nargs=3, help=argparse.SUPPRESS)
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
        server, port = spawn("--serve", str(pki_dir), str(Path(tmp) / "data"), identity.lfdi)
        # Size the baseline body like the DERControlList the server returns (measured in a probe).
        body_size = asyncio.run(_probe_size(str(pki_dir), device, port))
        baseline, base_port = spawn("--baseline", str(pki_dir), str(body_size))
        try:
            asyncio.run(run_load(str(pki_dir), device, port, base_port, args.seconds, args.concurrency))
        finally:
            for proc in (server, baseline):
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
