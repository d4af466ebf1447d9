"""Seed 004 Boffer rules: each validator rule refuses an example naming its line; builder properties."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aggregator.boffer import (
    Arrangement,
    Offer,
    PeriodOffer,
    Plan,
    PlanError,
    Portfolio,
    Site,
    build_offer,
    dispatch_sites,
    validate,
)
from aggregator.boffer.builder import site_flows
from aggregator.boffer.model import accumulate
from aggregator.boffer.validator import errors
from tests import boffer_examples as ex


def period(q, max_load=-100.0, max_gen=100.0, acc=None, fixed=None, pid=1):
    q = tuple(float(v) for v in q)
    return PeriodOffer(pid, max_load, max_gen, q, accumulate(q) if acc is None else acc, fixed)


def q20(**bands):
    out = [0.0] * 20
    for name, v in bands.items():
        out[int(name[2:]) - 1] = v
    return out


def lines(offer, **kw):
    return sorted({f.line for f in errors(validate(offer, **kw))})


def one(p, prices=ex.LADDER):
    return Offer(Arrangement.NMI, prices, [p])


def test_accepted_reference_offer():
    assert lines(one(period(q20(pb3=-30, pb10=-70, pb19=20)))) == []


def test_L469_prices_must_rise_within_each_half():
    prices = list(ex.LADDER)
    prices[14], prices[15] = prices[15], prices[14]  # band 16 below band 15
    found = errors(validate(one(period(q20(pb3=-30)), prices)))
    assert [(f.line, f.band) for f in found] == [("L469", 16)]
    assert "L469 (prices rise within each half) band 16" in str(found[0])


def test_L471_max_avail_gen_not_negative():
    assert lines(one(period(q20(pb3=-30), max_gen=-5))) == ["L471"]


def test_L472_max_avail_load_not_positive():
    assert lines(one(period(q20(pb3=-30), max_load=5))) == ["L472"]


def test_L473_positive_quantity_in_a_load_band():
    found = errors(validate(one(period(q20(pb3=10), max_load=0))))
    assert [(f.line, f.band) for f in found] == [("L473", 3)]


def test_L474_negative_quantity_in_a_generation_band():
    found = errors(validate(one(period(q20(pb12=-10)))))
    assert ("L474", 12) in [(f.line, f.band) for f in found]


def test_L475_no_load_after_generation():
    # A positive load-band quantity followed by a negative one: L473 and L475 both apply.
    found = errors(validate(one(period(q20(pb2=10, pb5=-20)))))
    assert ("L475", 5) in [(f.line, f.band) for f in found]
    found = errors(validate(one(period(q20(pb11=10, pb14=-20)))))
    assert {("L474", 14), ("L475", 14)} <= {(f.line, f.band) for f in found}


def test_L476_accumulated_row_must_accumulate_the_quantities():
    q = q20(pb3=-30, pb10=-70)
    acc = list(accumulate(q))
    acc[3] = -100.0
    assert lines(one(period(q, acc=tuple(acc)))) == ["L476"]


def test_L305_max_avail_load_within_portfolio_load_capacity():
    p = period(q20(pb3=-30, pb10=-70), max_load=-120)
    assert lines(one(p), capacity_load=100, capacity_gen=100) == ["L305"]
    assert lines(one(p), capacity_load=120, capacity_gen=100) == []


def test_L319_max_avail_gen_within_portfolio_generation_capacity():
    p = period(q20(pb19=20), max_gen=80)
    assert lines(one(p), capacity_load=100, capacity_gen=60) == ["L319"]


def test_L487_no_shared_price_between_nonzero_load_and_generation():
    # $78 is pb4 and pb14: refused when both carry quantity, accepted when one is zero (L487 comment).
    assert lines(one(period(q20(pb4=-30, pb14=20)))) == ["L487"]
    assert lines(one(period(q20(pb4=-30, pb15=20)))) == []


def test_L477_fixed_load_overrides_bands_and_must_be_deliverable():
    from aggregator.boffer.dispatch import cleared_position

    p = period(q20(pb3=-30), max_load=-30, max_gen=0, fixed=-20)
    found = validate(one(p))
    assert [(f.line, f.severity) for f in found] == [("L477", "warning")]
    assert cleared_position(p, ex.LADDER, 15000) == -20  # EFL whatever the price (L486)
    too_much = period(q20(pb3=-30), max_load=-30, max_gen=0, fixed=-50)
    assert lines(one(too_much)) == ["L477, L471-472"]


def test_L144_full_offer_has_576_periods():
    short = Offer(Arrangement.NMI, ex.LADDER, [period(q20(), pid=i + 1) for i in range(575)])
    assert lines(short, full_horizon=True) == ["L144, L229"]
    full = Offer(Arrangement.NMI, ex.LADDER, [period(q20(), pid=i + 1) for i in range(576)])
    assert lines(full, full_horizon=True) == []


def test_L468_twenty_bands():
    assert lines(Offer(Arrangement.NMI, ex.LADDER[:19], [])) == ["L468"]
    bad = PeriodOffer(1, 0, 0, (0.0,) * 19, (0.0,) * 19)
    assert lines(one(bad)) == ["L468"]


def test_plan_whose_position_falls_with_price_is_refused():
    # Generation on at low prices and off at high ones cannot be written as rising bands (L469, L476).
    plan = Plan.states([(0, 0)] * 10 + [(0, 1)] * 5 + [(0, 0)] * 5)
    with pytest.raises(PlanError, match=r"period 1.*band 15 to band 16.*L469"):
        build_offer(Portfolio.from_sites(ex.generation_portfolio()), "FLEX", ex.LADDER, plan)


def test_bad_portfolio_names_the_field():
    pf = Portfolio.from_sites([Site("a", native_load=-1)])
    with pytest.raises(ValueError, match="native_load"):
        build_offer(pf, "NMI", ex.LADDER, Plan.thresholds(ex.LADDER, load_on_up_to=1))


def test_doe_clips_max_avail_at_each_connection_point():
    # Import limit 5 kW at house-1 (native 7.5 + controllable 4.4): its load cannot be switched on, and
    # the ceiling on generation at house-6 is its export limit (L152, L346).
    sites = ex.load_portfolio()
    sites[0] = Site("house-1", native_load=7.5, controlled_load=4.4, controlled_gen=3, import_limit=5)
    built = build_offer(Portfolio.from_sites(sites), "NMI", ex.LADDER, Plan.thresholds(ex.LADDER, 1, 100))
    p = built.offer.periods[0]
    assert p.max_avail_load == -93.1  # 5 + 12 + 31 + 31.9 + 13.2
    assert built.infeasible == []  # house-1 can meet its import limit with 3 kW generation
    gen = [Site("g", controlled_gen=10, export_limit=4)]
    built = build_offer(Portfolio.from_sites(gen), "FLEX", ex.LADDER, Plan.thresholds(ex.LADDER, None, 1))
    assert built.offer.periods[0].max_avail_gen == 4 and built.capacity_gen[0] == 10


# ---- properties ------------------------------------------------------------------------------------

kw = st.floats(min_value=0, max_value=50, allow_nan=False).map(lambda v: round(v, 2))
limit = st.one_of(st.none(), st.floats(min_value=0, max_value=40).map(lambda v: round(v, 2)))
site = st.builds(Site, site_id=st.just(""), native_load=kw, uncontrolled_gen=kw, controlled_load=kw,
                 controlled_gen=kw, ess_charge=kw, ess_discharge=kw, import_limit=limit,
                 export_limit=limit)  # fmt: skip


@st.composite
def scenario(draw):
    sites = draw(st.lists(site, min_size=1, max_size=6))
    sites = [Site(**{**s.__dict__, "site_id": f"s{i}"}) for i, s in enumerate(sites)]
    steps = draw(st.lists(st.floats(min_value=0.01, max_value=500), min_size=20, max_size=20))
    prices = []
    for half in (0, 10):
        p = -1000.0
        for k in range(10):
            p = round(p + steps[half + k], 2) if k else -1000.0
            prices.append(p)
    load_up_to = draw(st.one_of(st.none(), st.sampled_from(prices)))
    gen_from = draw(st.one_of(st.none(), st.sampled_from(prices)))
    arrangement = draw(st.sampled_from(list(Arrangement)))
    price = draw(st.floats(min_value=-1100, max_value=6000))
    return sites, prices, Plan.thresholds(prices, load_up_to, gen_from), arrangement, price


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario())
def test_property_built_offers_pass_the_validator_and_respect_every_envelope(case):
    sites, prices, plan, arrangement, price = case
    pf = Portfolio.from_sites(sites)
    built = build_offer(pf, arrangement, prices, plan)
    assert errors(validate(built.offer, built.capacity_load, built.capacity_gen)) == []
    infeasible = {sid for sid, _ in built.infeasible}
    imp = pf.import_limit[:, 0]
    exp = pf.export_limit[:, 0]
    for k in range(20):
        flow = site_flows(pf, Arrangement.NMI, plan.load_on[k], plan.gen_on[k])[:, 0]
        for i, sid in enumerate(pf.site_ids):
            if sid not in infeasible:
                assert -imp[i] - 1e-6 <= flow[i] <= exp[i] + 1e-6
    for i, t in enumerate(dispatch_sites(built, 0, price)):
        if t.site_id not in infeasible:
            assert -imp[i] - 1e-3 <= t.connection_point <= exp[i] + 1e-3
        assert 0 <= t.controlled_gen <= pf.flex_gen[i, 0] + 1e-3
        assert -pf.flex_load[i, 0] - 1e-3 <= t.controlled_load <= 0


def test_multi_period_doe_varies_per_period():
    sites = ex.load_portfolio()
    pf = Portfolio.from_sites(sites, periods=3)
    pf.import_limit[:, 1] = 8.0  # a tight envelope in the second period only
    built = build_offer(pf, "NMI", ex.LADDER, Plan.thresholds(ex.LADDER, load_on_up_to=1))
    mal = [p.max_avail_load for p in built.offer.periods]
    # 8 kW each at houses 1, 2, 5; houses 3 and 4 have 25 kW native load no control can reduce.
    assert mal[0] == mal[2] == -100 and mal[1] == -74
    assert built.infeasible == [("house-3", 2), ("house-4", 2)]
    assert np.all(built.capacity_load == 100)
    assert [p.period_id for p in built.offer.periods] == [1, 2, 3]
