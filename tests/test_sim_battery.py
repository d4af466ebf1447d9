"""Battery state of charge integrates correctly through an hour of charge and an hour of discharge."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulators.config import default_site_config, with_devices
from simulators.physics import BatteryParams, InverterParams, Profile, SitePhysics
from simulators.site import SimClock, SimulatedSite
from tests.sim_helpers import scan, write_points

CAPACITY = 13500.0
ETA = 0.95


def _expected_soc(start_pct: float, charge_w: float, discharge_w: float) -> tuple[float, float]:
    after_charge = start_pct + 100.0 * charge_w * ETA / CAPACITY  # 1 h
    after_discharge = after_charge - 100.0 * discharge_w / ETA / CAPACITY  # 1 h
    return after_charge, after_discharge


@pytest.mark.parametrize("family", ["legacy", "der"])
async def test_soc_over_an_hour_of_charge_and_discharge(family: str) -> None:
    # no PV, no load: the battery only moves when commanded
    cfg = with_devices(
        default_site_config(pv_available_w=0.0, load_w=0.0, battery_capacity_wh=CAPACITY), family=family
    )
    clock = SimClock(speed=1.0, start=1_700_000_000.0)
    async with SimulatedSite(cfg, clock=clock) as site:
        dev = await scan(site.endpoint("battery"))
        try:
            soc0 = site.battery_soc()
            assert soc0 == pytest.approx(50.0, abs=0.01)
            exp_charged, exp_discharged = _expected_soc(soc0, 2000.0, 3000.0)
            # forced charge at 2 kW
            if family == "legacy":  # discharge limit at -40 % of max discharge = charge 2 kW
                await write_points(dev, 124, {"OutWRte": -40.0, "StorCtl_Mod": 2})
            else:
                await write_points(dev, 704, {"WSetMod": 1, "WSet": -2000, "WSetEna": 1})
            clock.jump(1.0)  # response delay (nothing moves: no load, no PV)
            assert site.battery_power_w() == pytest.approx(-2000.0)
            assert site.meter_reading()["w"] == pytest.approx(2000.0)  # charging from the grid = import
            clock.jump(3600.0)
            soc_charged = site.battery_soc()
            assert soc_charged == pytest.approx(exp_charged, rel=0.01)
            assert abs(soc_charged - exp_charged) <= 0.01 * (exp_charged - soc0)
            # forced discharge at 3 kW
            if family == "legacy":  # charge limit at -60 % of WChaMax = discharge 3 kW
                await write_points(dev, 124, {"InWRte": -60.0, "StorCtl_Mod": 1})
            else:
                await write_points(dev, 704, {"WSet": 3000})
            clock.jump(1.0)
            assert site.battery_power_w() == pytest.approx(3000.0)
            assert site.meter_reading()["w"] == pytest.approx(-3000.0)  # export
            clock.jump(3600.0)
            soc_end = site.battery_soc()
            assert abs(soc_end - exp_discharged) <= 0.01 * (exp_charged - exp_discharged)
            # and the SoC a client reads over Modbus matches
            point = "124.ChaState" if family == "legacy" else "713.SoC"
            model_id, name = int(point.split(".")[0]), point.split(".")[1]

            def _read() -> float:
                model = dev.models[model_id][0]
                model.read()
                return model.points[name].cvalue

            import asyncio

            assert await asyncio.to_thread(_read) == pytest.approx(soc_end, abs=0.06)
            # the meter's energy counters saw the same hour of import and export
            m = site.meter_reading()
            assert m["import_wh"] == pytest.approx(2000.0, rel=0.01)
            assert m["export_wh"] == pytest.approx(3000.0, rel=0.01)
        finally:
            dev.close()


def _physics(soc_pct: float) -> SitePhysics:
    ph = SitePhysics(t=0.0, load=Profile.constant(0.0))
    ph.add_battery(
        "b",
        InverterParams(rated_w=5000.0, response_delay_s=0.0),
        BatteryParams(capacity_wh=10000.0, max_charge_w=5000.0, max_discharge_w=5000.0, min_soc_pct=10.0),
        soc_pct,
    )
    return ph


@settings(max_examples=40, deadline=None)
@given(
    soc=st.floats(10.0, 100.0),
    steps=st.lists(st.tuples(st.floats(-8000, 8000), st.floats(1.0, 1200.0)), min_size=1, max_size=6),
)
def test_soc_never_leaves_its_bounds_and_energy_balances(
    soc: float, steps: list[tuple[float, float]]
) -> None:
    """Whatever setpoints arrive, SoC stays within [min_soc, 100] and stored energy matches AC flow."""
    ph = _physics(soc)
    unit = ph.units["b"]
    start_wh = unit.soc_wh
    t = 0.0
    for setpoint, duration in steps:
        ph.command(t, "b", "battery_window", window=(setpoint, setpoint))
        t += duration
        ph.advance(t)
        assert 10.0 - 1e-6 <= unit.soc_pct <= 100.0 + 1e-6
        assert -5000.0 - 1e-6 <= unit.output_w <= 5000.0 + 1e-6
    stored = unit.soc_wh - start_wh
    expected = unit.energy_in_wh * 0.95 - unit.energy_out_wh / 0.95
    assert stored == pytest.approx(expected, abs=0.5)
