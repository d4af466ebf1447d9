"""Start-up and storage faults leave a clear way back: an atomic first migration (a disk-full start can
simply be retried), one line naming the path and cause for a read-only directory, a corrupt database or
a port in use, and a client disconnect logged at INFO, not as a 500."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import sys
from pathlib import Path

import pytest
from sqlalchemy import event
from sqlalchemy.exc import OperationalError

from server.app import start_server
from server.faults import describe_startup_error
from server.store import make_engine, migrate
from tests.test_server_harness import server_config

pytest_plugins = ["tests.test_server_harness"]

ROOT = Path(__file__).resolve().parent.parent


async def _tables(url: str) -> list[str]:
    engine = make_engine(url)
    async with engine.connect() as conn:
        rows = (await conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type='table'")).fetchall()
    await engine.dispose()
    return sorted(r[0] for r in rows)


async def test_disk_full_during_the_first_migration_then_space_freed_starts(pki, tmp_path):
    """SQLite's own SQLITE_FULL ("database or disk is full"), produced with PRAGMA max_page_count: the
    same error a full disk gives, without needing a small file system."""
    data_dir = tmp_path / "data"
    config = server_config(pki, data_dir)
    url = config.resolved_database_url
    engine = make_engine(url)
    event.listen(
        engine.sync_engine, "connect", lambda dbapi, _r: dbapi.cursor().execute("PRAGMA max_page_count=12")
    )
    with pytest.raises(OperationalError, match="database or disk is full") as failure:
        await migrate(engine)
    await engine.dispose()
    assert await _tables(url) == []  # rolled back as a whole: not half a schema
    line = describe_startup_error(failure.value, config)
    assert line is not None and "full" in line and "free some space" in line and "\n" not in line
    running = await start_server(config)  # space freed: the next start simply works
    try:
        assert "sites" in await _tables(url) and "alembic_version" in await _tables(url)
    finally:
        await running.stop()


async def _derlink(*args: str, wrap: list[str] | None = None) -> tuple[int, str]:
    cmd = [*(wrap or []), sys.executable, "-m", "derlink", "server", "run", *args]
    process = await asyncio.create_subprocess_exec(
        *cmd, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    _out, err = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode, err.decode()


def _read_only_wrapper(directory: Path) -> list[str]:
    """Run the server with ``directory`` read-only. As root, permission bits do not stop writes, so use
    a read-only bind mount in a private mount namespace of the child alone."""
    if os.geteuid() != 0:
        directory.chmod(0o555)
        return []
    if not shutil.which("unshare"):
        pytest.fail("running as root needs util-linux unshare to make a read-only directory")
    return [
        "unshare", "--mount", "--propagation", "private", "sh", "-c",
        f'mount --bind -o ro "{directory}" "{directory}" && exec "$0" "$@"',
    ]  # fmt: skip


async def test_read_only_dir_corrupt_db_and_port_in_use_print_one_line(pki, tmp_path):
    read_only = tmp_path / "ro"
    read_only.mkdir()
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "derlink.sqlite3").write_bytes(b"this is not an SQLite database, " * 64)
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    busy_port = holder.getsockname()[1]
    common = ["--admin-port", "0", "--cert-dir", str(pki.directory)]
    try:
        results = await asyncio.gather(
            _derlink(
                "--data-dir", str(read_only), "--port", "0", *common, wrap=_read_only_wrapper(read_only)
            ),
            _derlink("--data-dir", str(corrupt), "--port", "0", *common),
            _derlink("--data-dir", str(tmp_path / "fresh"), "--port", str(busy_port), *common),
        )
    finally:
        holder.close()
    expected = [
        [str(read_only), "Read-only file system"],
        [str(corrupt / "derlink.sqlite3"), "corrupt", "file is not a database", "move the file aside"],
        [f"127.0.0.1', {busy_port}", "address already in use"],
    ]
    for (code, err), needles in zip(results, expected, strict=True):
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert code != 0, err
        assert "Traceback" not in err, err
        assert len(errors) == 1, err
        for needle in needles:
            assert needle in errors[0], (needle, errors[0])


async def test_client_disconnect_mid_request_is_info_not_error(server, pki, caplog):
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", server.port, ssl=pki.ssl("dev-a"), server_hostname="127.0.0.1"
    )
    with caplog.at_level(logging.INFO, logger="derlink"):
        writer.write(
            b"POST /edev HTTP/1.1\r\nHost: x\r\nContent-Type: application/sep+xml\r\n"
            b"Content-Length: 400\r\n\r\n<EndDevice"
        )
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.transport.abort()  # gone mid-body
        for _ in range(50):
            if any("client disconnected" in r.getMessage() for r in caplog.records):
                break
            await asyncio.sleep(0.05)
    notes = [r for r in caplog.records if "client disconnected" in r.getMessage()]
    assert notes and all(r.levelno == logging.INFO for r in notes)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert (await server.store.admin.table_dump())["sites"] == []
    del reader
