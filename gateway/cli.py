"""`derlink gateway`: run the site gateway, or ask a running one for its status.

    derlink gateway --config site.toml             run it (until SIGINT/SIGTERM)
    derlink gateway status --config site.toml      effective limits + sources, comms, next change
    derlink gateway status --config site.toml --json
    derlink gateway commission --dir DIR ...       installer commissioning (see gateway.commissioning)
    derlink gateway installer --dir DIR            the same in a browser (see gateway.web.installer)

Exit codes: 0 ok, 2 bad configuration or arguments, 3 the gateway's local API cannot be reached.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "gateway",
        help="run the site gateway (2030.5 client + SunSpec control) or show its status",
        description="Run the site gateway from site.toml, or show a running gateway's status.",
    )
    parser.add_argument("--config", type=Path, help="the gateway's site.toml")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR (default INFO)")
    parser.add_argument(
        "--log-format", default="text", choices=("text", "json"),
        help="text (default) or json: one JSON object per line, with its event and fields",
    )  # fmt: skip
    parser.set_defaults(handler=run_command)
    sub = parser.add_subparsers(dest="gateway_command", metavar="COMMAND")
    status = sub.add_parser(
        "status",
        help="effective limits with their sources, comms state and the next scheduled change",
        description="Ask a running gateway (its local API on loopback) for its status.",
    )
    status.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="the gateway's site.toml")
    status.add_argument("--json", action="store_true", help="print the raw status as JSON")
    status.add_argument("--url", help="local API base URL (default: from the running gateway's data_dir)")
    status.add_argument("--token", help="bearer token (default: from site.toml)")
    status.set_defaults(handler=status_command)
    from gateway.commissioning.cli import add_commission_parser

    add_commission_parser(sub)
    from gateway.web.installer import add_installer_parser

    add_installer_parser(sub)


def _settings(args: argparse.Namespace) -> Any:
    from gateway.config import ConfigError, load_settings

    if getattr(args, "config", None) is None:
        raise ConfigError("--config: required (the gateway's site.toml)")
    return load_settings(args.config)


def run_command(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from gateway.config import ConfigError

    try:
        settings = _settings(args)
    except ConfigError as exc:
        print(f"derlink gateway: {exc}", file=sys.stderr)
        return 2
    level = getattr(logging, str(args.log_level).upper(), None)
    if not isinstance(level, int):
        print(f"derlink gateway: --log-level: unknown level {args.log_level!r}", file=sys.stderr)
        return 2
    from gateway.observability import configure_logging

    configure_logging(level, args.log_format)
    from gateway.runtime import GatewayRuntime

    try:
        asyncio.run(GatewayRuntime(settings).run_forever())
    except OSError as exc:  # a port in use, a file that cannot be read: one line, no traceback
        from sep2.files import os_error_text

        print(f"derlink gateway: {os_error_text(exc, '[local_api].port or [server].listener_port')}",
              file=sys.stderr)
        return 2
    return 0


def fetch_status(url: str, token: str, timeout: float = 5.0) -> dict[str, Any]:
    """GET {url}/status with the bearer token (blocking; the CLI has no event loop of its own)."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        f"{url.rstrip('/')}/status", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise ConnectionError(f"{url}: HTTP {exc.code} {exc.read().decode(errors='replace')}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise ConnectionError(f"{url}: {getattr(exc, 'reason', exc)}") from None


def status_command(args: argparse.Namespace) -> int:
    from gateway.config import ConfigError

    try:
        settings = _settings(args)
    except ConfigError as exc:
        print(f"derlink gateway status: {exc}", file=sys.stderr)
        return 2
    url = args.url
    if url is None:
        try:
            info = json.loads(settings.local_api_file.read_text())
            url = f"http://{info['host']}:{info['port']}"
        except (OSError, ValueError, KeyError):
            print(
                f"derlink gateway status: no running gateway found ({settings.local_api_file} missing);"
                " is it running with [local_api] enabled?",
                file=sys.stderr,
            )
            return 3
    token = args.token or settings.local_api.token or ""
    try:
        status = fetch_status(url, token)
    except ConnectionError as exc:
        print(f"derlink gateway status: cannot reach the gateway: {exc}", file=sys.stderr)
        return 3
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
        return 0
    print_status(status)
    return 0


def _when(t: float | None, now: float) -> str:
    if t is None:
        return "-"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))
    delta = t - now
    return f"{stamp} ({'in ' if delta >= 0 else ''}{abs(delta):.0f} s{'' if delta >= 0 else ' ago'})"


_UNITS = {"export_w": "W", "import_w": "W", "generation_w": "W", "load_w": "W", "max_w_pct": "%",
          "battery_reserve_pct": "%", "ramp_time_s": "s", "set_grad_w": "", "target_w": "W",
          "storage_target_w": "W", "fixed_w_pct": "%", "export_target_w": "W"}  # fmt: skip


def print_status(status: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    now = status["now"]
    comms = status["comms"]
    link = "LOST" if status["link_lost"] else "up"
    console.print(
        f"[bold]gateway[/bold] {status['lfdi']}  regime [bold]{status['regime']}[/bold]  link {link}"
        f" (lost after {comms.get('comms_timeout_s', '-')} s of silence)"
    )
    console.print(
        f"comms: {comms.get('state')}  last contact {_when(comms.get('last_contact'), now)}"
        f"  outbox {comms.get('outbox_pending', '-')} pending"
        + (f"  last error: {comms['last_error']}" if comms.get("last_error") else "")
    )
    for what, error in (comms.get("refusals") or {}).items():
        console.print(f"[red]refused by the server[/red]: {what}: {error}")
    console.print(f"next scheduled change: {_when(status.get('next_change'), now)}"
                  f"   next decision: {_when(status.get('next_wake'), now)}")  # fmt: skip
    table = Table(title="effective limits")
    for column in ("limit", "value", "source", "why"):
        table.add_column(column)
    for name, item in status["limits"].items():
        unit = _UNITS.get(name, "")
        if item is None or item.get("value") is None:
            if name in ("export_w", "import_w", "generation_w", "load_w"):
                table.add_row(name, "unlimited", "-", "no source sets it")
            continue
        value = item["value"]
        text = str(value).lower() if isinstance(value, bool) else f"{value:g} {unit}".strip()
        why = item.get("detail", "")
        if item.get("clipped_by"):
            why += f"; requested {item['requested']:g} {unit}"
            why += f", clipped by {item['clipped_by']} ({item['clip_detail']})"
        table.add_row(name, text, item.get("source") or "-", why)
    console.print(table)
    active = status.get("active_controls") or {}
    if active:
        console.print("active controls: " + "; ".join(f"{p}: {', '.join(m)}" for p, m in active.items()))
    site = status.get("site") or {}
    if site.get("meter_w") is not None:
        console.print(f"site: meter {site['meter_w']:g} W (+ import), loop mode {site.get('mode', '-')}"
                      + (f", faults: {'; '.join(site['faults'])}" if site.get("faults") else ""))  # fmt: skip
