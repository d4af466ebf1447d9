"""The `derlink` command: one entry point, one subcommand per part of the system.

Each part registers its own subcommand through a ``register(subparsers)`` function so that the
part's CLI lives next to the code it drives.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# (module, description) — each module exposes register(subparsers) -> None.
SUBCOMMAND_MODULES: list[str] = [
    "certs.cli",
    "server.cli",
    "simulators.cli",
    "server.ctl",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="derlink",
        description="IEEE 2030.5 / CSIP-AUS utility server, site gateway, SunSpec simulators, PKI.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in SUBCOMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.handler(args)
    except KeyboardInterrupt:
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
