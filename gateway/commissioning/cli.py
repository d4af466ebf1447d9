"""`derlink gateway commission`: the installer's guided flow (interactive with prompts, or all by flags).

    derlink gateway commission --dir /var/lib/derlink/commissioning            # asks as it goes
    derlink gateway commission --dir D --non-interactive --scan 192.168.1.20:502 --units 1-3 \\
        --sign-with-ca pki --export-limit-w 5000 --fallback-export-w 1500 --nmi 4102000077 \\
        --dcap-url https://dnsp.example/dcap --server-ca dnsp-ca.pem

Re-running with the same ``--dir`` continues where it stopped. Exit codes: 0 commissioned, 1 a step
failed (the message says what to do next; the state is kept), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

from gateway.commissioning.state import STEPS


class RichUI:
    """Prompts and tables through rich; ``interactive=False`` only prints."""

    def __init__(self, interactive: bool, console: Any = None) -> None:
        from rich.console import Console

        self.interactive = interactive
        self.console = console or Console(highlight=False)

    def heading(self, text: str) -> None:
        self.console.rule(f"[bold]{text}[/bold]")

    def info(self, text: str) -> None:
        self.console.print(text, markup=False)

    def warn(self, text: str) -> None:
        self.console.print(f"[yellow]! {_escape(text)}[/yellow]")

    def table(self, title: str, columns: list[str], rows: list[list[str]]) -> None:
        from rich.table import Table

        table = Table(title=title)
        for column in columns:
            table.add_column(column)
        for row in rows:
            table.add_row(*[_escape(str(c)) for c in row])
        self.console.print(table)

    def panel(self, title: str, lines: list[str]) -> None:
        from rich.panel import Panel

        self.console.print(Panel("\n".join(_escape(line) for line in lines), title=title, expand=False))

    def ask(self, prompt: str, default: str | None = None) -> str:
        from rich.prompt import Prompt

        if default is None:
            return Prompt.ask(_escape(prompt), console=self.console)
        return Prompt.ask(_escape(prompt), default=default, console=self.console)

    def confirm(self, prompt: str, default: bool = True) -> bool:
        from rich.prompt import Confirm

        return Confirm.ask(_escape(prompt), default=default, console=self.console)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _role(text: str) -> tuple[str, str]:
    key, sep, role = text.rpartition("=")
    if not sep or key.count(":") != 2:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT:UNIT=ROLE, got {text!r}")
    return key, role


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def _pin(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 999999:
        raise argparse.ArgumentTypeError(f"PIN must be up to 6 digits, got {text!r}")
    return int(text)


def add_commission_parser(gateway_subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = gateway_subparsers.add_parser(
        "commission",
        help="commission a site: discover devices, identity, NMI and limits, register, verify, report",
        description="Guided installer commissioning. Every step is saved in --dir; rerunning resumes.",
    )
    p.add_argument(
        "--dir",
        type=Path,
        default=Path("commissioning"),
        help="commissioning directory: state, keys, site.toml, report (default ./commissioning)",
    )
    p.add_argument(
        "--non-interactive",
        action="store_true",
        help="never prompt: missing inputs are errors naming the flag (default when stdin is no TTY)",
    )
    p.add_argument("--redo", choices=STEPS, help="redo this step and every later one")
    p.add_argument("--log-level", default="CRITICAL", help="gateway log level while commissioning")
    g = p.add_argument_group("1. discover devices")
    g.add_argument(
        "--scan",
        action="append",
        metavar="HOST[:PORT[-PORT]]",
        help="address(es) to scan; HOST may be a CIDR block (repeatable, default port 502); "
        "rtu:/dev/ttyUSB0[@9600[-8N1]] scans a Modbus RTU (RS-485) line",
    )
    g.add_argument("--units", metavar="LIST", help="Modbus unit IDs to try, e.g. 1-3,126 (default 1-3)")
    g.add_argument(
        "--role",
        action="append",
        type=_role,
        default=[],
        metavar="HOST:PORT:UNIT=ROLE",
        help="override a device's role: pv, battery, meter or ignore (repeatable); the address as listed, "
        "e.g. 192.168.1.20:502:1 or rtu:/dev/ttyUSB0@9600-8N1:3",
    )
    g.add_argument(
        "--scan-timeout", type=_positive, default=1.0, help="seconds per Modbus request while scanning"
    )
    g = p.add_argument_group("2. identity")
    g.add_argument("--cert", type=Path, help="certificate issued for this gateway (PEM, chain allowed)")
    g.add_argument(
        "--key", type=Path, help="private key, if the certificate was issued with a key made elsewhere"
    )
    g.add_argument(
        "--sign-with-ca",
        type=Path,
        metavar="PKI_DIR",
        help="sign the gateway's CSR with this derlink PKI (test lab, own CA)",
    )
    g.add_argument("--name", help="common name for the CSR (default derlink-gateway-<random>)")
    g.add_argument("--pin", type=_pin, help="registration PIN (default: generated, with check digit)")
    g = p.add_argument_group("3. site record")
    g.add_argument("--nmi", help="the site's NMI (10 characters, or 11 with the checksum digit)")
    g.add_argument("--export-limit-w", type=float, help="static export limit of the connection agreement")
    g.add_argument("--import-limit-w", type=float, help="static import limit (optional)")
    g.add_argument("--generation-limit-w", type=float, help="static generation limit (optional)")
    g.add_argument("--fallback-export-w", type=float, help="comms-loss fallback export limit")
    g.add_argument("--fallback-import-w", type=float, help="comms-loss fallback import limit (optional)")
    g.add_argument(
        "--fallback-generation-w", type=float, help="comms-loss fallback generation limit (optional)"
    )
    g.add_argument("--comms-timeout", type=int, help="seconds without the server before the fallback (300)")
    g = p.add_argument_group("4. register")
    g.add_argument("--dcap-url", help="the utility server's DeviceCapability URL (https://...)")
    g.add_argument(
        "--discover",
        action="store_true",
        help="find a local utility server by DNS-SD (mDNS _smartenergy._tcp) instead of --dcap-url",
    )
    g.add_argument("--discover-interface", help="this gateway's IPv4 address to discover from (default: all)")
    g.add_argument("--discover-timeout", type=_positive, default=3.0, help="seconds to listen for replies")
    g.add_argument(
        "--server-ca", type=Path, help="the DNSP's CA chain (PEM) that signed the server certificate"
    )
    g.add_argument(
        "--register-inband",
        action="store_true",
        default=None,
        help="register in-band if the server does not know this gateway yet",
    )
    g.add_argument("--server-mode", choices=("poll", "subscribe"), help="how the gateway follows the server")
    g.add_argument("--request-timeout", type=_positive, default=5.0, help="seconds per server request")
    g.add_argument(
        "--register-timeout", type=_positive, default=20.0, help="seconds for discovery/registration"
    )
    g = p.add_argument_group("5. verify")
    g.add_argument(
        "--verify-window",
        type=_positive,
        default=30.0,
        help="seconds the inverter has to follow the test limit (default 30)",
    )
    g.add_argument(
        "--telemetry-timeout",
        type=_positive,
        default=30.0,
        help="seconds to wait for the server to show fresh telemetry / acknowledgements",
    )
    g.add_argument(
        "--loop-period", type=_positive, default=1.0, help="gateway control loop period (site.toml)"
    )
    g.add_argument(
        "--site-toml", type=Path, help="where to write the gateway's site.toml (default DIR/site.toml)"
    )
    p.set_defaults(handler=commission_command)
    return p


def options_from_args(args: argparse.Namespace) -> Any:
    from gateway.commissioning.common import Options

    interactive = not args.non_interactive and sys.stdin.isatty()
    return Options(
        work_dir=args.dir,
        interactive=interactive,
        redo=args.redo,
        scan=[e.strip() for item in args.scan for e in item.split(",") if e.strip()] if args.scan else None,
        units=args.units,
        roles=dict(args.role),
        scan_timeout_s=args.scan_timeout,
        cert=args.cert,
        key=args.key,
        sign_with_ca=args.sign_with_ca,
        name=args.name,
        pin=args.pin,
        nmi=args.nmi,
        export_limit_w=args.export_limit_w,
        import_limit_w=args.import_limit_w,
        generation_limit_w=args.generation_limit_w,
        fallback_export_w=args.fallback_export_w,
        fallback_import_w=args.fallback_import_w,
        fallback_generation_w=args.fallback_generation_w,
        comms_timeout_s=args.comms_timeout,
        dcap_url=args.dcap_url,
        discover=args.discover,
        discover_interface=args.discover_interface,
        discover_timeout_s=args.discover_timeout,
        server_ca=args.server_ca,
        register_inband=args.register_inband,
        server_mode=args.server_mode,
        request_timeout_s=args.request_timeout,
        register_timeout_s=args.register_timeout,
        verify_window_s=args.verify_window,
        telemetry_timeout_s=args.telemetry_timeout,
        loop_period_s=args.loop_period,
        site_toml=args.site_toml,
    )


def report_outcome(outcome: Any, ui: RichUI) -> int:
    if outcome.ok:
        ui.console.print("[bold green]Commissioning complete.[/bold green]")
        return 0
    where = f" in step '{outcome.failed_step}'" if outcome.failed_step else ""
    ui.console.print(f"[bold red]Commissioning stopped{where}:[/bold red] {_escape(outcome.message or '')}")
    ui.console.print(f"[bold]Next:[/bold] {_escape(outcome.next_action or '')}")
    if outcome.state_path:
        ui.console.print(f"Progress is saved in {_escape(str(outcome.state_path))}; rerun to continue.")
    return 1


def commission_command(args: argparse.Namespace) -> int:
    from gateway.commissioning.flow import run_commissioning

    level = getattr(logging, str(args.log_level).upper(), None)
    if not isinstance(level, int):
        print(f"derlink gateway commission: --log-level: unknown level {args.log_level!r}", file=sys.stderr)
        return 2
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    for name in ("derlink", "gateway"):
        logging.getLogger(name).setLevel(level)
    opts = options_from_args(args)
    ui = RichUI(opts.interactive)
    try:
        outcome = asyncio.run(run_commissioning(opts, ui))
    except (EOFError, KeyboardInterrupt):
        ui.console.print("\n[yellow]Interrupted; progress is saved, rerun to continue.[/yellow]")
        return 130
    return report_outcome(outcome, ui)
