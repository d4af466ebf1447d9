"""pysunspec2's own Modbus client scans every simulated device type in both model families."""

from __future__ import annotations

import pytest

from simulators.config import DeviceConfig, ProfileConfig, SiteConfig
from simulators.devices import model_chain
from simulators.site import SimulatedSite
from tests.sim_helpers import scan

CONST_PV = ProfileConfig(kind="constant", peak_w=4000.0)
LOAD = ProfileConfig(kind="constant", peak_w=1000.0)

INVERTER_CASES = [
    ("pv", "legacy", "single", (1, 101, 120, 121, 122, 123)),
    ("pv", "legacy", "split", (1, 102, 120, 121, 122, 123)),
    ("pv", "legacy", "wye", (1, 103, 120, 121, 122, 123)),
    ("pv", "der", "single", (1, 701, 702, 703, 704, 705)),
    ("pv", "der", "wye", (1, 701, 702, 703, 704, 705)),
    ("battery", "legacy", "single", (1, 101, 120, 121, 122, 123, 124)),
    ("battery", "legacy", "wye", (1, 103, 120, 121, 122, 123, 124)),
    ("battery", "der", "single", (1, 701, 702, 703, 704, 713, 714, 802)),
]


def _models(dev) -> dict[int, object]:
    return {mid: ms[0] for mid, ms in dev.models.items() if isinstance(mid, int)}


@pytest.mark.parametrize(("kind", "family", "wiring", "chain"), INVERTER_CASES)
async def test_pysunspec2_scans_inverters(
    kind: str, family: str, wiring: str, chain: tuple[int, ...]
) -> None:
    unit = DeviceConfig(
        name="unit",
        kind=kind,
        family=family,
        wiring=wiring,
        unit_id=7,
        rated_w=5000.0,
        pv_profile=CONST_PV,
        initial_soc_pct=62.5,
    )
    devices = [unit]
    if kind == "battery":  # give the battery something to do: PV surplus to soak up
        devices.append(DeviceConfig(name="pv", kind="pv", unit_id=1, pv_profile=CONST_PV))
    cfg = SiteConfig(name="scan", load=LOAD, devices=devices, speed=1.0)
    assert model_chain(unit) == chain
    async with SimulatedSite(cfg) as site:
        dev = await scan(site.endpoint("unit"))
        try:
            assert dev.base_addr == 40000
            models = _models(dev)
            assert tuple(models) == chain  # the whole chain, in order, up to the end model
            for mid, model in models.items():
                assert model.error_info == "", (mid, model.error_info)
            common = models[1]
            assert common.Mn.cvalue == "derlink"
            assert common.SN.cvalue == "scan-unit"
            state = site.physics.units["unit"]
            expected_w = state.output_w
            if family == "legacy":
                inv = models[chain[1]]
                assert inv.W.cvalue == pytest.approx(expected_w, abs=2)
                assert inv.Hz.cvalue == pytest.approx(50.0)
                assert models[120].WRtg.cvalue == 5000
                assert models[123].WMaxLimPct.cvalue == 100.0
                assert models[123].WMaxLim_Ena.cvalue == 0
                assert models[123].Conn.cvalue == 1
                assert models[123].WMaxLimPct_RmpTms.cvalue == 10
                if kind == "pv":
                    assert inv.W.cvalue == pytest.approx(4000, abs=1)  # min(available, rated)
                    assert inv.St.cvalue == 4  # MPPT
                    assert models[120].DERTyp.cvalue == 4
                else:
                    assert inv.W.cvalue == pytest.approx(-3000, abs=2)  # soaking up the 3 kW surplus
                    assert models[120].DERTyp.cvalue == 82
                    assert models[124].ChaState.cvalue == pytest.approx(62.5, abs=0.1)
                    assert models[124].ChaSt.cvalue == 4  # CHARGING
                    assert models[124].WChaMax.cvalue == 5000
                phases = {"single": 1, "split": 2, "wye": 3}[wiring]
                currents = [getattr(inv, f"Aph{p}").cvalue for p in "ABC"[:phases]]
                assert sum(currents) == pytest.approx(abs(expected_w) / 230.0, rel=0.02)
            else:
                m701 = models[701]
                assert m701.W.cvalue == pytest.approx(expected_w, abs=2)
                assert m701.ACType.cvalue == (2 if wiring == "wye" else 0)
                assert m701.Hz.cvalue == pytest.approx(50.0)
                assert m701.ConnSt.cvalue == 1
                assert models[702].WMaxRtg.cvalue == 5000
                assert models[703].ES.cvalue == 1
                assert models[704].WMaxLimPct.cvalue == 100.0
                assert models[704].WMaxLimPctEna.cvalue == 0
                if kind == "pv":
                    assert m701.W.cvalue == pytest.approx(4000, abs=1)
                    crv = models[705].Crv[0]
                    assert [pt.V.cvalue for pt in crv.Pt] == [90.0, 95.7, 104.3, 112.2]
                else:
                    assert m701.W.cvalue == pytest.approx(-3000, abs=2)
                    assert models[713].SoC.cvalue == pytest.approx(62.5, abs=0.1)
                    assert models[713].WHRtg.cvalue == 13500
                    assert models[802].SoC.cvalue == pytest.approx(62.5, abs=0.1)
                    assert models[802].ChaSt.cvalue == 4
                    assert models[714].Prt[0].PrtTyp.cvalue == 1  # ESS port
        finally:
            dev.close()


@pytest.mark.parametrize(
    ("wiring", "model_id"), [("single", 201), ("split", 202), ("wye", 203), ("delta", 204)]
)
async def test_pysunspec2_scans_meters(wiring: str, model_id: int) -> None:
    split = (
        (1.0, 0.0, 0.0) if wiring == "single" else (0.5, 0.5, 0.0) if wiring == "split" else (0.5, 0.3, 0.2)
    )
    cfg = SiteConfig(
        name="m",
        load=ProfileConfig(kind="constant", peak_w=1000.0),
        load_phase_split=split,
        devices=[
            DeviceConfig(
                name="pv",
                kind="pv",
                unit_id=1,
                wiring="wye" if wiring in ("wye", "delta") else "single",
                pv_profile=CONST_PV,
            ),
            DeviceConfig(name="meter", kind="meter", wiring=wiring, unit_id=240),
        ],
    )
    async with SimulatedSite(cfg) as site:
        dev = await scan(site.endpoint("meter"))
        try:
            models = _models(dev)
            assert tuple(models) == (1, model_id)
            meter = models[model_id]
            assert meter.error_info == ""
            reading = site.meter_reading()
            # 1 kW load, 4 kW PV: 3 kW export, reported negative (import-positive convention)
            assert reading["w"] == pytest.approx(-3000, abs=1)
            assert meter.W.cvalue == pytest.approx(-3000, abs=1)
            assert meter.Hz.cvalue == pytest.approx(50.0)
            assert meter.TotWhImp.cvalue >= 100000 and meter.TotWhExp.cvalue >= 100000
            if wiring != "single":
                phases = 2 if wiring == "split" else 3
                per_phase = [getattr(meter, f"Wph{p}").cvalue for p in "ABC"[:phases]]
                assert per_phase == pytest.approx(reading["w_phase"][:phases], abs=1)
                assert sum(per_phase) == pytest.approx(meter.W.cvalue, abs=phases)
                # export raises the local voltage, import lowers it
                volts = [getattr(meter, f"PhVph{p}").cvalue for p in "ABC"[:phases]]
                assert volts == pytest.approx(reading["v_phase"][:phases], abs=0.1)
                assert all((v > 230.0) == (w < 0) for v, w in zip(volts, per_phase, strict=True))
        finally:
            dev.close()
