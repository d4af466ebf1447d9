"""Helpers shared by the fleet benchmarks (not a benchmark itself: run_all.py skips ``_*.py``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("DERLINK_BENCH_CACHE", Path.home() / ".cache" / "derlink-bench"))


def cpu_seconds(pid: int | str = "self") -> float:
    """utime + stime of a process, from /proc (what the kernel charged it, all threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def pick(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def pki_dir() -> Path:
    """A PKI kept between runs (certificates are slow to make by the thousand)."""
    from certs.pki import PkiError, init_pki, load_pki

    directory = CACHE / "pki"
    try:
        load_pki(directory)
    except PkiError:
        init_pki(directory, force=True)
        (CACHE / "devices.json").unlink(missing_ok=True)
    return directory


def device_certificates(count: int) -> list[dict[str, str]]:
    """``count`` device identities (chain, key, lfdi) under the cached PKI, issuing only the missing ones."""
    from certs.pki import issue_device_certificate
    from sep2.identity import lfdi_from_cert_der

    directory = pki_dir()
    index = CACHE / "devices.json"
    known: list[dict[str, str]] = json.loads(index.read_text()) if index.exists() else []
    if len(known) < count:
        print(f"issuing {count - len(known)} client certificates into {directory} (kept for next runs)")
        import ssl

        for i in range(len(known), count):
            ident = issue_device_certificate(directory, f"fleet-site-{i:06d}", force=True)
            der = ssl.PEM_cert_to_DER_cert(Path(ident.cert_path).read_text())
            known.append(
                {"chain": str(ident.chain_path), "key": str(ident.key_path), "lfdi": lfdi_from_cert_der(der)}
            )
        index.write_text(json.dumps(known))
    return known[:count]


def spawn(script: str, core: int | None, *args: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """Run ``script`` with ``args`` (pinned to ``core`` with taskset when given); its first stdout line is
    a JSON object describing it."""
    command = [sys.executable, script, *args]
    if core is not None:
        command = ["taskset", "-c", str(core), *command]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    line = proc.stdout.readline() if proc.stdout else ""
    if not line:
        proc.kill()
        raise RuntimeError(f"{script} {' '.join(args[:1])} did not start")
    return proc, json.loads(line)


class LeanHttps:
    """Keep-alive HTTPS/1.1 load from one Python process, on ``server.notify_client.Connection`` (asyncio
    sockets with ``ssl.SSLObject``, request bytes built here). aiohttp's client cost about 1 ms of CPU per
    request, more than the server's cached answer, so a generator built on it measured itself."""

    def __init__(self, context: Any, host: str = "127.0.0.1") -> None:
        self.context = context
        self.host = host
        self.tls_session: Any = None  # resumed by the next connection
        self._idle: dict[int, list[Any]] = {}

    async def connect(self, port: int) -> Any:
        import asyncio
        import ssl

        from server.notify_client import Connection

        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        sslobj = self.context.wrap_bio(
            incoming, outgoing, server_hostname=self.host, session=self.tls_session
        )
        _, connection = await asyncio.get_running_loop().create_connection(
            lambda: Connection(sslobj, incoming, outgoing), self.host, port
        )
        await connection.handshaken
        if not sslobj.session_reused:
            self.tls_session = connection.session()
        return connection

    @staticmethod
    def message(method: str, path: str, port: int, body: bytes | None = None) -> bytes:
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        if body:
            head += f"Content-Type: application/sep+xml\r\nContent-Length: {len(body)}\r\n"
        return (head + "\r\n").encode() + (body or b"")

    async def request(self, method: str, url: str, body: bytes | None = None) -> Any:
        """The reply (``status``, ``head``, ``body``) on a kept connection to ``url``'s port, or a new one
        (once more on a new one if a kept one turns out closed)."""
        from urllib.parse import urlsplit

        from server.notify_client import ReplyError

        parts = urlsplit(url)
        port = parts.port or 443
        message = self.message(method, parts.path + (f"?{parts.query}" if parts.query else ""), port, body)
        idle = self._idle.setdefault(port, [])
        connection = idle.pop() if idle else None
        if connection is not None and not connection.closed:
            try:
                reply = await connection.exchange(message)
            except ReplyError:
                connection = None
        else:
            connection = None
        if connection is None:
            connection = await self.connect(port)
            reply = await connection.exchange(message)
        if not connection.closed:
            idle.append(connection)
        return reply

    def close(self) -> None:
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()


def header(reply: Any, name: str) -> str:
    """One header of a ``server.notify_client`` reply ('' when absent)."""
    for line in reply.head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name.encode():
            return value.strip().decode()
    return ""
