"""The pure site-control loop: unit tests and hypothesis properties over an ideal plant."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.control_loop import (
    BatteryState,
    LoopConfig,
    MeterSample,
    PvState,
    SiteControlLoop,
    SiteLimits,
)
from gateway.core.events import ControlSettings
from gateway.core.hierarchy import Layer, Source, combine

PV = PvState("pv", rated_w=5000, output_w=5000)
BAT_FULL = BatteryState("bat", 5000, 5000, output_w=0, soc_pct=100)


def meter(load: float, pvs: list[PvState], bats: list[BatteryState], t: float) -> MeterSample:
    """A truthful meter: + import."""
    return MeterSample(load - sum(p.output_w for p in pvs) - sum(b.output_w for b in bats), t)


def test_export_limit_curtails_pv_when_battery_is_full() -> None:
    loop = SiteControlLoop()
    sp = loop.step(0, SiteLimits(export_w=1500), meter(1000, [PV], [BAT_FULL], 0), [PV], [BAT_FULL])
    assert sp.mode == "normal"
    assert sp.pv_limit_w["pv"] == pytest.approx(1000 + 1500 - 50)  # load + limit - margin
    assert sp.pv_limit_pct["pv"] == pytest.approx(49.0)
    assert sp.battery_w["bat"] == 0
    assert sp.predicted_grid_w == pytest.approx(-1450)


def test_battery_takes_surplus_first() -> None:
    bat = BatteryState("bat", 5000, 5000, output_w=0, soc_pct=50)
    sp = SiteControlLoop().step(0, SiteLimits(export_w=500), meter(1000, [PV], [bat], 0), [PV], [bat])
    assert sp.battery_w["bat"] == pytest.approx(-4000)  # self-consumption: all the surplus
    # PV is not counted on the charge that has not started yet: limited to load + allowance for now
    assert sp.pv_limit_w["pv"] == pytest.approx(1000 + 450)
    charging = BatteryState("bat", 5000, 5000, output_w=-4000, soc_pct=50)
    loop = SiteControlLoop()
    sp = loop.step(0, SiteLimits(export_w=500), meter(1000, [PV], [charging], 0), [PV], [charging])
    assert sp.pv_limit_w["pv"] == pytest.approx(5000)  # the charge is real now: no curtailment


def test_import_limit_reduces_charging() -> None:
    pv0 = PvState("pv", 5000, 0)
    bat = BatteryState("bat", 5000, 5000, output_w=-5000, soc_pct=30)
    limits = SiteLimits(import_w=5000, battery_target_w=-5000)
    sp = SiteControlLoop().step(0, limits, meter(3000, [pv0], [bat], 0), [pv0], [bat])
    assert sp.battery_w["bat"] == pytest.approx(-(5000 - 50 - 3000))
    assert sp.predicted_grid_w == pytest.approx(4950)


def test_generation_load_limits_and_reserve() -> None:
    bat = BatteryState("bat", 5000, 5000, output_w=0, soc_pct=20)
    pv0 = PvState("pv", 5000, 0)
    # reserve 25 % > SoC 20 %: no discharge even though load is unmet
    sp = SiteControlLoop().step(
        0, SiteLimits(battery_reserve_pct=25), meter(2000, [pv0], [bat], 0), [pv0], [bat]
    )
    assert sp.battery_w["bat"] == 0
    # generation limit caps PV + discharge
    sp = SiteControlLoop().step(
        0, SiteLimits(generation_w=2000), meter(4000, [PV], [BAT_FULL], 0), [PV], [BAT_FULL]
    )
    assert sp.pv_limit_w["pv"] == pytest.approx(2000)
    # load limit caps gross load = household + charging
    sp = SiteControlLoop().step(
        0, SiteLimits(load_w=1500, battery_target_w=-5000), meter(1000, [pv0], [bat], 0), [pv0], [bat]
    )
    assert sp.battery_w["bat"] == pytest.approx(-500)


def test_disconnect() -> None:
    sp = SiteControlLoop().step(0, SiteLimits(connect=False), meter(0, [PV], [BAT_FULL], 0), [PV], [BAT_FULL])
    assert (sp.connect, sp.mode, sp.pv_limit_pct["pv"], sp.battery_w["bat"]) == (False, "disconnected", 0, 0)


def test_missing_and_stale_meter_hold_safe_setpoint() -> None:
    loop = SiteControlLoop(LoopConfig(max_meter_age_s=3))
    bat = BatteryState("bat", 5000, 5000, output_w=-2000, soc_pct=50)
    sp = loop.step(10, SiteLimits(export_w=1500, generation_w=1000), None, [PV], [bat])
    assert sp.mode == "meter_fault" and sp.faults == ("meter: no reading",)
    assert sp.pv_limit_w["pv"] == 1000 and sp.battery_w["bat"] == 0
    sp = loop.step(10, SiteLimits(export_w=1500), MeterSample(-100, 6.5), [PV], [bat])
    assert sp.mode == "meter_fault" and "3.5 s old" in sp.faults[0]
    assert sp.pv_limit_w["pv"] == pytest.approx(1450)  # export <= limit even with zero load
    sp = loop.step(10, SiteLimits(export_w=1500), MeterSample(-100, 8), [PV], [bat])
    assert sp.mode == "normal"


def test_frozen_meter_detected_when_devices_move_but_meter_does_not() -> None:
    loop = SiteControlLoop(LoopConfig(frozen_after_s=3, frozen_delta_w=200))
    limits = SiteLimits(export_w=3000)
    pv = PvState("pv", 5000, 4000)
    assert loop.step(0, limits, MeterSample(-3000, 0), [pv], []).mode == "normal"
    # steady: the same value while nothing moves is fine
    assert loop.step(5, limits, MeterSample(-3000, 5), [pv], []).mode == "normal"
    moved = PvState("pv", 5000, 2000)
    assert loop.step(6, limits, MeterSample(-3000, 6), [moved], []).mode == "normal"  # not yet 3 s
    sp = loop.step(9, limits, MeterSample(-3000, 9), [moved], [])
    assert sp.mode == "meter_fault" and "frozen" in sp.faults[0]
    assert loop.step(10, limits, MeterSample(-3000, 10), [moved], []).mode == "meter_fault"  # latched
    assert loop.step(11, limits, MeterSample(-1000, 11), [moved], []).mode == "normal"  # moves again


def test_ramp_rate_limits_setpoint_changes() -> None:
    loop = SiteControlLoop()
    limits = SiteLimits(export_w=0, set_grad_w=1000)  # 10 % of rated per second
    sp = loop.step(0, limits, meter(0, [PV], [BAT_FULL], 0), [PV], [BAT_FULL])
    assert sp.pv_limit_w["pv"] == pytest.approx(4500)  # from 5000 W output, 500 W/s
    sp = loop.step(2, limits, meter(0, [PV], [BAT_FULL], 2), [PV], [BAT_FULL])
    assert sp.pv_limit_w["pv"] == pytest.approx(3500)
    slow = SiteLimits(export_w=0, ramp_time_s=50)  # full scale in 50 s: 100 W/s
    sp = loop.step(3, slow, meter(0, [PV], [BAT_FULL], 3), [PV], [BAT_FULL])
    assert sp.pv_limit_w["pv"] == pytest.approx(3400)


def test_stuck_inverter_reported_after_settle_time() -> None:
    loop = SiteControlLoop(LoopConfig(settle_s=5))
    limits = SiteLimits(export_w=1000)
    for t in range(8):
        sp = loop.step(t, limits, meter(500, [PV], [], t), [PV], [])
        stuck = [f for f in sp.faults if "not following" in f]
        assert bool(stuck) == (t >= 6), (t, sp.faults)  # command from t=0 in force from t=1
    assert sp.pv_limit_w["pv"] == pytest.approx(1450)  # the command stays what the site needs
    assert "pv: output 5000 W above its commanded limit 1450 W" in stuck[0]


def test_bad_limits_rejected_naming_the_field() -> None:
    with pytest.raises(ValueError, match="export_w must be >= 0"):
        SiteControlLoop().step(0, SiteLimits(export_w=-1), None, [], [])
    with pytest.raises(ValueError, match=r"LoopConfig\.period_s"):
        LoopConfig(period_s=0)


def test_from_effective_limits() -> None:
    eff = combine(
        [
            Layer(Source.UTILITY, ControlSettings(export_limit_w=1500, set_grad_w=500, energize=True)),
            Layer(Source.CUSTOMER, battery_reserve_pct=20),
            Layer(Source.AGGREGATOR, ControlSettings(target_w=-3000)),
        ]
    )
    lim = SiteLimits.from_effective(eff)
    assert (lim.export_w, lim.set_grad_w, lim.battery_reserve_pct, lim.battery_target_w) == (
        1500,
        500,
        20,
        -3000,
    )
    assert lim.connect is True
    off = SiteLimits.from_effective(combine([Layer(Source.LOCAL_EMERGENCY, ControlSettings(connect=False))]))
    assert off.connect is False


# ------------------------------------------------------------------------------------------ properties
opt_w = st.one_of(st.none(), st.floats(0, 12000))


@st.composite
def scenarios(draw):
    n_pv = draw(st.integers(1, 3))
    pvs = [
        (draw(st.floats(1000, 10000)), draw(st.floats(0, 1)))  # rating, available fraction
        for _ in range(n_pv)
    ]
    bats = [
        (draw(st.floats(1000, 6000)), draw(st.floats(1000, 6000)), draw(st.floats(0, 100)))
        for _ in range(draw(st.integers(0, 2)))
    ]
    limits = SiteLimits(
        export_w=draw(opt_w),
        import_w=draw(opt_w),
        generation_w=draw(opt_w),
        load_w=draw(opt_w),
        max_w_pct=draw(st.one_of(st.none(), st.floats(0, 100))),
        battery_reserve_pct=draw(st.one_of(st.none(), st.floats(0, 100))),
        battery_target_w=draw(st.one_of(st.none(), st.floats(-8000, 8000))),
    )
    load = draw(st.floats(0, 15000))
    return pvs, bats, limits, load


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_property_commands_never_ask_for_export_above_limit_nor_exceed_ratings(scenario) -> None:
    """Ideal plant, truthful meter: every step's commands keep export <= limit and stay within ratings;
    after the plant settles the metered export is within the limit."""
    pv_specs, bat_specs, limits, load = scenario
    loop = SiteControlLoop()
    pv_out = [rated * avail for rated, avail in pv_specs]  # start uncurtailed
    bat_out = [0.0 for _ in bat_specs]
    for t in range(8):
        pvs = [PvState(f"pv{i}", r, pv_out[i]) for i, (r, _) in enumerate(pv_specs)]
        bats = [BatteryState(f"b{i}", c, d, bat_out[i], soc) for i, (c, d, soc) in enumerate(bat_specs)]
        grid = load - sum(pv_out) - sum(bat_out)
        sp = loop.step(float(t), limits, MeterSample(grid, float(t)), pvs, bats)
        assert sp.mode == "normal"
        for i, (rated, _) in enumerate(pv_specs):
            w = sp.pv_limit_w[f"pv{i}"]
            assert -1e-6 <= w <= rated + 1e-6
            if limits.max_w_pct is not None:
                assert w <= rated * limits.max_w_pct / 100 + 1e-6
        b_total = 0.0
        for i, (cha, dis, soc) in enumerate(bat_specs):
            b = sp.battery_w[f"b{i}"]
            assert -cha - 1e-6 <= b <= dis + 1e-6
            if limits.battery_reserve_pct is not None and soc <= limits.battery_reserve_pct:
                assert b <= 1e-6
            b_total += b
        if limits.export_w is not None:
            worst_export = sum(sp.pv_limit_w.values()) + b_total - load
            assert worst_export <= limits.export_w + 1e-6
        if limits.generation_w is not None:
            assert sum(sp.pv_limit_w.values()) + max(b_total, 0) <= limits.generation_w + 1e-6
        # ideal plant: PV gives min(available, limit); batteries follow (SoC does not move in 8 s)
        pv_out = [min(r * a, sp.pv_limit_w[f"pv{i}"]) for i, (r, a) in enumerate(pv_specs)]
        bat_out = [sp.battery_w[f"b{i}"] for i in range(len(bat_specs))]
    if limits.export_w is not None:
        export = sum(pv_out) + sum(bat_out) - load
        assert export <= limits.export_w + max(0.02 * limits.export_w, 100)
