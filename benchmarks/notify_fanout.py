"""Emergency broadcast fan-out: from the operator's command to the Notification at every subscribed site.

Run: ``python benchmarks/notify_fanout.py [--sites 2000] [--tarpit-percent 1]`` (goal: 10,000 sites,
p99 <= 5 s).

Processes: the derlink server (SQLite, default notification settings) pinned to core 0; the subscribers
pinned to core 1, answering HTTP/1.1 POSTs over mutual TLS so that they are not the limit (their CPU is
printed): one nginx worker when nginx is installed (``apt-get install nginx-light``; C TLS, about half the
CPU per resumed connection), else a Python process on derlink's own server TLS transport with a minimal
request parser (``--subscribers python``). Each site listens on a loopback address of its own
(127.20.x.y), so that every site is a separate subscriber as gateways are, and ``--tarpit-percent`` of the
sites subscribed at tarpits (127.30.x.y) that accept the connection and never answer. Each site holds one
Subscription to its emergency DERControlList. The operator issues ``POST /api/emergency`` (target all,
zero export) on the head-end; the clock starts as the command is sent.

Prints p50/p99 of command -> receipt at the sites that answer, notifications/s, the server's CPU per
notification (/proc) and the subscribers' CPU; then the same for a second broadcast (lifting the emergency)
at once, over the connections the server kept (``--max-idle``, the server's ``notify_max_idle``; the rest
reconnect and resume), and for a third after the kept ones have closed (``notify_keepalive``; new
connections, TLS sessions resumed: the count of resumed handshakes is printed). Baseline, same run: a bare
aiohttp client process on the server's core POSTing a body of the same size once to each of the same
subscribers with the same TLS and concurrency (no database, no rendering); ``ratio`` = derlink's
notifications/s over it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from _common import cpu_seconds, loadavg, pick, pki_dir, spawn  # noqa: E402

from server.config import ServerConfig  # noqa: E402

QUICK_ARGS = ["--sites", "300"]
TOKEN = "fanout-benchmark-operator-token"
CONCURRENCY = 256  # ServerConfig.notify_concurrency's default; the baseline uses the same


def good_address(i: int) -> str:
    return f"127.20.{i // 250}.{i % 250 + 1}"


def tarpit_address(i: int) -> str:
    return f"127.30.{i // 250}.{i % 250 + 1}"


def is_tarpit(i: int, percent: float) -> bool:
    return percent > 0 and i % round(100 / percent) == 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def listening(address: str, port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((address, port))
    sock.listen(64)
    sock.setblocking(False)
    return sock


# ------------------------------------------------------------------------------------------- subscribers


class Receiver(asyncio.Protocol):
    """A subscriber's notification endpoint at its cheapest: HTTP/1.1 POSTs with a Content-Length, answered
    201, over derlink's own server TLS transport (so that the subscribers' CPU, on the other core, is not
    what limits the broadcast; it is printed)."""

    def __init__(self, record: Any) -> None:
        self.record = record
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head = bytes(self.buffer[:end]).lower()
            length = int(head.split(b"content-length:")[1].split(b"\r\n")[0])
            if len(self.buffer) < end + 4 + length:
                return
            body = bytes(self.buffer[end + 4 : end + 4 + length])
            del self.buffer[: end + 4 + length]
            path = head.split(b" ", 2)[1]
            self.record(int(path.rsplit(b"/", 1)[1]), body, self.transport)
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")


NGINX_CONF = """
user {user};
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log error;
worker_rlimit_nofile {nofile};
events {{ worker_connections {connections}; }}
http {{
    log_format arrival '$msec $uri $ssl_session_reused $content_length';
    access_log {dir}/arrivals.log arrival buffer=256k flush=50ms;
    keepalive_timeout 75s;
    ssl_certificate {chain};
    ssl_certificate_key {key};
    ssl_client_certificate {ca};
    ssl_verify_client on;
    ssl_verify_depth 4;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_ciphers ECDHE-ECDSA-AES128-CCM8:ECDHE-ECDSA-AES128-GCM-SHA256;
    ssl_session_cache shared:fanout:64m;
    ssl_session_timeout 1h;
    server {{
{listens}
        location /n/ {{ return 201; }}
    }}
}}
"""


class NginxSubscribers:
    """The answering subscribers as one nginx worker (C TLS, on the subscribers' core): each site still
    has an address of its own, and nginx logs each POST's arrival time, path and whether its TLS session
    was resumed. Used when nginx is installed (``--subscribers nginx``), so that the subscribers' CPU is a
    small part of a broadcast and the server is what is measured."""

    def __init__(self, directory: Path, pki: Any, addresses: list[str], port: int) -> None:
        self.dir = directory
        listens = "\n".join(f"        listen {a}:{port} ssl;" for a in addresses)
        (directory / "nginx.conf").write_text(
            NGINX_CONF.format(
                user="root" if os.geteuid() == 0 else "nobody",
                dir=directory, chain=pki.server_chain, key=pki.server_key, ca=pki.ca_chain, listens=listens,
                nofile=len(addresses) * 4 + 1000, connections=len(addresses) * 3 + 1000,
            )
        )  # fmt: skip
        self.proc = subprocess.Popen(["nginx", "-c", str(directory / "nginx.conf"), "-p", str(directory)])
        self.offset = 0

    def wait_ready(self, port_address: tuple[str, int]) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(port_address) == 0:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"nginx did not start: {(self.dir / 'error.log').read_text()[-2000:]}")

    def cpu(self) -> float:
        pids = [self.proc.pid]
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        if children.exists():
            pids += [int(p) for p in children.read_text().split()]
        return sum(cpu_seconds(p) for p in pids)

    def reset(self) -> None:
        log = self.dir / "arrivals.log"
        self.offset = log.stat().st_size if log.exists() else 0

    def read(self, arrivals: dict[int, float], resumed: set[int], sizes: list[int]) -> None:
        log = self.dir / "arrivals.log"
        if not log.exists():
            return
        with log.open("rb") as f:
            f.seek(self.offset)
            data = f.read()
        complete = data.rfind(b"\n") + 1
        self.offset += complete
        for line in data[:complete].splitlines():
            at, uri, reused, length = line.split()
            i = int(uri.rsplit(b"/", 1)[1])
            arrivals.setdefault(i, float(at))
            if reused == b"r":
                resumed.add(i)
            if not sizes and length != b"-":
                sizes.append(int(length))

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


async def serve_receivers(pki: str, sites: int, tarpit_percent: float, kind: str = "python") -> None:
    from aiohttp import web

    from certs.pki import load_pki
    from certs.tls import server_ssl_context
    from server.tlsconn import tls_factory

    arrivals: dict[int, float] = {}
    sizes: list[int] = []
    resumed: set[int] = set()  # connections whose TLS session was resumed
    nginx: NginxSubscribers | None = None

    def record(i: int, body: bytes, transport: asyncio.Transport) -> None:
        arrivals.setdefault(i, time.time())
        if transport.get_extra_info("ssl_object").session_reused:
            resumed.add(i)
        if not sizes:
            sizes.append(len(body))

    async def stats(_request: web.Request) -> web.Response:
        if nginx is not None:
            nginx.read(arrivals, resumed, sizes)
        cpu = cpu_seconds() + (nginx.cpu() if nginx is not None else 0.0)
        return web.json_response(
            {"arrivals": arrivals, "body_size": sizes[0] if sizes else 0, "resumed": len(resumed), "cpu": cpu}
        )

    async def reset(_request: web.Request) -> web.Response:
        if nginx is not None:
            nginx.reset()
        arrivals.clear()
        resumed.clear()
        return web.json_response({})

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        while await reader.read(65536):
            pass

    held: list[asyncio.StreamWriter] = []
    paths = load_pki(pki)
    context = server_ssl_context(paths.server_chain, paths.server_key, paths.ca_chain)
    factory = tls_factory(context, lambda: Receiver(record), handshake_timeout=30.0)
    loop = asyncio.get_running_loop()
    port, tarpit_port = free_port(), free_port()
    answering = [good_address(i) for i in range(1, sites + 1) if not is_tarpit(i, tarpit_percent)]
    for i in range(1, sites + 1):
        if is_tarpit(i, tarpit_percent):
            await asyncio.start_server(hold, sock=listening(tarpit_address(i), tarpit_port))
        elif kind == "python":
            await loop.create_server(factory, sock=listening(good_address(i), port))
    if kind == "nginx":
        directory = Path(tempfile.mkdtemp(prefix="fanout-nginx-"))
        nginx = NginxSubscribers(directory, paths, answering, port)
        nginx.wait_ready((answering[-1], port))
    control = web.Application()
    control.router.add_get("/stats", stats)
    control.router.add_post("/reset", reset)
    control_runner = web.AppRunner(control, access_log=None)
    await control_runner.setup()
    control_port = free_port()
    await web.TCPSite(control_runner, "127.0.0.1", control_port).start()
    print(json.dumps({"port": port, "tarpit_port": tarpit_port, "control_port": control_port}), flush=True)
    stopping = asyncio.Event()  # the driver's terminate(): stop nginx too, not leave it running
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    try:
        await stopping.wait()
    finally:
        if nginx is not None:
            nginx.stop()


# ------------------------------------------------------------------------------------------------ server


async def serve_derlink(
    pki: str, data_dir: str, sites: int, tarpit_percent: float, port: int, tport: int, max_idle: int
) -> None:
    import logging

    import sqlalchemy as sa

    from server.app import start_server
    from server.config import ServerConfig
    from server.store import Store, make_engine, migrate
    from server.store.schema import programs, subscriptions
    from server.store.schema import sites as sites_table

    logging.basicConfig(level=logging.ERROR)
    config = ServerConfig(
        data_dir=Path(data_dir),
        port=0,
        admin_port=0,
        headend_port=0,
        cert_dir=Path(pki),
        notify_allow=["127.0.0.0/8"],
        notify_max_idle=max_idle,
        headend_tokens=[{"name": "bench", "token": TOKEN, "role": "operator"}],
        log_level="ERROR",
    )
    engine = make_engine(config.resolved_database_url)
    await migrate(engine)
    store = Store(engine)
    await store.admin.ensure_standard_programs()
    now = int(time.time())
    async with engine.begin() as conn:
        emergency = (
            await conn.execute(sa.select(programs.c.id).where(programs.c.key == "emergency"))
        ).scalar_one()
        await conn.execute(
            sites_table.insert(),
            [
                {
                    "id": i,
                    "lfdi": f"{i:040X}",
                    "sfdi": i,
                    "enabled": True,
                    "changed_time": now,
                    "registered_time": now,
                }
                for i in range(1, sites + 1)
            ],
        )
        await conn.execute(
            subscriptions.insert(),
            [
                {
                    "site_id": i,
                    "kind": "derc",
                    "program_id": emergency,
                    "fsa_key": 0,
                    "subscribed_href": f"/edev/{i}/derp/{emergency}/derc",
                    "notification_uri": (
                        f"https://{tarpit_address(i)}:{tport}/n/{i}"
                        if is_tarpit(i, tarpit_percent)
                        else f"https://{good_address(i)}:{port}/n/{i}"
                    ),
                    "limit": 5,
                    "level": "+S1",
                    "owner_lfdi": f"{i:040X}",
                    "created_at": now,
                }
                for i in range(1, sites + 1)
            ],
        )
    running = await start_server(config, store)
    print(json.dumps({"headend_port": running.headend_port, "pid": os.getpid()}), flush=True)
    await asyncio.Event().wait()


# ---------------------------------------------------------------------------------------------- baseline


async def bare_fanout(pki: str, port: int, sites: int, tarpit_percent: float, body_size: int) -> None:
    """POST a fixed body once to each answering subscriber: TLS client work with nothing else."""
    import aiohttp

    from server.config import ServerConfig
    from server.notifications import notification_client_ssl

    context = notification_client_ssl(ServerConfig(cert_dir=Path(pki)))
    body = b"x" * body_size
    urls = [
        f"https://{good_address(i)}:{port}/n/{i}"
        for i in range(1, sites + 1)
        if not is_tarpit(i, tarpit_percent)
    ]
    queue = iter(urls)
    cpu, started = cpu_seconds(), time.perf_counter()
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=context, limit=CONCURRENCY, force_close=True)
    ) as session:

        async def worker() -> None:
            for url in queue:
                async with session.post(
                    url, data=body, headers={"Content-Type": "application/sep+xml"}
                ) as response:
                    await response.read()

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    wall = time.perf_counter() - started
    print(
        json.dumps({"rate": len(urls) / wall, "cpu_ms": (cpu_seconds() - cpu) * 1000 / len(urls)}), flush=True
    )


# ------------------------------------------------------------------------------------------------ driver


async def broadcast(
    headend: str, control: str, path: str, body: dict, expected: int, pids: dict[str, int]
) -> dict:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        await (await session.post(f"{control}/reset")).read()
        cpu = {name: cpu_seconds(pid) for name, pid in pids.items()}
        async with session.get(f"{control}/stats") as response:
            subscribers_cpu = (await response.json())["cpu"]
        sent = time.time()
        async with session.post(
            f"{headend}{path}", json=body, headers={"Authorization": f"Bearer {TOKEN}"}
        ) as response:
            assert response.status in (200, 201), await response.text()
        deadline = time.monotonic() + 120 + expected / 20
        while True:
            await asyncio.sleep(0.1)
            async with session.get(f"{control}/stats") as response:
                stats = await response.json()
            if len(stats["arrivals"]) >= expected or time.monotonic() > deadline:
                break
        used = {name: cpu_seconds(pid) - cpu[name] for name, pid in pids.items()}
        used["receiver"] = stats["cpu"] - subscribers_cpu  # with nginx's processes
    latencies = sorted(t - sent for t in stats["arrivals"].values())
    last = latencies[-1] if latencies else float("nan")
    return {
        "received": len(latencies),
        "p50": pick(latencies, 0.5),
        "p99": pick(latencies, 0.99),
        "last": last,
        "rate": len(latencies) / last if latencies else 0.0,
        "server_cpu_ms": used["server"] * 1000 / max(1, len(latencies)),
        "receiver_cpu_s": used["receiver"],
        "body_size": stats["body_size"],
        "resumed": stats["resumed"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=2000)
    parser.add_argument("--tarpit-percent", type=float, default=1.0)
    parser.add_argument(
        "--max-idle",
        type=int,
        default=ServerConfig.model_fields["notify_max_idle"].default,
        help="the server's notify_max_idle (connections kept to subscribers; default: the config default). "
        "The subscribers then hold a listening socket and a connection per site: mind `ulimit -n`",
    )
    parser.add_argument(
        "--subscribers",
        choices=["nginx", "python"],
        default="nginx" if shutil.which("nginx") else "python",
        help="what answers at the subscribers' addresses: one nginx worker (default when installed: "
        "apt-get install nginx-light) or a Python process on derlink's server TLS transport",
    )
    parser.add_argument(
        "--profile", metavar="FILE", help="py-spy (if installed) samples the server in the third broadcast"
    )
    parser.add_argument("--role", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        role, *rest = args.role
        if role == "receiver":
            asyncio.run(serve_receivers(rest[0], int(rest[1]), float(rest[2]), rest[3]))
        elif role == "server":
            asyncio.run(
                serve_derlink(
                    rest[0], rest[1], int(rest[2]), float(rest[3]), int(rest[4]), int(rest[5]), int(rest[6])
                )
            )
        elif role == "baseline":
            asyncio.run(bare_fanout(rest[0], int(rest[1]), int(rest[2]), float(rest[3]), int(rest[4])))
        return 0

    pki = str(pki_dir())
    sites, percent = args.sites, args.tarpit_percent
    good = sum(1 for i in range(1, sites + 1) if not is_tarpit(i, percent))
    print(f"{sites} subscribed sites, {sites - good} of them tarpits; load average {loadavg()}")
    receiver, rinfo = spawn(
        __file__, 1, "--role", "receiver", pki, str(sites), str(percent), args.subscribers
    )
    procs = [receiver]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            server, sinfo = spawn(
                __file__, 0, "--role", "server", pki, tmp, str(sites), str(percent),
                str(rinfo["port"]), str(rinfo["tarpit_port"]), str(args.max_idle),
            )  # fmt: skip
            procs.append(server)
            headend = f"http://127.0.0.1:{sinfo['headend_port']}"
            control = f"http://127.0.0.1:{rinfo['control_port']}"
            pids = {"server": server.pid, "receiver": receiver.pid}
            first = asyncio.run(
                broadcast(headend, control, "/api/emergency", {"target": "all", "action": "zero_export",
                          "reason": "benchmark"}, good, pids)
            )  # fmt: skip
            second = asyncio.run(
                broadcast(
                    headend,
                    control,
                    "/api/emergency/lift",
                    {"target": "all", "reason": "benchmark"},
                    good,
                    pids,
                )
            )
            keepalive = ServerConfig.model_fields["notify_keepalive"].default
            time.sleep(keepalive + 1)  # past the sender's keep-alive: new connections, TLS sessions resumed
            spy = None
            if args.profile:
                spy = subprocess.Popen(
                    ["py-spy", "record", "-p", str(server.pid), "-r", "250", "--nonblocking",
                     "--format", "raw", "-o", args.profile, "-d", str(max(5, sites // 1000))],
                    stdout=subprocess.DEVNULL,
                )  # fmt: skip
                time.sleep(0.5)
            third = asyncio.run(
                broadcast(headend, control, "/api/emergency", {"target": "all", "action": "zero_generation",
                          "reason": "benchmark"}, good, pids)
            )  # fmt: skip
            if spy is not None:
                spy.wait(120)
            server.terminate()
            server.wait(10)
            asyncio.run(_reset(control))
            baseline_proc, base = spawn(
                __file__, 0, "--role", "baseline", pki, str(rinfo["port"]), str(sites), str(percent),
                str(first["body_size"]),
            )  # fmt: skip
            baseline_proc.wait(60)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)
    print(
        f"load generator: none (the server sends); subscribers ({args.subscribers}) on core 1, "
        f"server on core 0; load {loadavg()}"
    )
    print(
        f"baseline: bare aiohttp client, same TLS and concurrency {CONCURRENCY}: {base['rate']:.0f} POST/s, "
        f"{base['cpu_ms']:.2f} ms CPU each"
    )
    print(f"server: notify_max_idle {args.max_idle} (connections kept to subscribers between broadcasts)")
    for name, f in (("emergency", first), ("lift at once", second), ("again (resumed)", third)):
        print(
            f"{name:18} resumed {f['resumed']:5}  received {f['received']}/{good}  "
            f"p50 {f['p50']:.2f} s  p99 {f['p99']:.2f} s  "
            f"last {f['last']:.2f} s  {f['rate']:.0f} notifications/s  "
            f"server {f['server_cpu_ms']:.2f} ms CPU each  subscribers {f['receiver_cpu_s']:.1f} s CPU"
        )
    ratio = first["rate"] / base["rate"]
    print(f"RESULT notify_fanout_{sites}_p50 {first['p50']:.3f} s")
    print(f"RESULT notify_fanout_{sites}_p99 {first['p99']:.3f} s goal=<=5")
    print(f"RESULT notify_fanout_{sites}_per_s {first['rate']:.0f} notifications/s ratio={ratio:.2f}")
    print(f"RESULT notify_fanout_{sites}_received {first['received'] / good:.4f} fraction goal=>=1")
    print(f"RESULT notify_fanout_{sites}_server_cpu_ms {first['server_cpu_ms']:.3f} ms")
    print(f"RESULT notify_fanout_{sites}_receiver_cpu_s {first['receiver_cpu_s']:.2f} s")
    print(f"RESULT notify_fanout_{sites}_repeat_p99 {second['p99']:.3f} s")
    print(f"RESULT notify_fanout_{sites}_repeat_server_cpu_ms {second['server_cpu_ms']:.3f} ms")
    print(f"RESULT notify_fanout_{sites}_resumed_p99 {third['p99']:.3f} s")
    print(f"RESULT notify_fanout_{sites}_resumed_server_cpu_ms {third['server_cpu_ms']:.3f} ms")
    return 0


async def _reset(control: str) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        await (await session.post(f"{control}/reset")).read()


if __name__ == "__main__":
    sys.exit(main())
