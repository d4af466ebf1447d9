"""`derlink sim site|fleet`: run simulated SunSpec sites from the command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from dataclasses import replace

from rich.console import Console
from rich.live import Live
from rich.table import Table

from .config import ConfigError, default_site_config, load_site_config, with_devices, with_site
from .site import SimClock, SimulatedFleet, SimulatedSite, process_cpu_s, process_rss_bytes


def register(subparsers: argparse._SubParsersAction) -> None:
    sim = subparsers.add_parser("sim", help="SunSpec Modbus device simulators (sites and fleets)")
    sub = sim.add_subparsers(dest="sim_command", metavar="SIM_COMMAND", required=True)

    site = sub.add_parser(
        "site", help="run one site from a TOML config (or the default PV+battery+meter site)"
    )
    site.add_argument("--config", help="site TOML file (see simulators/README.md); default: built-in site")
    site.add_argument("--speed", type=float, help="simulated seconds per wall second (overrides the file)")
    site.add_argument("--control-port", type=int, help="JSON control endpoint port on 127.0.0.1 (0 = auto)")
    site.add_argument(
        "--duration", type=float, help="stop after this many wall seconds (default: run forever)"
    )
    site.add_argument(
        "--once", action="store_true", help="print what runs where and one status table, then exit"
    )
    site.add_argument(
        "--rtu",
        nargs="?",
        const="pty",
        metavar="SERIAL_PORT",
        help="also serve every device as Modbus RTU on SERIAL_PORT (an RS-485 adapter); without a value, "
        "on a pseudo-terminal pair whose gateway end is printed",
    )
    site.add_argument("--baudrate", type=int, default=9600, help="RTU baud rate (default 9600)")
    site.set_defaults(handler=_run_site)

    fleet = sub.add_parser("fleet", help="run N default sites in one process (one port per site)")
    fleet.add_argument("--sites", type=int, required=True, help="number of sites")
    fleet.add_argument("--family", choices=("legacy", "der"), default="legacy")
    fleet.add_argument("--speed", type=float, default=1.0)
    fleet.add_argument("--host", default="127.0.0.1")
    fleet.add_argument("--control-port", type=int, help="JSON control endpoint port on 127.0.0.1 (0 = auto)")
    fleet.add_argument("--duration", type=float, help="stop after this many wall seconds")
    fleet.add_argument("--once", action="store_true", help="start, report, stop")
    fleet.set_defaults(handler=_run_fleet)


def _fmt_w(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} W"


def _where_table(site: SimulatedSite) -> Table:
    table = Table(title=f"site {site.name}: what runs where")
    for col in ("device", "kind", "family", "endpoint", "unit id", "models"):
        table.add_column(col)
    for ep in site.endpoints:
        table.add_row(
            ep.name,
            ep.kind,
            ep.family,
            f"{ep.host}:{ep.port}",
            str(ep.unit_id),
            " ".join(str(m) for m in ep.models),
        )
    return table


def _status_table(site: SimulatedSite) -> Table:
    status = site.status()
    t = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(status["sim_time"]))
    m = status["meter"]
    table = Table(
        title=f"{site.name}  sim {t}  x{status['speed']:g}  meter {_fmt_w(m['w'])} (+import/-export)  "
        f"load {_fmt_w(m['load_w'])}"
    )
    for col in ("device", "output", "limit", "SoC", "connected", "fault", "reads", "writes"):
        table.add_column(col)
    for d in status["devices"]:
        output = _fmt_w(m["w"]) if d["kind"] == "meter" else _fmt_w(d.get("output_w"))
        limit = f"{d['limit_pct']:.1f}% ({d['limit_w']:,.0f} W)" if "limit_pct" in d else "-"
        soc = f"{d['soc_pct']:.2f}%" if "soc_pct" in d else "-"
        table.add_row(
            d["name"],
            output,
            limit,
            soc,
            str(d.get("connected", "-")),
            d["fault"] or "-",
            str(d["reads"]),
            str(d["writes"]),
        )
    return table


async def _site_main(args: argparse.Namespace) -> int:
    console = Console()
    cfg = load_site_config(args.config) if args.config else default_site_config()
    overrides = {"speed": args.speed, "control_port": args.control_port}
    cfg = with_site(cfg, **{k: v for k, v in overrides.items() if v is not None})
    site = SimulatedSite(cfg)
    await site.start()
    link = None
    try:
        console.print(_where_table(site))
        if args.rtu:
            if args.rtu == "pty":
                from simulators.serial_link import PtyLink

                link = PtyLink().start()
            try:
                await site.serve_rtu(link.device_end if link else args.rtu, args.baudrate)
            except OSError as exc:
                console.print(f"[red]error:[/red] --rtu: {exc}")
                return 2
            gateway_end = link.gateway_end if link else args.rtu
            console.print(
                f"Modbus RTU: serial_port = {gateway_end!r}, baudrate = {args.baudrate}, 8N1, "
                "unit IDs as above"
            )
        if site.control_port is not None:
            console.print(f"control: http://127.0.0.1:{site.control_port}/sites/{site.name}")
        if args.once:
            console.print(_status_table(site))
            return 0
        deadline = None if args.duration is None else time.monotonic() + args.duration
        with Live(_status_table(site), console=console, refresh_per_second=2) as live:
            while deadline is None or time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                live.update(_status_table(site))
        return 0
    finally:
        await site.stop()
        if link is not None:
            link.close()


async def _fleet_main(args: argparse.Namespace) -> int:
    console = Console()
    if args.sites < 1:
        raise ConfigError("sites", "must be >= 1")
    rss0, cpu0, t0 = process_rss_bytes(), process_cpu_s(), time.monotonic()
    base = with_devices(default_site_config(speed=args.speed), family=args.family)
    configs = [replace(base, name=f"site{i:04d}", host=args.host) for i in range(args.sites)]
    fleet = SimulatedFleet(configs, clock=SimClock(args.speed))
    await fleet.start(control_port=args.control_port)
    try:
        startup_s = time.monotonic() - t0
        rss1, cpu1 = process_rss_bytes(), process_cpu_s()
        ports = [s.endpoints[0].port for s in fleet.sites]
        console.print(
            f"{args.sites} sites ({args.family}), ports {min(ports)}..{max(ports)} on {args.host}, "
            "devices as unit IDs 1 (pv), 2 (battery), 3 (meter)"
        )
        if fleet.control_port is not None:
            console.print(f"control: http://127.0.0.1:{fleet.control_port}/sites")

        def report() -> Table:
            rss, cpu, wall = process_rss_bytes(), process_cpu_s(), time.monotonic()
            table = Table(title="fleet resources")
            for col in ("", "total", "per site"):
                table.add_column(col)
            n = args.sites
            table.add_row("start-up", f"{startup_s:.2f} s", f"{startup_s / n * 1000:.2f} ms")
            table.add_row(
                "RSS added", f"{(rss1 - rss0) / 2**20:.1f} MiB", f"{(rss1 - rss0) / n / 1024:.1f} KiB"
            )
            table.add_row("RSS now", f"{rss / 2**20:.1f} MiB", f"{rss / n / 1024:.1f} KiB")
            table.add_row("CPU at start-up", f"{cpu1 - cpu0:.2f} s", f"{(cpu1 - cpu0) / n * 1000:.2f} ms")
            running = wall - t0 - startup_s
            if running > 0:
                pct = (cpu - cpu1) / running * 100
                table.add_row("CPU since start", f"{pct:.1f} %", f"{pct / n:.4f} %")
            return table

        if args.once:
            console.print(report())
            return 0
        deadline = None if args.duration is None else time.monotonic() + args.duration
        with Live(report(), console=console, refresh_per_second=1) as live:
            while deadline is None or time.monotonic() < deadline:
                await asyncio.sleep(1.0)
                live.update(report())
        return 0
    finally:
        await fleet.stop()


def _run(coro_fn, args: argparse.Namespace) -> int:
    try:
        with contextlib.suppress(KeyboardInterrupt):
            return asyncio.run(coro_fn(args))
        return 130
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _run_site(args: argparse.Namespace) -> int:
    return _run(_site_main, args)


def _run_fleet(args: argparse.Namespace) -> int:
    return _run(_fleet_main, args)
