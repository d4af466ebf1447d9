"""`derlink certs …`: build the PKI, issue device/aggregator certificates, CSRs, and inspect certificates."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from certs import pki
from sep2.identity import format_lfdi, format_sfdi

EXIT_ERROR = 2


def _console() -> Console:
    return Console(highlight=False, soft_wrap=True)


def _fail(message: str) -> int:
    Console(stderr=True, highlight=False, soft_wrap=True).print(f"[bold red]error:[/] {message}")
    return EXIT_ERROR


def _guarded(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn PKI and file errors into a one-line message and exit code 2."""

    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except pki.PkiError as exc:
            return _fail(str(exc))
        except OSError as exc:
            where = f" ({exc.filename})" if exc.filename else ""
            return _fail(f"{exc.strerror or exc}{where}")

    return run


def _identity_json(identity: pki.DeviceIdentity) -> dict[str, object]:
    return {
        "common_name": identity.common_name,
        "role": identity.role,
        "cert": str(identity.cert_path),
        "key": str(identity.key_path) if identity.key_path else None,
        "chain": str(identity.chain_path),
        "ca_chain": str(identity.ca_chain_path),
        "lfdi": identity.lfdi,
        "sfdi": identity.sfdi,
        "sfdi_grouped": format_sfdi(identity.sfdi),
    }


def _print_identity(identity: pki.DeviceIdentity, as_json: bool) -> None:
    if as_json:
        print(json.dumps(_identity_json(identity), indent=2))
        return
    table = Table(title=f"{identity.role} certificate for {identity.common_name}", show_header=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    table.add_row("LFDI", identity.lfdi)
    table.add_row("", format_lfdi(identity.lfdi))
    table.add_row("SFDI", str(identity.sfdi))
    table.add_row("SFDI (read aloud)", format_sfdi(identity.sfdi))
    table.add_row("role", identity.role)
    table.add_row("certificate", str(identity.cert_path))
    if identity.key_path:
        table.add_row("private key", f"{identity.key_path} (mode 0600)")
    table.add_row("chain (present in TLS)", str(identity.chain_path))
    table.add_row("CA chain (trust)", str(identity.ca_chain_path))
    _console().print(table)


def _cmd_init(args: argparse.Namespace) -> int:
    paths = pki.init_pki(
        args.dir,
        server_names=args.server_name or ["localhost"],
        server_ips=args.server_ip or ["127.0.0.1"],
        force=args.force,
    )
    table = Table(title=f"PKI created in {paths.directory}")
    table.add_column("file", style="bold", overflow="fold")
    table.add_column("what", overflow="fold")
    for path, what in [
        (paths.root_cert, "root CA certificate (SERCA-like)"),
        (paths.root_key, "root CA private key (0600) — keep offline"),
        (paths.intermediate_cert, "intermediate CA certificate (MICA-like)"),
        (paths.intermediate_key, "intermediate CA private key (0600)"),
        (paths.ca_chain, "trust file: root + intermediate"),
        (paths.server_chain, "server certificate + intermediate (present in TLS)"),
        (paths.server_key, "server private key (0600)"),
    ]:
        table.add_row(str(path), what)
    _console().print(table)
    return 0


def _cmd_device(args: argparse.Namespace) -> int:
    identity = pki.issue_device_certificate(args.dir, args.name, aggregator=args.aggregator, days=args.days)
    _print_identity(identity, args.json)
    return 0


def _cmd_csr(args: argparse.Namespace) -> int:
    pki.create_key_and_csr(args.key, args.out, args.cn)
    _console().print(
        f"key  {args.key} (mode 0600, stays here)\ncsr  {args.out}  — send this to the CA: "
        f"derlink certs sign --dir D --csr {args.out}"
    )
    return 0


def _cmd_sign(args: argparse.Namespace) -> int:
    identity = pki.sign_csr(args.dir, args.csr, aggregator=args.aggregator, out=args.out, days=args.days)
    _print_identity(identity, args.json)
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    info = pki.describe_certificate(args.file)
    if args.json:
        print(json.dumps({**info, "sfdi_grouped": format_sfdi(int(info["sfdi"]))}, indent=2))
        return 0
    table = Table(title=str(args.file), show_header=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    table.add_row("subject", str(info["subject"]))
    table.add_row("issuer", str(info["issuer"]))
    table.add_row("serial", str(info["serial"]))
    table.add_row("valid from", str(info["not_before"]))
    table.add_row("valid until", str(info["not_after"]))
    table.add_row("key", str(info["key"]))
    if info["subject_alt_names"]:
        table.add_row("alt names", ", ".join(info["subject_alt_names"]))
    table.add_row("role", str(info["role"]))
    table.add_row("LFDI", str(info["lfdi"]))
    table.add_row("SFDI", f"{info['sfdi']}  ({format_sfdi(int(info['sfdi']))})")
    _console().print(table)
    return 0


def _positive_days(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--days must be a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"--days must be positive, got {value}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "certs",
        help="PKI: CA chain, server and device certificates, CSRs, LFDI/SFDI",
        description="IEEE 2030.5 PKI toolkit (ECDSA P-256). Private keys are written with mode 0600.",
    )

    def missing_subcommand(_args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return EXIT_ERROR

    parser.set_defaults(handler=missing_subcommand)
    sub = parser.add_subparsers(dest="certs_command", metavar="SUBCOMMAND")

    p = sub.add_parser("init", help="create root CA, intermediate CA and server certificate")
    p.add_argument("--dir", type=Path, required=True, help="PKI directory to create")
    p.add_argument("--force", action="store_true", help="replace an existing PKI (and its issued devices)")
    p.add_argument(
        "--server-name",
        action="append",
        metavar="DNS",
        help="server DNS name (repeatable; default localhost)",
    )
    p.add_argument(
        "--server-ip", action="append", metavar="IP", help="server IP address (repeatable; default 127.0.0.1)"
    )
    p.set_defaults(handler=_guarded(_cmd_init))

    days_help = "validity in days (default: no expiry, 9999-12-31, as 2030.5 device certificates)"
    p = sub.add_parser("device", help="issue a device (or aggregator) client certificate and key")
    p.add_argument("--dir", type=Path, required=True, help="PKI directory (from `certs init`)")
    p.add_argument("--name", required=True, help="device name: subject CN and file name under devices/")
    p.add_argument("--aggregator", action="store_true", help="mark the certificate as an aggregator client")
    p.add_argument("--days", type=_positive_days, help=days_help)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(handler=_guarded(_cmd_device))

    p = sub.add_parser("csr", help="create a private key and a CSR (the key stays on this machine)")
    p.add_argument("--key", type=Path, required=True, help="where to write the new private key")
    p.add_argument("--out", type=Path, required=True, help="where to write the CSR (PEM)")
    p.add_argument("--cn", required=True, help="common name for the certificate subject")
    p.set_defaults(handler=_guarded(_cmd_csr))

    p = sub.add_parser("sign", help="issue a client certificate from a CSR")
    p.add_argument("--dir", type=Path, required=True, help="PKI directory (from `certs init`)")
    p.add_argument("--csr", type=Path, required=True, help="CSR file (PEM or DER)")
    p.add_argument("--aggregator", action="store_true", help="mark the certificate as an aggregator client")
    p.add_argument("--out", type=Path, help="certificate output path (default devices/<CN>.pem)")
    p.add_argument("--days", type=_positive_days, help=days_help)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(handler=_guarded(_cmd_sign))

    p = sub.add_parser("show", help="show a certificate's subject, validity, LFDI, SFDI and role")
    p.add_argument("file", type=Path, help="certificate file (PEM or DER; first certificate is shown)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(handler=_guarded(_cmd_show))
