"""Control hierarchy: most restrictive limits, disconnect wins, setpoints clipped, sources explained."""

from __future__ import annotations

from gateway.core.events import ControlSettings as CS
from gateway.core.hierarchy import Layer, Source, combine


def test_limits_combine_to_most_restrictive_with_source():
    eff = combine(
        [
            Layer(Source.INSTALLER, CS(export_limit_w=5000, import_limit_w=15000), "connection agreement"),
            Layer(
                Source.UTILITY, CS(export_limit_w=1500), details={"export_limit_w": "DERControl X primacy 1"}
            ),
            Layer(Source.CUSTOMER, CS(export_limit_w=4000, load_limit_w=7000), "customer"),
        ]
    )
    assert (eff.export_w.value, eff.export_w.source) == (1500, Source.UTILITY)
    assert eff.export_w.detail == "DERControl X primacy 1"
    assert (eff.import_w.value, eff.import_w.source) == (15000, Source.INSTALLER)
    assert (eff.load_w.value, eff.load_w.source) == (7000, Source.CUSTOMER)
    assert eff.generation_w.value is None
    assert "export_w: 1500 W from UTILITY (DERControl X primacy 1)" in eff.explain()
    assert "generation_w: unlimited (no source sets it)" in eff.explain()


def test_ties_credit_the_higher_authority():
    eff = combine(
        [Layer(Source.INSTALLER, CS(export_limit_w=0)), Layer(Source.UTILITY, CS(export_limit_w=0))]
    )
    assert eff.export_w.source == Source.UTILITY


def test_any_disconnect_wins_and_forces_setpoints_to_zero():
    eff = combine(
        [
            Layer(Source.UTILITY, CS(connect=True, energize=True)),
            Layer(Source.INSTALLER, CS(export_limit_w=5000, connect=False), "installer isolation"),
            Layer(Source.AGGREGATOR, CS(target_w=3000), "HEMS"),
        ]
    )
    assert (eff.connect.value, eff.connect.source) == (False, Source.INSTALLER)
    assert (eff.energize.value, eff.energize.source) == (True, Source.UTILITY)
    assert eff.target_w.value == 0 and eff.target_w.requested == 3000
    assert eff.target_w.clipped_by == Source.INSTALLER


def test_local_emergency_outranks_everything():
    eff = combine(
        [
            Layer(Source.UTILITY, CS(export_limit_w=1500, connect=True), "DOE"),
            Layer(Source.LOCAL_EMERGENCY, CS(export_limit_w=0, connect=False), "DRM 0 contact"),
            Layer(Source.INSTALLER, CS(export_limit_w=0)),
        ]
    )
    assert eff.export_w.source == Source.LOCAL_EMERGENCY and eff.export_w.value == 0
    assert eff.connect.source == Source.LOCAL_EMERGENCY
    assert any("from LOCAL_EMERGENCY (DRM 0 contact)" in line for line in eff.explain())


def test_aggregator_setpoint_that_would_breach_the_doe_is_clipped():
    eff = combine(
        [
            Layer(Source.UTILITY, CS(export_limit_w=1500, import_limit_w=2000), "DOE d1"),
            Layer(Source.AGGREGATOR, CS(target_w=-9000), "market", export_target_w=5000),
            Layer(Source.INSTALLER, CS(export_limit_w=5000, load_limit_w=6000), "agreement"),
        ]
    )
    assert eff.export_target_w.requested == 5000
    assert (eff.export_target_w.value, eff.export_target_w.clipped_by) == (1500, Source.UTILITY)
    assert (eff.target_w.value, eff.target_w.clipped_by) == (-6000, Source.INSTALLER)  # charge <= load limit
    line = next(x for x in eff.explain() if x.startswith("export_target_w"))
    assert "requested 5000 W, clipped by UTILITY (DOE d1)" in line
    # the envelope is never widened by a setpoint
    assert eff.export_w.value == 1500


def test_export_target_never_below_minus_import_limit():
    eff = combine(
        [Layer(Source.UTILITY, CS(import_limit_w=2000)), Layer(Source.AGGREGATOR, export_target_w=-8000)]
    )
    assert eff.export_target_w.value == -2000


def test_customer_battery_reserve_is_honoured():
    layers = [
        Layer(Source.AGGREGATOR, CS(target_w=4000), "VPP dispatch"),
        Layer(Source.CUSTOMER, battery_reserve_pct=30, detail="backup reserve"),
        Layer(Source.INSTALLER, CS(export_limit_w=5000)),
    ]
    low = combine(layers, soc_pct=25)
    assert (low.target_w.value, low.target_w.clipped_by) == (0, Source.CUSTOMER)
    assert "battery reserve 30%" in low.target_w.clip_detail
    assert combine(layers, soc_pct=None).target_w.value == 0  # unknown SoC: keep the reserve
    high = combine(layers, soc_pct=80)
    assert high.target_w.value == 4000 and high.target_w.clipped_by is None
    charging = combine([*layers[1:], Layer(Source.AGGREGATOR, CS(target_w=-3000))], soc_pct=10)
    assert charging.target_w.value == -3000  # the reserve never stops charging


def test_highest_setpoint_source_wins_then_is_clipped():
    eff = combine(
        [
            Layer(Source.AGGREGATOR, CS(target_w=2500)),
            Layer(Source.UTILITY, CS(target_w=4000, generation_limit_w=3000), "emergency dispatch"),
        ]
    )
    assert eff.target_w.source == Source.UTILITY and eff.target_w.value == 3000


def test_reserve_combines_to_the_highest_minimum():
    eff = combine(
        [Layer(Source.CUSTOMER, battery_reserve_pct=20), Layer(Source.INSTALLER, battery_reserve_pct=10)]
    )
    assert (eff.battery_reserve_pct.value, eff.battery_reserve_pct.source) == (20, Source.CUSTOMER)


def test_nothing_set_means_unlimited_and_round_trips():
    from gateway.core.hierarchy import EffectiveLimits

    eff = combine([Layer(Source.AGGREGATOR, CS(fixed_w_pct=80, max_lim_w_pct=50, ramp_time_s=12.5))])
    assert eff.export_w.value is None and eff.fixed_w_pct.value == 50
    assert eff.ramp_time_s.value == 12.5
    assert EffectiveLimits.from_dict(eff.to_dict()) == eff
