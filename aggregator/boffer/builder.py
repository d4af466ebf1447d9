"""Builder: portfolio + DOEs + plan -> 20-band Boffer for every period (seed 004 L283-L319, L465-L477).

For band k the plan says which share of controllable load and generation is on at that band's price.
Each site's controllable action is first kept inside its DOE at the connection point (import limit for
load, export limit for generation: L152, L346), then inside what the assets can do. The portfolio
position N_k is the sum of site flows measured at the NMI (net connection point) or, under FLEX, at the
controllable assets only (L224). Accumulated quantities are min(N_k, 0) in the load bands and
max(N_k, 0) in the generation bands (the break point of zero between bands 10 and 11, L476); band
quantities are their differences.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from aggregator.boffer.model import (
    BANDS,
    GEN,
    LOAD,
    Arrangement,
    BuiltOffer,
    Offer,
    Plan,
    PlanError,
    Portfolio,
)

TOLERANCE = 1e-6


def controllable_action(pf: Portfolio, load_on: float, gen_on: float, envelope: bool = True) -> np.ndarray:
    """Net controllable kW per (site, period): + export.  Kept inside the DOE, then inside the assets."""
    base = pf.uncontrolled_gen - pf.native_load
    action = gen_on * pf.flex_gen - load_on * pf.flex_load
    if envelope:
        action = np.clip(action, -pf.import_limit - base, pf.export_limit - base)
    return np.clip(action, -pf.flex_load, pf.flex_gen)


def site_flows(pf: Portfolio, arrangement: Arrangement, load_on: float, gen_on: float,
               envelope: bool = True) -> np.ndarray:  # fmt: skip
    """kW per (site, period) as the arrangement measures it (L1013 NMI, L1019 FLEX)."""
    action = controllable_action(pf, load_on, gen_on, envelope)
    if arrangement is Arrangement.FLEX:
        return action
    return pf.uncontrolled_gen - pf.native_load + action


def build_offer(portfolio: Portfolio, arrangement: Arrangement | str, prices: Sequence[float], plan: Plan,
                first_period: int = 1) -> BuiltOffer:  # fmt: skip
    """Build the Boffer; raise PlanError when the plan's positions cannot be expressed as bands."""
    arrangement = Arrangement(arrangement)
    if len(prices) != BANDS:
        raise PlanError(f"prices: {len(prices)} given, a Boffer has {BANDS} bands (L468)")
    portfolio.check()
    periods = portfolio.shape[1]
    position = np.empty((periods, BANDS))
    cache: dict[tuple[float, float], np.ndarray] = {}
    for k in range(BANDS):
        state = (plan.load_on[k], plan.gen_on[k])
        if state not in cache:
            cache[state] = site_flows(portfolio, arrangement, *state).sum(axis=0)
        position[:, k] = cache[state]
    accumulated = np.empty_like(position)
    accumulated[:, LOAD] = np.minimum(position[:, LOAD], 0.0)
    accumulated[:, GEN] = np.maximum(position[:, GEN], 0.0)
    for half, name in ((LOAD, "load bands 1-10"), (GEN, "generation bands 11-20")):
        steps = np.diff(accumulated[:, half], axis=1)
        bad = np.argwhere(steps < -TOLERANCE)
        if bad.size:
            period, band = bad[0]
            first = half.start + band + 1
            raise PlanError(
                f"plan: period {first_period + period}: the position falls from band {first} to band "
                f"{first + 1} in the {name}; positions must rise with price (L469, L476)"
            )
    quantities = np.empty_like(accumulated)
    quantities[:, 0:9] = accumulated[:, 0:9] - accumulated[:, 1:10]
    quantities[:, 9] = accumulated[:, 9]
    quantities[:, 10] = accumulated[:, 10]
    quantities[:, 11:20] = accumulated[:, 11:20] - accumulated[:, 10:19]
    # maxAvailLoad/Gen: the most the portfolio can import/export with every site inside its DOE (L297-L319).
    max_load = np.minimum(site_flows(portfolio, arrangement, 1.0, 0.0).sum(axis=0), 0.0)
    max_gen = np.maximum(site_flows(portfolio, arrangement, 0.0, 1.0).sum(axis=0), 0.0)
    cap_load = -np.minimum(site_flows(portfolio, arrangement, 1.0, 0.0, envelope=False).sum(axis=0), 0.0)
    cap_gen = np.maximum(site_flows(portfolio, arrangement, 0.0, 1.0, envelope=False).sum(axis=0), 0.0)
    offer = Offer.from_arrays(arrangement, prices, quantities, accumulated, max_load, max_gen, first_period)
    return BuiltOffer(offer, portfolio, plan, cap_load, cap_gen, _infeasible(portfolio, first_period))


def _infeasible(pf: Portfolio, first_period: int) -> list[tuple[str, int]]:
    """Sites whose uncontrolled flow is outside the DOE by more than their flexibility can correct."""
    base = pf.uncontrolled_gen - pf.native_load
    short_of_import = base + pf.flex_gen < -pf.import_limit - TOLERANCE
    over_export = base - pf.flex_load > pf.export_limit + TOLERANCE
    bad = short_of_import | over_export
    return [(pf.site_ids[s], first_period + p) for s, p in np.argwhere(bad)]
