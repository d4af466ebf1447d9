"""Boffer build: a 10,000-site portfolio over a day of 5-minute periods (288), 20 bands each.

Run: ``python benchmarks/boffer.py [--sites 10000] [--periods 288] [--naive-sites 200]``

1. A random portfolio (fixed seed) with per-site, per-period native load forecasts and DOE import/export
   limits is generated in memory (not timed) and written as the CSV ``derlink boffer`` reads (not timed).
2. Timed: ``build_offer`` (DOE clipping per site and period, 20 bands, maxAvail, capacities), then
   ``validate`` of the resulting offer (every seed 004 rule, every period).
3. Baselines, same run: (a) a naive pure-Python per-site, per-period, per-band loop doing the same
   arithmetic, on ``--naive-sites`` sites and scaled linearly to the full portfolio; (b) reading the
   portfolio CSV (``aggregator.boffer.io.read_csv``), i.e. what it costs just to get the input in.

Prints seconds and the ratios build/naive and build/read (lower is better). Goal: build <= 10 s.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aggregator.boffer import Plan, Portfolio, build_offer, validate  # noqa: E402
from aggregator.boffer.io import read_csv  # noqa: E402
from aggregator.boffer.validator import errors  # noqa: E402

QUICK_ARGS = ["--sites", "1000", "--naive-sites", "50"]
PRICES = (-1000, 0, 1, 78, 100, 300, 500, 1000, 1500, 15100,
          -1000, 0, 1.1, 78, 100, 300, 500, 1000, 1500, 15100)  # fmt: skip


def portfolio(sites: int, periods: int, seed: int = 1) -> Portfolio:
    rng = np.random.default_rng(seed)
    shape = (sites, periods)
    day = np.sin(np.linspace(0, np.pi, periods))  # solar shape
    return Portfolio(
        site_ids=[f"site-{i:05d}" for i in range(sites)],
        native_load=rng.uniform(0.2, 6.0, shape),
        uncontrolled_gen=rng.uniform(0, 5.0, (sites, 1)) * day,
        flex_load=np.repeat(rng.uniform(0, 8.0, (sites, 1)), periods, axis=1),
        flex_gen=np.repeat(rng.uniform(0, 10.0, (sites, 1)), periods, axis=1),
        import_limit=rng.choice([5.0, 10.0, 15.0, np.inf], shape),
        export_limit=rng.choice([0.0, 1.5, 5.0, 10.0], shape),
        energy_stored=rng.uniform(0, 13.5, sites),
    )


def naive(pf: Portfolio, plan: Plan, sites: int) -> float:
    """Pure-Python loop over sites x periods x bands: the arithmetic of builder.site_flows (NMI)."""
    start = time.perf_counter()
    periods = pf.shape[1]
    for p in range(periods):
        for k in range(20):
            total = 0.0
            lo_on, g_on = plan.load_on[k], plan.gen_on[k]
            for s in range(sites):
                base = pf.uncontrolled_gen[s, p] - pf.native_load[s, p]
                a = g_on * pf.flex_gen[s, p] - lo_on * pf.flex_load[s, p]
                a = min(max(a, -pf.import_limit[s, p] - base), pf.export_limit[s, p] - base)
                a = min(max(a, -pf.flex_load[s, p]), pf.flex_gen[s, p])
                total += base + a
    return time.perf_counter() - start


def write_csv(pf: Portfolio, path: Path) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["site_id", "period", "native_load", "uncontrolled_gen", "controlled_load",
                    "controlled_gen", "import_limit", "export_limit", "energy_stored"])  # fmt: skip
        for s, sid in enumerate(pf.site_ids):
            for p in range(pf.shape[1]):
                imp = pf.import_limit[s, p]
                w.writerow([sid, p + 1, f"{pf.native_load[s, p]:.3f}", f"{pf.uncontrolled_gen[s, p]:.3f}",
                            f"{pf.flex_load[s, p]:.3f}", f"{pf.flex_gen[s, p]:.3f}",
                            "" if np.isinf(imp) else f"{imp:g}", f"{pf.export_limit[s, p]:g}",
                            f"{pf.energy_stored[s]:.2f}"])  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sites", type=int, default=10_000)
    ap.add_argument("--periods", type=int, default=288)
    ap.add_argument("--naive-sites", type=int, default=200)
    args = ap.parse_args()
    pf = portfolio(args.sites, args.periods)
    plan = Plan.thresholds(PRICES, load_on_up_to=1, gen_on_from=78)

    t0 = time.perf_counter()
    built = build_offer(pf, "NMI", PRICES, plan)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    found = errors(validate(built.offer, built.capacity_load, built.capacity_gen))
    validate_s = time.perf_counter() - t0
    if found:
        print(f"validator refused the built offer: {found[0]}")
        return 1

    n = min(args.naive_sites, args.sites)
    naive_s = naive(pf, plan, n) * args.sites / n
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "portfolio.csv"
        write_csv(pf, path)
        t0 = time.perf_counter()
        read_csv(path)
        read_s = time.perf_counter() - t0

    print(f"{args.sites} sites x {args.periods} periods x 20 bands (NMI, DOEs per site and period)")
    print(f"  build_offer      {build_s:8.2f} s")
    print(f"  validate         {validate_s:8.2f} s ({len(built.offer.periods)} periods)")
    print(f"  naive loop       {naive_s:8.2f} s (measured on {n} sites, scaled x{args.sites / n:g})")
    print(f"  read input CSV   {read_s:8.2f} s ({args.sites * args.periods} rows)")
    print(f"RESULT boffer_build_seconds {build_s:.3f} s ratio={build_s / naive_s:.4f} goal=<=10")
    print(f"RESULT boffer_build_vs_read_csv {build_s / read_s:.4f} ratio ratio={build_s / read_s:.4f}")
    print(f"RESULT boffer_validate_seconds {validate_s:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
