"""Dispatch: a cleared price -> the portfolio position, each site's target, and DUID telemetry (App. H).

Load bands are dispatched when the clearing price is at or below their price (L473), generation bands
when it is at or above (L474); maxAvailLoad/maxAvailGen bound the result (L471-472) and an EFL, when
given, is dispatched whatever the price (L477, L486).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aggregator.boffer.builder import controllable_action
from aggregator.boffer.model import Arrangement, BuiltOffer, PeriodOffer


def cleared_position(period: PeriodOffer, prices: tuple[float, ...], price: float) -> float:
    """Portfolio kW cleared at `price` (+ generation, - load)."""
    if period.fixed_load is not None:
        return period.fixed_load
    q = period.quantities
    load = sum(q[k] for k in range(10) if prices[k] >= price)
    gen = sum(q[k] for k in range(10, 20) if prices[k] <= price)
    return round(max(load, period.max_avail_load) + min(gen, period.max_avail_gen), 3) + 0.0


def active_band(period: PeriodOffer, prices: tuple[float, ...], price: float) -> int | None:
    """The band (0..19) whose plan state is in force at `price`: the lowest load band at or above the
    price if it carries load, else the highest generation band at or below it if it carries generation,
    else whichever of the two exists (net zero)."""
    load_k = next((k for k in range(10) if prices[k] >= price), None)
    gen_k = next((k for k in range(19, 9, -1) if prices[k] <= price), None)
    acc = period.accumulated
    if load_k is not None and acc[load_k] < 0:
        return load_k
    if gen_k is not None and acc[gen_k] > 0:
        return gen_k
    return load_k if load_k is not None else gen_k


@dataclass(frozen=True)
class SiteTarget:
    site_id: str
    controlled_gen: float  # kW on, >= 0
    controlled_load: float  # kW on, <= 0
    connection_point: float  # kW at the NMI, + export (what a gateway setpoint targets)


def dispatch_sites(built: BuiltOffer, period_index: int, price: float) -> list[SiteTarget]:
    """Each site's target at the cleared price, from the plan state of the band in force."""
    offer = built.offer
    period = offer.periods[period_index]
    band = active_band(period, offer.prices, price)
    pf = built.portfolio
    load_on = built.plan.load_on[band] if band is not None else 0.0
    gen_on = built.plan.gen_on[band] if band is not None else 0.0
    action = controllable_action(pf, load_on, gen_on)[:, period_index]
    gen = gen_on * pf.flex_gen[:, period_index]
    load = load_on * pf.flex_load[:, period_index]
    # Where the envelope moved the action, give up generation (or load) first, then add the other.
    delta = action - (gen - load)
    down = np.minimum(np.maximum(-delta, 0.0), gen)
    gen = gen - down
    load = load + (np.maximum(-delta, 0.0) - down)
    up = np.minimum(np.maximum(delta, 0.0), load)
    load = load - up
    gen = gen + (np.maximum(delta, 0.0) - up)
    base = pf.uncontrolled_gen[:, period_index] - pf.native_load[:, period_index]
    return [
        SiteTarget(sid, round(float(g), 3) + 0.0, round(-float(lo), 3) + 0.0, round(float(b + a), 3) + 0.0)
        for sid, g, lo, b, a in zip(pf.site_ids, gen, load, base, action, strict=True)
    ]


@dataclass(frozen=True)
class Telemetry:
    """DUID telemetry (L1007): NMI active power, and the Flex fields of controllable assets only."""

    active_power: float  # kW at the NMIs, summed (L1016)
    controlled_gen: float  # kW (L1022)
    controlled_load: float  # kW, <= 0
    energy_stored: float  # kWh

    def for_arrangement(self, arrangement: Arrangement) -> dict[str, float]:
        if Arrangement(arrangement) is Arrangement.NMI:
            return {"active_power": self.active_power}
        return {"controlled_gen": self.controlled_gen, "controlled_load": self.controlled_load,
                "energy_stored": self.energy_stored}  # fmt: skip


def telemetry(targets: list[SiteTarget], energy_stored: float) -> Telemetry:
    return Telemetry(
        active_power=round(sum(t.connection_point for t in targets), 3) + 0.0,
        controlled_gen=round(sum(t.controlled_gen for t in targets), 3) + 0.0,
        controlled_load=round(sum(t.controlled_load for t in targets), 3) + 0.0,
        energy_stored=round(energy_stored, 3) + 0.0,
    )
