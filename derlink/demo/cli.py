"""`derlink demo [--realtime] [--scenario FILE] [--keep] [--out DIR]`.

Exit status: 0 if the site stayed within every applicable limit and every required Response reached the
server; 1 if not (the breached intervals are named); 2 if the scenario or the set-up is wrong; 130 on
Ctrl-C (after shutting everything down).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the whole system on this machine: server, gateway, simulated site, a scenario",
        description=(
            "Start a throwaway utility server, a simulated site (PV, battery, meter) and a gateway, play a "
            "scenario (DOE steps, an import limit, an emergency and its staged lift, a comms outage) on an "
            "accelerated clock, and judge the site's telemetry against the limits. Writes a PNG and a JSON "
            "summary. Exit 0 only if the site stayed within every limit and every Response arrived."
        ),
    )
    parser.add_argument(
        "--scenario",
        metavar="FILE",
        help="a scenario TOML file, or a built-in: 'default', 'stuck-inverter' "
        "(format: derlink/demo/README-scenarios.md)",
    )
    parser.add_argument(
        "--realtime", action="store_true", help="play at speed 1 (the default scenario takes 3 h)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the PKI, database, gateway state and logs")
    parser.add_argument("--out", metavar="DIR", default="derlink-demo", help="where the PNG and JSON go")
    parser.add_argument(
        "--no-live", action="store_true", help="plain progress lines instead of the live table"
    )
    parser.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from rich.console import Console

    from derlink.demo.live import LiveView
    from derlink.demo.orchestrator import Demo, DemoError
    from derlink.demo.scenario import ScenarioError, load_scenario

    console = Console(highlight=False)
    try:
        scenario = load_scenario(args.scenario)
        if args.realtime:
            scenario = scenario.with_speed(1.0)
    except ScenarioError as exc:
        print(f"derlink demo: scenario error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    view = LiveView(console, live=False if args.no_live else None)
    demo = Demo(scenario, out, keep=args.keep, view=view)
    console.print(f"derlink demo: {scenario.name} ({scenario.source})")
    console.print(f"work dir: {demo.tmp}" + ("" if args.keep else " (removed at the end; --keep keeps it)"))
    try:
        with view:
            result = asyncio.run(demo.run())
    except KeyboardInterrupt:
        console.print("interrupted: everything was shut down" + (f"; kept {demo.tmp}" if args.keep else ""))
        return 130
    except DemoError as exc:
        print(f"derlink demo: {exc}", file=sys.stderr)
        return 2
    summary = result.summary
    comp = summary["compliance"]
    console.print()
    if summary["passed"]:
        console.print(
            f"[bold green]PASS[/]: the site stayed within every applicable limit "
            f"({comp['readings_within']}/{comp['readings_judged']} readings in {comp['intervals_judged']} "
            f"judged intervals) and every Response required of the {comp['responses_required']} "
            f"control(s) that asked for them arrived."
        )
    else:
        console.print("[bold red]FAIL[/]:")
        for line in comp["breaches"]:
            console.print(f"  breached {line}")
        for line in comp["missing_responses"]:
            console.print(f"  missing Responses: {line}")
        for line in summary.get("failed_actions", []):
            console.print(f"  action failed: {line}")
    for seen in comp.get("seen_live_not_stored", []):
        console.print(
            f"  note: interval {seen['clock']}: the live meter was over the limit "
            f"({seen['live_readings_over']} readings, worst {seen['live_worst_excess_w']:.0f} W over), "
            "and no reading the server stored shows it (✗* in the table)"
        )
    console.print(f"plot: {summary['files']['png']}")
    console.print(f"summary: {summary['files']['json']}")
    if args.keep:
        console.print(f"kept: {summary['files']['data_dir']} (database {summary['files']['database']})")
    return 0 if summary["passed"] else 1
