"""A throwaway PostgreSQL cluster for tests: ``initdb`` into a temporary directory, ``pg_ctl start`` on a
free 127.0.0.1 port with its unix socket in that directory, torn down at the end of the session.

No system-wide service is needed or touched. When the tests run as root the cluster runs as the
``postgres`` OS user (``initdb`` refuses root). Missing binaries FAIL the requesting test with a clear
message: CI installs PostgreSQL with apt, so a skip would hide a broken setup.

Use ``pytest_plugins = ["tests.postgres_fixture"]`` and request ``postgres_url`` (a fresh, empty database
per test) or ``postgres_cluster`` (the session's cluster, to make databases yourself).
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

SUPERUSER = "derlink"


def find_pg_bin() -> Path | None:
    """The directory holding initdb/pg_ctl: $PG_BIN, PATH, or the newest Debian /usr/lib/postgresql/N/bin."""
    candidates: list[Path] = []
    if os.environ.get("PG_BIN"):
        candidates.append(Path(os.environ["PG_BIN"]))
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).parent)
    debian = Path("/usr/lib/postgresql")
    if debian.is_dir():
        versions = sorted(
            (p for p in debian.iterdir() if p.name.isdigit()), key=lambda p: int(p.name), reverse=True
        )
        candidates += [p / "bin" for p in versions]
    for directory in candidates:
        if all((directory / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return directory
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PostgresCluster:
    bin_dir: Path
    root: Path
    port: int
    run_as: list[str]
    _counter: itertools.count

    @property
    def socket_dir(self) -> Path:
        return self.root / "sock"

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def execute(self, sql: str) -> None:
        """Run one statement as the superuser over the unix socket (asyncpg, in a thread so it never
        touches the test's event loop)."""
        import asyncio

        import asyncpg

        async def run() -> None:
            conn = await asyncpg.connect(
                host=str(self.socket_dir), port=self.port, user=SUPERUSER, database="postgres"
            )
            try:
                await conn.execute(sql)
            finally:
                await conn.close()

        with ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, run()).result(timeout=60)

    def new_database(self, prefix: str = "derlink") -> str:
        """Create an empty database and return its ``postgresql+asyncpg://`` URL."""
        name = f"{prefix}_{next(self._counter)}"
        self.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def pg_ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.run_as, str(self.bin_dir / "pg_ctl"), "-D", str(self.root / "data"), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )


def _run_as_prefix() -> list[str]:
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.fail("running as root but there is no 'postgres' OS user to run the test cluster as")
    runuser = shutil.which("runuser")
    if runuser:
        return [runuser, "-u", "postgres", "--"]
    setpriv = shutil.which("setpriv")
    if setpriv:
        entry = pwd.getpwnam("postgres")
        return [setpriv, f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--init-groups"]
    pytest.fail("running as root: need runuser or setpriv to start PostgreSQL as the postgres user")


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    bin_dir = find_pg_bin()
    if bin_dir is None:
        pytest.fail(
            "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found: install them "
            "(Debian/Ubuntu: apt-get install postgresql) or set PG_BIN to their directory"
        )
    run_as = _run_as_prefix()
    # /tmp: reachable by the postgres user, and short enough for the unix socket path (107 bytes).
    root = Path(tempfile.mkdtemp(prefix="derlink-pg-", dir="/tmp" if Path("/tmp").is_dir() else None))
    if run_as:
        entry = pwd.getpwnam("postgres")
        os.chown(root, entry.pw_uid, entry.pw_gid)
    root.chmod(0o700)
    (root / "sock").mkdir()
    if run_as:
        os.chown(root / "sock", entry.pw_uid, entry.pw_gid)
    initdb = subprocess.run(
        [
            *run_as,
            str(bin_dir / "initdb"),
            "-D",
            str(root / "data"),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if initdb.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"initdb failed ({initdb.returncode}): {initdb.stderr or initdb.stdout}")
    cluster = PostgresCluster(bin_dir, root, _free_port(), run_as, itertools.count(1))
    # fsync off: a throwaway cluster; the server's own durability is tested on SQLite and by design
    # (commit before acknowledging) on both.
    options = (
        f"-c listen_addresses=127.0.0.1 -c port={cluster.port} "
        f"-c unix_socket_directories={cluster.socket_dir} -c fsync=off "
        "-c full_page_writes=off -c max_connections=200 -c shared_buffers=32MB"
    )
    started = cluster.pg_ctl("start", "-w", "-t", "60", "-l", str(root / "server.log"), "-o", options)
    if started.returncode != 0:
        log = (root / "server.log").read_text() if (root / "server.log").exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"pg_ctl start failed: {started.stderr or started.stdout}\n{log[-2000:]}")
    try:
        yield cluster
    finally:
        cluster.pg_ctl("stop", "-m", "immediate", "-w", "-t", "30")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_cluster: PostgresCluster) -> str:
    """A fresh, empty database in the session's cluster, as a ``postgresql+asyncpg://`` URL."""
    return postgres_cluster.new_database()
