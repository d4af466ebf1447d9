"""Idle mutual-TLS connections: server memory per kept-alive connection, and server CPU per reconnect with a
full handshake and with a resumed TLS session.

Two server processes on fresh PKI: the derlink 2030.5 server (its own TLS transport, server.tlsconn) and,
as the same-run baseline, a bare aiohttp app on the same TLS context through asyncio's TLS transport. For
each, the load generator (this process, asyncio) opens N connections, sends one GET on each and keeps them
open; the figure is the growth of the server's RSS (/proc/<pid>/status) divided by N. Then M sequential
connect + GET + close cycles (blocking ssl sockets, one at a time) are run with full handshakes and with
the session of the previous connection resumed; the figure is the server's CPU per cycle from
/proc/<pid>/stat. The generator's own CPU is printed beside each figure.

    python benchmarks/idle_connections.py [--connections 2000] [--reconnects 300]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import socket
import ssl
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from server_throughput import cpu_seconds, serve_baseline  # noqa: E402  (this directory)

QUICK_ARGS = ["--connections", "300", "--reconnects", "50"]
GOAL_KIB = 64  # issue 12: idle-connection memory <= 64 KB


async def serve_derlink(pki_dir: str, data_dir: str, connections: str) -> None:
    from server.app import start_server
    from server.config import ServerConfig

    _raise_fd_limit()
    many = int(connections) + 100
    config = ServerConfig(
        data_dir=Path(data_dir), port=0, admin_port=0, headend_port=0, cert_dir=Path(pki_dir),
        log_level="WARNING", idle_timeout=600.0, max_connections=many, max_connections_per_client=many,
    )  # fmt: skip
    running = await start_server(config)
    print(json.dumps({"port": running.port}), flush=True)
    await asyncio.Event().wait()


def _raise_fd_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def spawn(*args: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    line = proc.stdout.readline() if proc.stdout else ""
    if not line:
        proc.kill()
        raise RuntimeError(f"server process {args[0]} did not start")
    return proc, json.loads(line)["port"]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def _request(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()


async def hold_idle(
    port: int, context: ssl.SSLContext, path: str, count: int, pid: int
) -> tuple[float, float]:
    """KiB of server RSS per idle connection, and the generator's CPU seconds for opening them."""
    await asyncio.sleep(0.5)
    before = rss_kib(pid)
    gen0 = cpu_seconds()
    held = []
    for start in range(0, count, 100):
        async def one() -> asyncio.StreamWriter:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=context, server_hostname="127.0.0.1"
            )
            writer.write(_request(path))
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head[:80]
            length = next(int(h.split(b":")[1]) for h in head.split(b"\r\n")
                          if h.lower().startswith(b"content-length"))  # fmt: skip
            await reader.readexactly(length)
            return writer

        held += await asyncio.gather(*(one() for _ in range(min(100, count - start))))
    await asyncio.sleep(1.0)  # let the server settle (freed handshake buffers)
    after = rss_kib(pid)
    generator = cpu_seconds() - gen0
    for writer in held:
        writer.close()
    await asyncio.sleep(1.0)
    return (after - before) / count, generator


def reconnects(
    port: int, context: ssl.SSLContext, path: str, count: int, pid: int, resume: bool
) -> tuple[float, float, float]:
    """(server CPU ms per connect + GET + close, share of connections resumed, generator CPU ms per cycle)."""
    session = None
    resumed = 0
    server0, gen0 = cpu_seconds(pid), cpu_seconds()
    for _ in range(count):
        sock = context.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="127.0.0.1",
                                   session=session if resume else None)  # fmt: skip
        sock.sendall(_request(path).replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
        while sock.recv(65536):
            pass
        resumed += sock.session_reused
        session = sock.session
        sock.close()
    server = (cpu_seconds(pid) - server0) / count * 1000
    return server, resumed / count, (cpu_seconds() - gen0) / count * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--reconnects", type=int, default=300)
    parser.add_argument("--serve", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--baseline", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve_derlink(*args.serve))
        return 0
    if args.baseline:
        _raise_fd_limit()
        asyncio.run(serve_baseline(args.baseline[0], int(args.baseline[1])))
        return 0
    _raise_fd_limit()

    from certs.pki import init_pki, issue_device_certificate, load_pki
    from certs.tls import client_ssl_context

    with tempfile.TemporaryDirectory() as tmp:
        pki_dir = Path(tmp) / "pki"
        init_pki(pki_dir)
        identity = issue_device_certificate(pki_dir, "bench-device")
        context = client_ssl_context(identity.chain_path, identity.key_path, load_pki(pki_dir).ca_chain)
        derlink, port = spawn("--serve", str(pki_dir), str(Path(tmp) / "data"), str(args.connections))
        baseline, base_port = spawn("--baseline", str(pki_dir), "100")
        try:
            rows = {}
            servers = (("derlink", derlink, port, "/tm"), ("baseline", baseline, base_port, "/fixed"))
            for name, proc, p, path in servers:
                kib, gen = asyncio.run(hold_idle(p, context, path, args.connections, proc.pid))
                full = reconnects(p, context, path, args.reconnects, proc.pid, resume=False)
                resumed = reconnects(p, context, path, args.reconnects, proc.pid, resume=True)
                rows[name] = (kib, gen, full, resumed)
        finally:
            for proc in (derlink, baseline):
                proc.terminate()
                proc.wait(10)

    print(f"{args.connections} idle connections, then {args.reconnects} reconnects each way "
          "(load generator: this process, one core; its CPU is the gen column)")  # fmt: skip
    print(f"{'server':<10}{'KiB/idle conn':>15}{'gen s':>8}{'full ms':>10}{'resumed ms':>12}{'resumed':>9}")
    for name, (kib, gen, full, resumed) in rows.items():
        print(f"{name:<10}{kib:>15.1f}{gen:>8.2f}{full[0]:>10.2f}{resumed[0]:>12.2f}{resumed[1]:>9.0%}")
    kib, _gen, full, resumed = rows["derlink"]
    base_kib, _bgen, base_full, base_resumed = rows["baseline"]
    # Ratios: derlink / bare aiohttp on asyncio's TLS (lower is better).
    print(f"RESULT idle_connection_kib {kib:.1f} KiB/conn ratio={kib / base_kib:.2f} goal=<={GOAL_KIB}")
    print(f"RESULT reconnect_full_server_cpu_ms {full[0]:.2f} ms ratio={full[0] / base_full[0]:.2f}")
    print(f"RESULT reconnect_resumed_server_cpu_ms {resumed[0]:.2f} ms "
          f"ratio={resumed[0] / base_resumed[0]:.2f}")  # fmt: skip
    print(f"RESULT reconnect_resumed_share {resumed[1] * 100:.0f} % goal=>=99")
    print(f"RESULT generator_cpu_ms_per_reconnect {full[2]:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
