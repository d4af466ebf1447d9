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
    "simulators.cli",
    "server.cli",
    "gateway.cli",
]


def build_parser(modules: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="derlink",
        description="IEEE 2030.5 / CSIP-AUS utility server, site gateway, SunSpec simulators, PKI.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in modules or SUBCOMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # `derlink gateway ...` imports only gateway.cli: a gateway restarting mid-outage must re-apply its
    # limits within 2 s of process start, and importing every part's CLI costs more than a second.
    fast = [m for m in SUBCOMMAND_MODULES if argv and m == f"{argv[0]}.cli" and argv[0] == "gateway"]
    parser = build_parser(fast or None)
    args = parser.parse_args(argv)
    try:
        result = args.handler(args)
    except KeyboardInterrupt:
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
