"""``derlink boffer``: build, validate and dispatch Boffers (seed 004) from portfolio files, or (build)
from a derlink server's database."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import sqlalchemy.exc

from aggregator.boffer.builder import build_offer
from aggregator.boffer.dispatch import cleared_position, dispatch_sites, telemetry
from aggregator.boffer.io import PortfolioFileError, offer_from_json, offer_to_json, read_portfolio
from aggregator.boffer.model import Arrangement, Plan, PlanError
from aggregator.boffer.validator import errors, validate

DEFAULT_PRICES = "-1000,0,1,78,100,300,500,1000,1500,15100,-1000,0,1.1,78,100,300,500,1000,1500,15100"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("boffer", help="aggregator bi-directional offers within DOEs (Project EDGE)")
    sub = p.add_subparsers(dest="boffer_command", metavar="ACTION", required=True)

    def common(sp: argparse.ArgumentParser, optional: bool = False) -> None:
        sp.add_argument("portfolio", type=Path, nargs="?" if optional else None,
                        help="portfolio .csv or .json")
        sp.add_argument("--arrangement", choices=[a.value for a in Arrangement], default="NMI")
        sp.add_argument("--prices", default=DEFAULT_PRICES,
                        help="20 band prices, comma-separated; write --prices=-1000,0,...")
        sp.add_argument("--load-on-up-to", type=float, help="controllable load on at prices <= this")
        sp.add_argument("--gen-on-from", type=float, help="controllable generation on at prices >= this")

    b = sub.add_parser("build", help="build the offer and print it as JSON (validated first)")
    common(b, optional=True)
    b.add_argument("--from-server", action="store_true",
                   help="read the portfolio from a derlink server's database instead of PORTFOLIO")
    b.add_argument("--database-url", help="with --from-server: sqlite+aiosqlite:///FILE or postgresql+asyncpg://")
    b.add_argument("--data-dir", type=Path, help="with --from-server: the server's state directory")
    b.add_argument("--group", help="with --from-server: only this group's sites (nested groups included)")
    b.add_argument("--start", type=int, help="with --from-server: first period, unix s (default: now)")
    b.add_argument("--periods", type=int, default=576, help="with --from-server: 5-minute periods (L144)")
    b.add_argument("-o", "--output", type=Path, help="write the offer here instead of stdout")
    b.set_defaults(handler=_build)
    v = sub.add_parser("validate", help="validate an offer JSON; exit 1 when any rule is broken")
    v.add_argument("offer", type=Path)
    v.add_argument("--full-horizon", action="store_true", help="require all 576 intervals (L144)")
    v.set_defaults(handler=_validate)
    d = sub.add_parser("dispatch", help="site targets and DUID telemetry at a cleared price")
    common(d)
    d.add_argument("--price", type=float, required=True)
    d.add_argument("--period", type=int, default=1)
    d.set_defaults(handler=_dispatch)


def _built(args: argparse.Namespace):
    try:
        prices = [float(x) for x in args.prices.split(",")]
    except ValueError:
        raise SystemExit(f"--prices: not a list of numbers: {args.prices!r}") from None
    if len(prices) != 20:
        raise SystemExit(f"--prices: {len(prices)} given, a Boffer has 20 bands (seed 004 L468)")
    try:
        pf = _from_server(args) if getattr(args, "from_server", False) else _from_file(args)
        plan = Plan.thresholds(prices, args.load_on_up_to, args.gen_on_from)
        return build_offer(pf, args.arrangement, prices, plan)
    except (PortfolioFileError, PlanError, ValueError, OSError) as exc:
        raise SystemExit(str(exc)) from None


def _from_file(args: argparse.Namespace):
    if args.portfolio is None:
        raise SystemExit("portfolio: give a PORTFOLIO file, or --from-server")
    for option in ("database_url", "data_dir", "group", "start"):
        if getattr(args, option, None) is not None:
            raise SystemExit(f"--{option.replace('_', '-')}: only with --from-server")
    return read_portfolio(args.portfolio)


def _from_server(args: argparse.Namespace):
    from aggregator.boffer.from_store import PERIOD_S, portfolio_from_store
    from server.store import Store

    if args.portfolio is not None:
        raise SystemExit("--from-server: give either a PORTFOLIO file or --from-server, not both")
    if (args.database_url is None) == (args.data_dir is None):
        raise SystemExit("--from-server: give exactly one of --database-url or --data-dir")
    option = "--data-dir" if args.data_dir is not None else "--database-url"
    if args.data_dir is not None:
        db = Path(args.data_dir) / "derlink.sqlite3"
        if not db.is_file():
            raise SystemExit(f"--data-dir: no server database {db}")
        url = f"sqlite+aiosqlite:///{db.resolve()}"
    else:
        url = args.database_url
        if url.startswith("sqlite") and not Path(url.split("///", 1)[-1]).is_file():
            raise SystemExit(f"--database-url: no database file {url}")
    start = args.start if args.start is not None else int(time.time()) // PERIOD_S * PERIOD_S

    async def read():
        store = await Store.open(url, run_migrations=False)
        try:
            return await portfolio_from_store(store, group=args.group, start=start, periods=args.periods)
        finally:
            await store.close()

    try:
        found = asyncio.run(read())
    except (sqlalchemy.exc.SQLAlchemyError, OSError) as exc:
        raise SystemExit(f"{option}: cannot read the server database: {exc}") from None
    for note in found.skipped:
        print(f"warning: {note}", file=sys.stderr)
    return found.portfolio


def _build(args: argparse.Namespace) -> int:
    built = _built(args)
    bad = errors(validate(built.offer, built.capacity_load, built.capacity_gen))
    for f in bad:
        print(f, file=sys.stderr)
    for site, period in built.infeasible[:20]:
        print(f"warning: site {site} period {period}: outside its DOE whatever is controlled",
              file=sys.stderr)
    text = json.dumps(offer_to_json(built.offer), indent=1)
    if args.output:
        args.output.write_text(text)
    else:
        print(text)
    return 1 if bad else 0


def _validate(args: argparse.Namespace) -> int:
    try:
        offer = offer_from_json(json.loads(args.offer.read_text()))
    except (OSError, json.JSONDecodeError, PortfolioFileError) as exc:
        raise SystemExit(f"{args.offer}: {exc}") from None
    findings = validate(offer, full_horizon=args.full_horizon)
    for f in findings:
        print(f"{f.severity}: {f}")
    print(f"{len(offer.periods)} periods, {len(errors(findings))} error(s)")
    return 1 if errors(findings) else 0


def _dispatch(args: argparse.Namespace) -> int:
    built = _built(args)
    index = args.period - 1
    if not 0 <= index < len(built.offer.periods):
        raise SystemExit(f"--period: must be 1..{len(built.offer.periods)}")
    targets = dispatch_sites(built, index, args.price)
    t = telemetry(targets, float(built.portfolio.energy_stored.sum()))
    print(json.dumps({
        "price": args.price,
        "cleared_kw": cleared_position(built.offer.periods[index], built.offer.prices, args.price),
        "telemetry": {"NMI": t.for_arrangement("NMI"), "FLEX": t.for_arrangement("FLEX")},
        "sites": [vars(s) for s in targets],
    }, indent=1))  # fmt: skip
    return 0
