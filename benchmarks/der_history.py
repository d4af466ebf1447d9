"""The cost of keeping DER standing-data history on the DER document PUT path (issue 13 item 6).

Run: ``python benchmarks/der_history.py [--sites 200] [--rounds 5]``

A store on SQLite on disk; ``--sites`` sites with 3 DERs each PUT a DERStatus whose state of charge moved
(a history row per PUT: the worst case) ``--rounds`` times, all sites at once (group commit). Baseline in
the same run and process: the same PUTs with the history bookkeeping switched off (``_record`` a no-op);
the two alternate, best of two each.
Figures: PUTs/s, process CPU per PUT (``time.process_time``, the store runs in this process), ratio of
PUT rates (history / baseline, higher is better) and of CPU per PUT (lower is better). Goal: history
costs at most 1.5x the baseline's CPU per PUT.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

QUICK_ARGS = ["--sites", "50", "--rounds", "2"]  # benchmarks/run_all.py --quick


async def run(store: Any, targets: list[tuple[Any, int, int]], rounds: int, offset: int) -> tuple[float, ...]:
    from sep2 import resources as r

    puts = 0
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(rounds):
        soc = (offset * 10 + i) * 7 + 1  # a new state of charge on every PUT
        doc = r.DERStatus(readingTime=1_700_000_000 + i, stateOfChargeStatus=r.StateOfChargeStatus(
            dateTime=1_700_000_000 + i, value=soc))  # fmt: skip
        await asyncio.gather(*(store.put_der_document(s, site, der, "ders", doc) for s, site, der in targets))
        puts += len(targets)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return puts / wall, cpu / puts * 1e6


async def main(sites: int, rounds: int) -> None:
    from server.store import RequestScope, Store, der_docs, der_history

    with tempfile.TemporaryDirectory() as tmp:
        store = await Store.open(f"sqlite+aiosqlite:///{Path(tmp) / 'db.sqlite'}")
        targets = []
        for n in range(sites):
            lfdi = f"{n:040X}"
            site_id = await store.admin.register_site(lfdi, der_count=3)
            scope = RequestScope(lfdi=lfdi, kind="device")
            targets += [(scope, site_id, der) for der in range(3 * n + 1, 3 * n + 4)]
        await run(store, targets, 1, 0)  # warm up: first documents
        record = der_docs._record

        async def nothing(*_args: Any) -> None:
            return None

        base: list[tuple[float, ...]] = []
        with_history: list[tuple[float, ...]] = []
        for n in range(2):  # alternate, best of two each: the database grows as it goes
            der_docs._record = nothing
            base.append(await run(store, targets, rounds, 100 + 2 * n))
            der_docs._record = record
            with_history.append(await run(store, targets, rounds, 101 + 2 * n))
        base_rate, base_cpu = max(base)
        rate, cpu = max(with_history)
        async with store.read() as conn:
            import sqlalchemy as sa

            rows = (await conn.execute(sa.select(sa.func.count()).select_from(der_history))).scalar()
        await store.close()
    ratio = rate / base_rate
    print(f"{len(targets)} DERs x {rounds} rounds; history rows kept: {rows}")
    print(f"baseline (no history): {base_rate:.0f} PUT/s, {base_cpu:.0f} us CPU/PUT")
    print(f"with history:          {rate:.0f} PUT/s, {cpu:.0f} us CPU/PUT")
    print(f"RESULT der_put_with_history {rate:.0f} PUT/s ratio={ratio:.2f}")
    print(f"RESULT der_put_cpu_with_history {cpu:.0f} us/PUT ratio={cpu / base_cpu:.2f} goal=ratio<=1.5")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.sites, args.rounds))
