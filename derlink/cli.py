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


def build_parser(commands: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="derlink",
        description="IEEE 2030.5 / CSIP-AUS utility server, site gateway, SunSpec simulators, PKI.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in commands or SUBCOMMAND_MODULES:
        importlib.import_module(SUBCOMMAND_MODULES[command]).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Import only the named part's CLI: a gateway restarting mid-outage must re-apply its limits within
    # 2 s of process start, and importing every part (server, simulators, matplotlib...) costs over a second.
    chosen = [argv[0]] if argv and argv[0] in SUBCOMMAND_MODULES else None
    parser = build_parser(chosen)
    args = parser.parse_args(argv)
    try:
        result = args.handler(args)
    except KeyboardInterrupt:
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
