"""Operator console pages at 100k sites: the site list (paged, searched, by group), a deep page, the
overview and a site's detail, over real HTTP from the head-end listener, with a session cookie.

Run: ``python benchmarks/console_sites.py [--sites 100000] [--baseline-sites 1000] [--repeat 15]``

1. Two fresh SQLite stores (alembic migrations, what ``derlink server`` uses), one with N sites and one
   with the baseline's 1,000, each registered in one bulk call; every site has a label and an NMI, a
   tenth of them are in each of ten groups, and nine in ten have a last contact (not timed).
2. Timed: the median of ``--repeat`` sequential GETs of each page, the whole round trip (render included).
3. Baseline, in the same run: the same pages on the 1,000-site store. The ratio N/baseline says whether a
   page's cost grows with the fleet: server-side paging keeps the list pages near 1; a search by label
   substring must scan and grows, which is why it is measured too.

Goal: every page answers in <= 300 ms at 100k sites (p50).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

QUICK_ARGS = ["--sites", "10000", "--repeat", "5"]  # benchmarks/run_all.py --quick
TOKEN = "benchmark-token-0123456789"
GOAL_MS = 300.0


def lfdi(i: int) -> str:
    """Spread like real LFDIs (a hash), so that a prefix search is as selective as in the field."""
    return hashlib.sha256(f"site {i}".encode()).hexdigest()[:40].upper()


async def populate(store: Any, n: int) -> None:
    import sqlalchemy as sa

    from server.headend.api import bulk_register
    from server.store import clients, groups, memberships, sites

    await store.admin.ensure_standard_programs()
    await bulk_register(
        store,
        [{"lfdi": lfdi(i), "nmi": f"N{i:09d}", "label": f"house {i} st {i % 977}"} for i in range(n)],
        actor="bench",
    )
    for g in range(10):
        await store.admin.create_group(f"zone-{g}", description=f"feeder {g}")
    async with store.write() as conn:
        gids = dict((await conn.execute(sa.select(groups.c.name, groups.c.id))).all())
        ids = (await conn.execute(sa.select(sites.c.id).order_by(sites.c.id))).scalars().all()
        rows = [{"site_id": sid, "group_id": gids[f"zone-{k % 10}"]} for k, sid in enumerate(ids)]
        for i in range(0, len(rows), 20_000):
            await conn.execute(memberships.insert(), rows[i : i + 20_000])
        now = store.clock()
        seen = [{"lfdi": lfdi(i), "kind": "device", "revoked": False, "first_seen": now - 86400}
                for i in range(n) if i % 10]  # fmt: skip
        for i in range(0, len(seen), 20_000):
            await conn.execute(clients.insert(), seen[i : i + 20_000])
    # Nine sites in ten have been heard from, one in twenty of those not lately (silent); recorded through
    # the server's own contact write path (what the TLS listener's note_contact() queues).
    store._pending_contacts.update(
        {lfdi(i): now - (3600 if i % 20 == 1 else i % 60) for i in range(n) if i % 10}
    )
    await store.flush_contacts()


def pages(n: int) -> dict[str, str]:
    middle = n // 2
    return {
        "overview": "/console/",
        "sites_first_page": "/console/sites",
        "sites_last_page": f"/console/sites?offset={n - 25}",
        "sites_by_nmi": f"/console/sites?q=N{middle:09d}",
        "sites_by_lfdi_prefix": f"/console/sites?q={lfdi(middle)[:12]}",
        "sites_by_label": "/console/sites?q=st%20976",
        "sites_by_group": "/console/sites?group=zone-3",
        "site_detail": f"/console/sites/{lfdi(middle)}",
    }


async def login(http: Any, base: str) -> None:
    """The login form, as a browser fills it: its nonce cookie, then the token; a session cookie back."""
    from yarl import URL

    from server.console.auth import COOKIE, CSRF_FIELD, LOGIN_COOKIE

    async with http.get(base + "/console/login") as resp:
        assert resp.status == 200, resp.status
    nonce = http.cookie_jar.filter_cookies(URL(base + "/console/login"))[LOGIN_COOKIE].value
    form = {"token": TOKEN, CSRF_FIELD: nonce, "next": "/console/"}
    async with http.post(base + "/console/login", data=form, allow_redirects=False) as resp:
        assert resp.status == 303, (resp.status, await resp.text())
    assert COOKIE in {c.key for c in http.cookie_jar}, "no session cookie"


async def measure(n: int, repeat: int, tmp: Path) -> dict[str, float]:
    import aiohttp
    from aiohttp import web

    from server.config import ServerConfig
    from server.headend.api import create_headend_app
    from server.store import Store

    store = await Store.open(f"sqlite+aiosqlite:///{tmp / f'sites-{n}.sqlite3'}")
    t0 = time.perf_counter()
    await populate(store, n)
    print(f"{n:,} sites registered, in 10 groups, in {time.perf_counter() - t0:.1f} s (not timed)")
    config = ServerConfig(headend_tokens=[{"name": "bench", "token": TOKEN, "role": "operator"}])
    runner = web.AppRunner(create_headend_app(store, config), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    out: dict[str, float] = {}
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            await login(http, base)
            for name, path in pages(n).items():
                times = []
                for _ in range(repeat + 1):  # the first request warms caches and is not counted
                    begun = time.perf_counter()
                    async with http.get(base + path, allow_redirects=False) as resp:
                        body = await resp.text()
                        assert resp.status == 200, (path, resp.status, body[:200])
                    times.append(time.perf_counter() - begun)
                if name.startswith("sites_") and re.search(r"(?<!\d)0 site\(s\)", body):
                    raise AssertionError(f"{path}: found nothing: {body[body.find('<main') :][:600]}")
                out[name] = statistics.median(times[1:]) * 1000
    finally:
        await runner.cleanup()
        await store.close()
    return out


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="derlink-console-") as tmp:
        big = await measure(args.sites, args.repeat, Path(tmp))
        small = await measure(args.baseline_sites, args.repeat, Path(tmp))
    print(f"\nconsole pages, p50 of {args.repeat} GETs: {args.sites:,} sites vs {args.baseline_sites:,}")
    for name, ms in big.items():
        ratio = ms / small[name]
        print(f"  {name:22s} {ms:8.1f} ms   baseline {small[name]:7.1f} ms   ratio {ratio:5.2f}")
    for name, ms in big.items():
        print(f"RESULT console_{name}_ms {ms:.1f} ms ratio={ms / small[name]:.2f} goal=<={GOAL_MS:g}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sites", type=int, default=100_000)
    parser.add_argument("--baseline-sites", type=int, default=1_000)
    parser.add_argument("--repeat", type=int, default=15)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
