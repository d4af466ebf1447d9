"""``derlink server``: run the 2030.5 utility server, or migrate its database."""

from __future__ import annotations

import argparse
import asyncio
import json
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

    saving = commands.add_parser("backup", help="copy the SQLite store to a file (safe while serving)")
    common(saving)
    saving.add_argument("--to", type=Path, required=True, help="backup file to write")
    saving.set_defaults(handler=_backup)
    loading = commands.add_parser("restore", help="replace the SQLite store with a backup (server stopped)")
    common(loading)
    loading.add_argument("--from", dest="source", type=Path, required=True, help="backup file to restore")
    loading.set_defaults(handler=_restore)

    token = commands.add_parser(
        "token", help="head-end bearer tokens: add, revoke, list (takes effect without a restart)"
    )
    token_actions = token.add_subparsers(dest="token_action", metavar="ACTION", required=True)
    for action in ("add", "revoke", "list"):
        p = token_actions.add_parser(action)
        common(p)
        if action != "list":
            p.add_argument("name", help="the token's name (shown in the audit log)")
        if action == "add":
            p.add_argument("--role", choices=("operator", "viewer"), default="operator")
        p.set_defaults(handler=_token)


def _sqlite_path(config: ServerConfig) -> Path:
    if not config.is_sqlite:
        raise ConfigError("database_url: backup and restore are for SQLite; use pg_dump for PostgreSQL")
    return Path(config.resolved_database_url.split("///", 1)[-1])


def _backup(args: argparse.Namespace) -> int:
    from server.backup import BackupError, backup

    try:
        config = _config(args)
        size = backup(_sqlite_path(config), args.to)
    except (ConfigError, BackupError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"backup written to {args.to} ({size} bytes)")
    return 0


def _restore(args: argparse.Namespace) -> int:
    from server.backup import BackupError, restore

    try:
        config = _config(args)
        restore(args.source, _sqlite_path(config), Path(config.data_dir))
    except (ConfigError, BackupError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"restored {args.source} into {config.resolved_database_url}")
    return 0


def _token(args: argparse.Namespace) -> int:
    from server.headend.tokens import add_token, list_tokens, revoke_token

    try:
        config = _config(args)
        if args.token_action == "add":
            print(add_token(config.data_dir, args.name, args.role))
            print(f"token {args.name!r} ({args.role}) added; it is shown only this once", file=sys.stderr)
        elif args.token_action == "revoke":
            revoke_token(config.data_dir, args.name)
            print(f"token {args.name!r} revoked", file=sys.stderr)
        else:
            document = list_tokens(config.data_dir)
            for entry in document["tokens"]:
                print(f"{entry['name']}\t{entry['role']}")
            for name in document["revoked"]:
                print(f"{name}\trevoked")
    except (ConfigError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


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
        try:
            await migrate(engine)
        finally:
            await engine.dispose()

    try:
        asyncio.run(go())
    except Exception as exc:
        return _startup_failure(exc, config)
    print(f"database at {config.resolved_database_url} is at the newest schema")
    return 0


def _run(args: argparse.Namespace) -> int:
    from server.app import start_server

    try:
        config = _config(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from server.logsafe import configure_logging

    configure_logging(config.log_level)

    async def go() -> None:
        try:
            running = await start_server(config)
        except Exception:
            await asyncio.sleep(0.2)  # aiosqlite's worker threads finish before the loop closes
            raise
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
    except Exception as exc:
        return _startup_failure(exc, config)
    return 0


def _startup_failure(exc: Exception, config: ServerConfig) -> int:
    """One line for what an operator can fix (server.faults); a traceback only for a real bug."""
    from server.faults import describe_startup_error

    message = describe_startup_error(exc, config)
    if message is None and isinstance(exc, OSError):  # a file that cannot be read ...
        message = os_error_text(exc, "--port, --admin-port or --headend-port")
    if message is None and isinstance(exc, ValueError):
        message = str(exc)  # configuration problems found at start (missing certificates ...)
    if message is None:
        raise exc
    print(f"error: {message}", file=sys.stderr)
    return 2


HEADEND_FILE = "headend.json"


def write_headend_address(config: ServerConfig, port: int) -> None:
    """Record the head-end's URL in data_dir, so that `derlink ctl --data-dir` finds it (even with port 0)."""
    host = config.headend_host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    scheme = "https" if config.headend_tls else "http"
    document = {"url": f"{scheme}://{host}:{port}", "pid": os.getpid()}
    write_atomic(Path(config.data_dir) / HEADEND_FILE, (json.dumps(document) + "\n").encode())
