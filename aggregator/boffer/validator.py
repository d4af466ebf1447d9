"""Validator: every Boffer rule of seed 004, each finding citing its rule and line.

Returns findings rather than raising so that a submission reports all its faults at once; an offer is
accepted when no finding has severity "error".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from aggregator.boffer.model import BANDS, PERIODS_PER_OFFER, Offer, PeriodOffer, accumulate

EPS = 1e-6


@dataclass(frozen=True)
class Finding:
    line: str  # seed 004 line(s), e.g. "L473"
    rule: str
    message: str
    period: int | None = None
    band: int | None = None  # 1..20
    severity: str = "error"

    def __str__(self) -> str:
        where = f" period {self.period}" if self.period is not None else ""
        where += f" band {self.band}" if self.band is not None else ""
        return f"{self.line} ({self.rule}){where}: {self.message}"


def validate(offer: Offer, capacity_load: Sequence[float] | float | None = None,
             capacity_gen: Sequence[float] | float | None = None,
             full_horizon: bool = False) -> list[Finding]:  # fmt: skip
    """All findings for the offer.  Capacities (kW magnitudes, per period or one for all) enable L305/L319;
    full_horizon demands the 576 consecutive intervals of L144/L229."""
    out: list[Finding] = []
    prices = offer.prices
    if len(prices) != BANDS:
        return [Finding("L468", "20 price bands", f"{len(prices)} prices given")]
    for half, lo in (("load", 0), ("generation", 10)):
        for k in range(lo + 1, lo + 10):
            if not prices[k] > prices[k - 1]:
                out.append(Finding("L469", "prices rise within each half",
                                   f"{half} band {k + 1} price {prices[k]:g} is not above band {k} price "
                                   f"{prices[k - 1]:g}", band=k + 1))  # fmt: skip
    if full_horizon:
        ids = [p.period_id for p in offer.periods]
        if len(ids) != PERIODS_PER_OFFER or ids != list(range(ids[0], ids[0] + len(ids))):
            out.append(Finding("L144, L229", "all 576 five-minute intervals",
                               f"{len(ids)} periods given, or not consecutive"))  # fmt: skip
    for i, p in enumerate(offer.periods):
        out.extend(_period(p, prices, _at(capacity_load, i), _at(capacity_gen, i)))
    return out


def errors(findings: Sequence[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity == "error"]


def _at(value: Sequence[float] | float | None, i: int) -> float | None:
    if value is None or isinstance(value, int | float):
        return value
    return float(value[i])


def _period(p: PeriodOffer, prices: Sequence[float], cap_load: float | None,
            cap_gen: float | None) -> list[Finding]:  # fmt: skip
    out: list[Finding] = []
    pid = p.period_id

    def add(line: str, rule: str, message: str, band: int | None = None, severity: str = "error") -> None:
        out.append(Finding(line, rule, message, pid, band, severity))

    q = p.quantities
    if len(q) != BANDS or len(p.accumulated) != BANDS:
        add("L468", "20 bands", f"{len(q)} quantities and {len(p.accumulated)} accumulated quantities")
        return out
    if p.max_avail_gen < -EPS:
        add("L471", "maxAvailGen >= 0", f"maxAvailGen is {p.max_avail_gen:g}")
    if p.max_avail_load > EPS:
        add("L472", "maxAvailLoad <= 0", f"maxAvailLoad is {p.max_avail_load:g}")
    for k in range(BANDS):
        if k < 10 and q[k] > EPS:
            add("L473", "load bands 1-10 hold only negative quantities",
                f"positive quantity {q[k]:g} in a load band", k + 1)  # fmt: skip
        if k >= 10 and q[k] < -EPS:
            add("L474", "generation bands 11-20 hold only positive quantities",
                f"negative quantity {q[k]:g} in a generation band", k + 1)  # fmt: skip
    seen_positive = None
    for k in range(BANDS):
        if q[k] > EPS and seen_positive is None:
            seen_positive = k
        elif q[k] < -EPS and seen_positive is not None:
            add("L475", "no load after generation",
                f"negative quantity {q[k]:g} above the positive quantity in band {seen_positive + 1}", k + 1)
    expected = accumulate(q)
    for k in range(BANDS):
        if abs(expected[k] - p.accumulated[k]) > 1e-3:
            add("L476", "accumulated quantity accumulates the bands from the zero break point",
                f"accumulated {p.accumulated[k]:g}, the quantities accumulate to {expected[k]:g}", k + 1)
    if cap_load is not None and -p.max_avail_load > cap_load + 1e-3:
        add("L305", "maxAvailLoad within the portfolio's load capacity",
            f"|maxAvailLoad| {-p.max_avail_load:g} kW exceeds the load capacity {cap_load:g} kW")
    if cap_gen is not None and p.max_avail_gen > cap_gen + 1e-3:
        add("L319", "maxAvailGen within the portfolio's generation capacity",
            f"maxAvailGen {p.max_avail_gen:g} kW exceeds the generation capacity {cap_gen:g} kW")
    load_prices = {prices[k]: k for k in range(10) if abs(q[k]) > EPS}
    for k in range(10, 20):
        if abs(q[k]) > EPS and prices[k] in load_prices:
            add("L487", "no price shared by a non-zero load band and a non-zero generation band",
                f"price {prices[k]:g} is on load band {load_prices[prices[k]] + 1} and generation band "
                f"{k + 1}", k + 1)  # fmt: skip
    if p.fixed_load is not None:
        if any(abs(v) > EPS for v in q):
            add("L477", "EFL takes precedence over price/quantity pairs",
                f"fixedLoad {p.fixed_load:g} kW given: the band quantities are ignored", severity="warning")
        if p.fixed_load > p.max_avail_gen + EPS or p.fixed_load < p.max_avail_load - EPS:
            add("L477, L471-472", "EFL within maxAvailLoad..maxAvailGen",
                f"fixedLoad {p.fixed_load:g} kW outside {p.max_avail_load:g}..{p.max_avail_gen:g} kW")
    return out

