"""The `derlink` command: one entry point, one subcommand per part of the system.

Each part registers its own subcommand through a ``register(subparsers)`` function so that the
part's CLI lives next to the code it drives.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Command name -> module exposing register(subparsers) -> None.
SUBCOMMAND_MODULES: dict[str, str] = {
    "certs": "certs.cli",
    "sim": "simulators.cli",
    "server": "server.cli",
    "ctl": "server.ctl",
    "gateway": "gateway.cli",
    "demo": "derlink.demo.cli",
    "boffer": "aggregator.boffer.cli",
}
# Command name -> the pyproject extra that installs its dependencies (certs and ctl need only the base).
EXTRAS: dict[str, str] = {
    "sim": "sim",
    "server": "server",
    "gateway": "gateway",
    "demo": "demo",
    "boffer": "aggregator",
}
# Top-level modules that only an extra installs: a missing one means "install the extra", not a bug.
OPTIONAL_MODULES = frozenset({
    "sqlalchemy", "aiosqlite", "asyncpg", "alembic", "prometheus_client", "jinja2", "pymodbus", "sunspec2",
    "aiomqtt", "zeroconf", "matplotlib", "numpy", "serial",
})


def _missing_extra(command: str, error: ModuleNotFoundError) -> str | None:
    """The one-line hint for a command whose extra is not installed, or None if ``error`` is a real bug."""
    module = (error.name or "").split(".")[0]
    if module not in OPTIONAL_MODULES:
        return None
    extra = EXTRAS.get(command, "all")
    return f"derlink {command}: {module} is not installed; install the part: pip install 'derlink[{extra}]'"


class MissingExtra(Exception):
    """A part's CLI cannot load because its extra is not installed; the message is the one-line hint."""


def build_parser(commands: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="derlink",
        description="IEEE 2030.5 / CSIP-AUS utility server, site gateway, SunSpec simulators, PKI.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in commands or SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(SUBCOMMAND_MODULES[command])
        except ModuleNotFoundError as error:
            hint = _missing_extra(command, error)
            if hint is None:
                raise
            if commands:
                raise MissingExtra(hint) from error
            extra = EXTRAS.get(command, "all")
            subparsers.add_parser(command, help=f"(not installed: pip install 'derlink[{extra}]')")
            continue
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Import only the named part's CLI: a gateway restarting mid-outage must re-apply its limits within
    # 2 s of process start, and importing every part (server, simulators, matplotlib...) costs over a second.
    chosen = [argv[0]] if argv and argv[0] in SUBCOMMAND_MODULES else None
    try:
        parser = build_parser(chosen)
    except MissingExtra as error:
        print(error, file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    try:
        result = args.handler(args)
    except KeyboardInterrupt:
        return 130
    except ModuleNotFoundError as error:
        hint = _missing_extra(args.command, error)
        if hint is None:
            raise
        print(hint, file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
