"""Seed 004 appendix portfolios and price ladders, typed in from the tables (line numbers cited).

The seed elides bands 5-8 and 14-17 ("..."); their prices here are fillers chosen to rise between the
printed neighbours and carry no quantity (see aggregator/boffer/SEED-NOTES.md).
"""

from aggregator.boffer import Site

HOUSES = 5
# Table 1 (L706-L714) and Table 2 (L841-L847): the same asset capacities, houses #1-#5 and #6-#10.
ESS_CHARGE = (5, 5, 5, 5, 0)
ESS_DISCHARGE = (10, 10, 10, 5, 0)
UNCONTROLLED = (7.5, 7.5, 25, 25, 5)
POOL_PUMP = (4.4, 0, 0, 1.4, 1.4)
SOLAR = (5, 5, 5, 5, 5)
CONTROLLED_APPLIANCE = (0, 4.5, 6, 5.5, 6.8)
# Energy stored: the seed gives only the portfolio total, 35 kWh (L1030); spread as the ESS discharge kW.
ENERGY_STORED = (10, 10, 10, 5, 0)

# L750 / L889: pb1 ($1,000), 0, $1, $78, ..., $1,500, $15,100 then the same for pb11-pb20.
LADDER = (-1000, 0, 1, 78, 100, 300, 500, 1000, 1500, 15100) * 2
# L671 (D.3): pb13 is $1.1 instead of $1.
LADDER_D3 = (*LADDER[:12], 1.1, *LADDER[13:])
# L955 (G.2.1): pb9 $100, pb18 $101.
LADDER_G21 = (-1000, 0, 1, 78, 80, 85, 90, 95, 100, 15100, -1000, 0, 1, 2, 5, 10, 50, 101, 1500, 15100)
# L988 (G.2.2): pb9 $1,500, pb18 $100.
LADDER_G22 = (-1000, 0, 1, 78, 100, 300, 500, 1000, 1500, 15100, -1000, 0, 1, 2, 5, 10, 50, 100, 1500, 15100)


def load_portfolio(uncontrolled=UNCONTROLLED) -> list[Site]:
    """E.2 (L724-L732): traditional loads only; controlled load = pool pump + controlled appliance."""
    return [
        Site(f"house-{i + 1}", native_load=uncontrolled[i],
             controlled_load=POOL_PUMP[i] + CONTROLLED_APPLIANCE[i], energy_stored=ENERGY_STORED[i])
        for i in range(HOUSES)
    ]


def generation_portfolio() -> list[Site]:
    """F.2 (L864-L871): controllable generation = ESS discharge + solar; native load; no controlled load."""
    return [
        Site(f"house-{i + 6}", native_load=UNCONTROLLED[i], controlled_gen=SOLAR[i],
             ess_discharge=ESS_DISCHARGE[i], energy_stored=ENERGY_STORED[i])
        for i in range(HOUSES)
    ]


# Table 3 (L927-L935).
G_UNCONTROLLED = (7, 7, 10, 10, 6)


def bidirectional_portfolio() -> list[Site]:
    """G.2 (L939-L948): controlled load = ESS charge + pool pump + appliance; generation = ESS + solar."""
    return [
        Site(f"house-{i + 11}", native_load=G_UNCONTROLLED[i],
             controlled_load=POOL_PUMP[i] + CONTROLLED_APPLIANCE[i], ess_charge=ESS_CHARGE[i],
             controlled_gen=SOLAR[i], ess_discharge=ESS_DISCHARGE[i])
        for i in range(HOUSES)
    ]
