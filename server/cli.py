"""``derlink server``: run the 2030.5 utility server, or migrate its database."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from sep2.files import os_error_text, write_atomic
from server.config import ConfigError, ServerConfig, load_config


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("server", help="the CSIP-AUS 2030.5 utility server")
    commands = parser.add_subparsers(dest="server_command", metavar="ACTION", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--config", type=Path, help="TOML configuration file (keys at top level or in [server])"
        )
        p.add_argument("--data-dir", type=Path, help="state directory (default ./derlink-data)")
        p.add_argument("--database-url", help="sqlite+aiosqlite:///FILE or postgresql+asyncpg://...")

    run = commands.add_parser("run", help="serve 2030.5 over mutual TLS")
    common(run)
    run.add_argument("--host", help="listen address (default 127.0.0.1)")
    run.add_argument("--port", type=int, help="listen port (default 8443; 0 picks a free port)")
    run.add_argument("--admin-port", type=int, help="admin/metrics port (default 8444)")
    run.add_argument("--headend-host", help="head-end API and console address (default 127.0.0.1)")
    run.add_argument("--headend-port", type=int, help="head-end API and console port (default 8445)")
    run.add_argument("--cert-dir", type=Path, help="PKI directory from `derlink certs init`")
    run.add_argument("--poll-rate", type=int, help="default pollRate in seconds")
    run.add_argument("--post-rate", type=int, help="default MirrorUsagePoint postRate in seconds")
    run.add_argument("--iana-pen", type=int, help="IANA private enterprise number for mRIDs")
    run.add_argument(
        "--inband-registration",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="allow clients to register by POSTing their EndDevice",
    )
    run.add_argument(
        "--dnssd",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="advertise the server on mDNS (_smartenergy._tcp, 2030.5 clause 7) for local clients",
    )
    run.add_argument("--dnssd-address", help="address advertised by DNS-SD (default: --host)")
    run.add_argument("--log-level", help="DEBUG, INFO, WARNING ...")
    run.set_defaults(handler=_run)

    migrate = commands.add_parser("migrate", help="create or upgrade the database schema")
    common(migrate)
    migrate.set_defaults(handler=_migrate)


def _config(args: argparse.Namespace) -> ServerConfig:
    overrides = {
        name: getattr(args, name, None)
        for name in (
            "data_dir",
            "database_url",
            "host",
            "port",
            "admin_port",
            "headend_host",
            "headend_port",
            "cert_dir",
            "poll_rate",
            "post_rate",
            "iana_pen",
            "inband_registration",
            "dnssd",
            "dnssd_address",
            "log_level",
        )
    }
    return load_config(args.config, overrides)


def _migrate(args: argparse.Namespace) -> int:
    from server.store import make_engine, migrate

    try:
        config = _config(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    async def go() -> None:
        engine = make_engine(config.resolved_database_url)
        await migrate(engine)
        await engine.dispose()

    asyncio.run(go())
    print(f"database at {config.resolved_database_url} is at the newest schema")
    return 0


def _run(args: argparse.Namespace) -> int:
    from server.app import start_server

    try:
        config = _config(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)

    async def go() -> None:
        running = await start_server(config)
        if running.headend_port is not None:
            write_headend_address(config, running.headend_port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):  # before the banner: a stop right after it is clean
            loop.add_signal_handler(sig, stop.set)
        print(
            f"derlink server: 2030.5 on {running.base_url}, admin on http://{config.admin_host}:{running.admin_port}",
            flush=True,
        )
        await stop.wait()
        await running.stop()

    try:
        asyncio.run(go())
    except OSError as exc:  # a port in use, a file that cannot be read: one line, no traceback
        print(f"error: {os_error_text(exc, '--port, --admin-port or --headend-port')}", file=sys.stderr)
        return 2
    except ValueError as exc:  # configuration problems found at start (missing certificates ...)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


HEADEND_FILE = "headend.json"


def write_headend_address(config: ServerConfig, port: int) -> None:
    """Record the head-end's URL in data_dir, so that `derlink ctl --data-dir` finds it (even with port 0)."""
    host = config.headend_host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    document = {"url": f"http://{host}:{port}", "pid": os.getpid()}
    write_atomic(Path(config.data_dir) / HEADEND_FILE, (json.dumps(document) + "\n").encode())
