"""Data model of a Boffer (seed 004 = /work/shared/seeds/004_5d5d1bf7e0776b7d.txt, cited as L<line>).

Sign convention (L467, L225): negative kW is load / import, positive kW is generation / export.
Bands are indexed 0..19 in code and numbered 1..20 in messages: bands 1-10 load, 11-20 generation (L468).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

BANDS = 20
LOAD = slice(0, 10)
GEN = slice(10, 20)
PERIODS_PER_OFFER = 576  # 48 h of 5-minute dispatch intervals (L144, L229)
DECIMALS = 3  # kW to the watt


class Arrangement(StrEnum):
    """bofferSummationLevel (L224): net connection-point flow, or controllable assets only."""

    NMI = "NMI"
    FLEX = "FLEX"


class PlanError(ValueError):
    """The plan asks for an offer the band structure cannot express (accumulation not monotone)."""


@dataclass(frozen=True)
class Site:
    """One connection point (NMI) and what stands behind it, in kW (kWh for energy_stored).

    Controllable load includes ESS charging and controllable generation includes ESS discharging (L280-281).
    DOE limits are magnitudes at the connection point; None means no limit.
    """

    site_id: str
    native_load: float = 0.0
    uncontrolled_gen: float = 0.0
    controlled_load: float = 0.0
    controlled_gen: float = 0.0
    ess_charge: float = 0.0
    ess_discharge: float = 0.0
    energy_stored: float = 0.0
    import_limit: float | None = None
    export_limit: float | None = None

    @property
    def flex_load(self) -> float:
        return self.controlled_load + self.ess_charge

    @property
    def flex_gen(self) -> float:
        return self.controlled_gen + self.ess_discharge


@dataclass
class Portfolio:
    """A portfolio as (sites x periods) arrays, so the builder is vectorised over both."""

    site_ids: list[str]
    native_load: np.ndarray
    uncontrolled_gen: np.ndarray
    flex_load: np.ndarray
    flex_gen: np.ndarray
    import_limit: np.ndarray  # +inf where no DOE
    export_limit: np.ndarray
    energy_stored: np.ndarray  # (sites,) kWh

    @property
    def shape(self) -> tuple[int, int]:
        return self.native_load.shape  # type: ignore[return-value]

    @classmethod
    def from_sites(cls, sites: Sequence[Site], periods: int = 1) -> Portfolio:
        def col(get) -> np.ndarray:
            values = np.array([get(s) for s in sites], dtype=float).reshape(len(sites), 1)
            return np.repeat(values, periods, axis=1)

        def limit(v: float | None) -> float:
            return np.inf if v is None else v

        return cls(
            site_ids=[s.site_id for s in sites],
            native_load=col(lambda s: s.native_load),
            uncontrolled_gen=col(lambda s: s.uncontrolled_gen),
            flex_load=col(lambda s: s.flex_load),
            flex_gen=col(lambda s: s.flex_gen),
            import_limit=col(lambda s: limit(s.import_limit)),
            export_limit=col(lambda s: limit(s.export_limit)),
            energy_stored=np.array([s.energy_stored for s in sites], dtype=float),
        )

    def check(self) -> None:
        """Reject negative capacities/limits and mismatched shapes, naming the field."""
        shape = self.shape
        for name in ("native_load", "uncontrolled_gen", "flex_load", "flex_gen", "import_limit",
                     "export_limit"):  # fmt: skip
            arr = getattr(self, name)
            if arr.shape != shape:
                raise ValueError(f"{name}: shape {arr.shape}, expected {shape}")
            if np.isnan(arr).any() or (arr < 0).any():
                raise ValueError(f"{name}: values must be >= 0 kW (magnitudes)")
        if len(self.site_ids) != shape[0] or len(set(self.site_ids)) != shape[0]:
            raise ValueError("site_ids: one distinct id per site row")


@dataclass(frozen=True)
class Plan:
    """For each band, the fraction (0..1) of controllable load and generation on at that band's price.

    This is the aggregator's intent; the builder turns it into quantities inside each site's envelope.
    """

    load_on: tuple[float, ...]
    gen_on: tuple[float, ...]

    def __post_init__(self) -> None:
        for name in ("load_on", "gen_on"):
            values = getattr(self, name)
            if len(values) != BANDS:
                raise PlanError(f"{name}: {len(values)} values, a Boffer has {BANDS} bands (L468)")
            if any(not 0.0 <= v <= 1.0 for v in values):
                raise PlanError(f"{name}: fractions must be within 0..1")

    @classmethod
    def thresholds(cls, prices: Sequence[float], load_on_up_to: float | None = None,
                   gen_on_from: float | None = None) -> Plan:  # fmt: skip
        """Load on at clearing prices <= load_on_up_to (L473), generation on at >= gen_on_from (L474)."""
        return cls(
            load_on=tuple(1.0 if load_on_up_to is not None and p <= load_on_up_to else 0.0 for p in prices),
            gen_on=tuple(1.0 if gen_on_from is not None and p >= gen_on_from else 0.0 for p in prices),
        )

    @classmethod
    def states(cls, pairs: Sequence[tuple[float, float]]) -> Plan:
        """From 20 (load_on, gen_on) pairs, band 1 first."""
        return cls(load_on=tuple(p[0] for p in pairs), gen_on=tuple(p[1] for p in pairs))


@dataclass(frozen=True)
class PeriodOffer:
    """One dispatch interval of a Boffer, as in the seed's tables (L670-673)."""

    period_id: int
    max_avail_load: float
    max_avail_gen: float
    quantities: tuple[float, ...]
    accumulated: tuple[float, ...]
    fixed_load: float | None = None  # EFL (L477); None when not used


@dataclass
class Offer:
    """A Boffer: one price ladder (prices are locked per day, L231) and quantities per period."""

    arrangement: Arrangement
    prices: tuple[float, ...]
    periods: list[PeriodOffer] = field(default_factory=list)

    @classmethod
    def from_arrays(cls, arrangement: Arrangement, prices: Sequence[float], quantities: np.ndarray,
                    accumulated: np.ndarray, max_avail_load: np.ndarray, max_avail_gen: np.ndarray,
                    first_period: int = 1) -> Offer:  # fmt: skip
        q = np.round(quantities, DECIMALS) + 0.0  # + 0.0 turns -0.0 into 0.0
        a = np.round(accumulated, DECIMALS) + 0.0
        mal = np.round(max_avail_load, DECIMALS) + 0.0
        mag = np.round(max_avail_gen, DECIMALS) + 0.0
        periods = [
            PeriodOffer(first_period + i, float(mal[i]), float(mag[i]), tuple(q[i].tolist()),
                        tuple(a[i].tolist()))
            for i in range(q.shape[0])
        ]
        return cls(Arrangement(arrangement), tuple(float(p) for p in prices), periods)


def accumulate(quantities: Sequence[float]) -> tuple[float, ...]:
    """Accumulated quantities from band quantities (L476): from the zero break point between bands 10
    and 11, import accumulates towards band 1 and export towards band 20."""
    q = list(quantities)
    acc = [0.0] * BANDS
    running = 0.0
    for k in range(9, -1, -1):
        running += q[k]
        acc[k] = running
    running = 0.0
    for k in range(10, 20):
        running += q[k]
        acc[k] = running
    return tuple(round(v, DECIMALS) + 0.0 for v in acc)


@dataclass
class BuiltOffer:
    """What the builder produced, with what dispatch needs to split a cleared price into site targets."""

    offer: Offer
    portfolio: Portfolio
    plan: Plan
    capacity_load: np.ndarray  # (periods,) kW magnitude, no DOE: what the portfolio could do (L305)
    capacity_gen: np.ndarray  # (periods,) (L319)
    infeasible: list[tuple[str, int]] = field(default_factory=list)  # (site, period) outside envelope
