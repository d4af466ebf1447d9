"""Configuration (TOML + flags, errors name the field), migrations (alembic head == table definitions),
`derlink server migrate`, and the TLS-terminating-proxy mode."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

import server.incidents.tables  # noqa: F401  (registers its tables on metadata until the store imports it)
from sep2 import resources as r
from sep2.xml import from_xml
from server.app import start_server
from server.config import ConfigError, ServerConfig, load_config
from server.store import make_engine, metadata, migrate
from tests.test_server_harness import end_device, server_config

pytest_plugins = ["tests.test_server_harness"]
ROOT = Path(__file__).resolve().parent.parent


def test_defaults_work_without_a_file(tmp_path):
    config = load_config(None, {"data_dir": str(tmp_path)})
    assert config.resolved_database_url == f"sqlite+aiosqlite:///{tmp_path.resolve()}/derlink.sqlite3"
    assert config.cache_active and config.inband_registration and config.port == 8443


def test_toml_file_and_flag_overrides(tmp_path):
    path = tmp_path / "server.toml"
    path.write_text('[server]\nport = 9443\npoll_rate = 60\ntrusted_proxies = ["10.0.0.0/8"]\n')
    config = load_config(path, {"poll_rate": 30})
    assert (config.port, config.poll_rate, config.trusted_proxies) == (9443, 30, ["10.0.0.0/8"])


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("prot = 1", "prot"),
        ("port = 'eighty'", "port"),
        ("port = 70000", "port"),
        ("poll_rate = -5", "poll_rate"),
        ("inband_registration = 'yes'", "inband_registration"),
        ("trusted_proxies = ['not-an-ip']", "trusted_proxies"),
        ("database_url = 'mysql://x'", "database_url"),
        ("tls = false", "tls"),
        ("notify_retry_max = 0", "notify_retry_max"),
        ("notify_per_host = 0", "notify_per_host"),
        ("workers = 2", "workers"),  # more than one process needs PostgreSQL
        ("[server\nport=1", "server.toml"),
    ],
)
def test_config_errors_name_the_field(tmp_path, text, field):
    path = tmp_path / "server.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=field):
        load_config(path)


async def test_migrations_match_table_definitions(tmp_path):
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path}/m.sqlite3")
    await migrate(engine)
    await migrate(engine)  # idempotent

    def diff(sync_conn: sa.Connection) -> list:
        return compare_metadata(MigrationContext.configure(sync_conn), metadata)

    async with engine.connect() as conn:
        assert await conn.run_sync(diff) == []
        mode = (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar_one()
    assert mode == "wal"
    await engine.dispose()


def test_cli_migrate_creates_the_database(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from server.cli import register; import argparse;"
            "p = argparse.ArgumentParser(); s = p.add_subparsers(); register(s);"
            "a = p.parse_args(sys.argv[1:]); sys.exit(a.handler(a))",
            "server",
            "migrate",
            "--data-dir",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "derlink.sqlite3").exists()
    bad = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from server.cli import register; import argparse;"
            "p = argparse.ArgumentParser(); s = p.add_subparsers(); register(s);"
            "a = p.parse_args(sys.argv[1:]); sys.exit(a.handler(a))",
            "server",
            "migrate",
            "--database-url",
            "mysql://nope",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "database_url" in bad.stderr


async def test_proxy_mode_trusts_the_header_only_from_configured_proxies(pki, tmp_path):
    pem = pki.identities["dev-a"].cert_path.read_bytes().decode()
    header = {"X-Client-Cert": quote(pem)}
    trusted = await start_server(
        server_config(pki, tmp_path / "a", tls=False, trusted_proxies=["127.0.0.1/32"])
    )
    untrusted = await start_server(
        server_config(pki, tmp_path / "b", tls=False, trusted_proxies=["10.9.9.9"])
    )
    try:
        async with aiohttp.ClientSession() as session:
            from sep2.xml import to_xml

            body = to_xml(end_device(pki.identities["dev-a"].lfdi))
            async with session.post(
                f"{trusted.base_url}/edev",
                data=body,
                headers={**header, "Content-Type": "application/sep+xml"},
            ) as reply:
                assert reply.status == 201
            async with session.get(f"{trusted.base_url}/edev?l=5", headers=header) as reply:
                listing = from_xml(await reply.read(), r.EndDeviceList)
                assert listing.EndDevice[0].lFDI == pki.identities["dev-a"].lfdi
            async with session.get(f"{trusted.base_url}/dcap") as reply:  # no certificate at all
                assert reply.status == 403
            async with session.get(f"{untrusted.base_url}/dcap", headers=header) as reply:
                assert reply.status == 403
                assert from_xml(await reply.read(), r.Error)
    finally:
        await trusted.stop()
        await untrusted.stop()


def test_proxy_config_round_trip():
    config = ServerConfig(trusted_proxies=["127.0.0.1"], tls=False)
    assert config.proxy_mode and [str(n) for n in config.proxy_networks()] == ["127.0.0.1/32"]
