"""CSIP-AUS v1.3 storage extension: ``opModStorageTargetW`` from the server to the simulated battery.

CSIP-AUS v1.3 (storage extension) defines ``csipaus:opModStorageTargetW`` in DERControlBase as "a target
aggregate output, in Watts, for one or more storage components within an EndDevice" (+ discharge,
- charge), and ``vppModesSupported`` / ``vppModesEnabled`` bit 0 to advertise it. The gateway carries it
through the control hierarchy as a battery setpoint, clipped into the site's envelope (generation limit,
load limit, battery reserve) and the battery's own constraints (ratings, SoC), and the control loop moves
the battery to it while the connection-point limits still hold.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gateway.client import mapping
from gateway.control_loop import BatteryState, MeterSample, PvState, SiteControlLoop, SiteLimits
from gateway.core.drm import drm_layer
from gateway.core.events import ControlSettings
from gateway.core.hierarchy import Layer, Source, combine
from sep2 import resources as r
from sep2.xml import from_xml, to_xml
from tests.official_xsd import official_errors
from tests.test_gateway_runtime_harness import Lab, Pki, make_lab, wait_until

pytest_plugins = ["tests.test_gateway_runtime_harness"]

UTILITY = "utility storage control"


def test_storage_target_is_parsed_from_der_control_base() -> None:
    base = r.DERControlBase(opModStorageTargetW=r.ActivePower(value=-25, multiplier=2))
    settings = mapping.control_settings(
        from_xml(to_xml(r.DefaultDERControl(mRID="0A" * 16, DERControlBase=base))).DERControlBase
    )
    assert settings.storage_target_w == -2500
    assert "storage_target_w" in settings.modes  # a mode of its own: supersession and defaults see it
    with pytest.raises(mapping.MappingError, match="opModStorageTargetW"):
        mapping.control_settings(
            r.DERControlBase(opModStorageTargetW=r.ActivePower(value=3, multiplier=None))
        )


def test_storage_target_clipped_by_generation_load_and_reserve_limits() -> None:
    def eff(target: float, soc: float = 50, **limits: float):
        layers = [
            Layer(Source.UTILITY, ControlSettings(storage_target_w=target, **limits), UTILITY),
            Layer(Source.CUSTOMER, battery_reserve_pct=30, detail="customer reserve"),
        ]
        return combine(layers, soc_pct=soc).storage_target_w

    assert eff(3000).value == 3000 and eff(3000).source is Source.UTILITY
    clipped = eff(3000, generation_limit_w=1000)
    assert clipped.value == 1000 and clipped.requested == 3000 and clipped.clipped_by is Source.UTILITY
    assert eff(-4000, load_limit_w=1500).value == -1500  # charging counts as load
    reserved = eff(3000, soc=30)
    assert reserved.value == 0 and "reserve" in reserved.clip_detail
    assert eff(-3000, soc=30).value == -3000  # charging is allowed at the reserve


def test_drm_outranks_a_utility_storage_target() -> None:
    """AS/NZS 4755 DRM 4 (increase consumption) is a local emergency: it beats the utility's target."""
    layers = [
        Layer(Source.UTILITY, ControlSettings(storage_target_w=3000), UTILITY),
        drm_layer(frozenset({4}), "DRED contacts"),
    ]
    limits = SiteLimits.from_effective(combine(layers), battery_rated_w=5000)
    assert limits.battery_target_w == -5000
    utility_only = combine(layers[:1])
    assert SiteLimits.from_effective(utility_only, battery_rated_w=5000).battery_target_w == 3000


def test_loop_moves_the_battery_to_the_target_within_ratings_and_the_import_limit() -> None:
    pv = PvState("pv", 5000, 0)
    bat = BatteryState("bat", 5000, 5000, output_w=0, soc_pct=60)
    load = 1000

    def step(limits: SiteLimits) -> float:
        meter = MeterSample(load - pv.output_w - bat.output_w, 0)
        return SiteControlLoop().step(0, limits, meter, [pv], [bat]).battery_w["bat"]

    assert step(SiteLimits(battery_target_w=2000)) == pytest.approx(2000)  # discharge, exports 1 kW
    assert step(SiteLimits(battery_target_w=-8000)) == pytest.approx(-5000)  # the battery's rating
    # Charging at -4 kW would import 5 kW; the 3 kW import limit wins (less the loop's 50 W margin).
    assert step(SiteLimits(battery_target_w=-4000, import_w=3000)) == pytest.approx(-(3000 - 50 - load))
    # Discharging 3 kW would export 2 kW; the 500 W export limit wins.
    assert step(SiteLimits(battery_target_w=3000, export_w=500)) == pytest.approx(load + 500 - 50)


def test_battery_documents_advertise_the_storage_target_and_pv_stays_v12() -> None:
    bat = mapping.DeviceSnapshot(
        device_id="b", der_type=mapping.DER_TYPE_STORAGE, rtg_max_w=5000, modes_supported=3,
        vpp_modes_supported=mapping.VPP_STORAGE_TARGET_W, rtg_max_wh=13500,
    )  # fmt: skip
    pv = mapping.DeviceSnapshot(
        device_id="p", der_type=mapping.DER_TYPE_PV, rtg_max_w=5000, modes_supported=4
    )
    for doc in (mapping.der_capability(bat), mapping.der_settings(bat, 1000)):
        assert (doc.vppModesSupported if isinstance(doc, r.DERCapability) else doc.vppModesEnabled) == "01"
        assert official_errors(to_xml(doc)) == []  # valid CSIP-AUS v1.3
    cap = to_xml(mapping.der_capability(pv))
    assert b"vppModes" not in cap and official_errors(cap) == []  # valid CSIP-AUS v1.2
    assert mapping.aggregate_device([bat, pv]).vpp_modes_supported == mapping.VPP_STORAGE_TARGET_W


async def test_storage_target_from_the_server_moves_the_simulated_battery(
    tmp_path: Path, gw_pki: Pki
) -> None:
    """The whole chain: a v1.3 control in the server's program -> 2030.5 over mutual TLS -> the gateway's
    hierarchy and loop -> SunSpec writes over Modbus TCP -> the simulated battery's output."""
    night = dict(pv_available_w=0.0, load_w=800.0, battery=True, family="der")
    async with make_lab(tmp_path, gw_pki, sim_kwargs=night) as lab:
        gw = await lab.gateway(installer_limits={"export_limit_w": 5000})
        assert gw.client is not None
        await gw.client.wait_ready(10)
        start = int(time.time())
        mrid = await lab.admin.create_control(
            "doe", lab.target, start=start, duration=300,
            base=r.DERControlBase(opModStorageTargetW=r.ActivePower.from_watts(-3000)),
        )  # fmt: skip
        # Charge at 3 kW: the site imports load + 3 kW.
        await wait_until(lambda: abs(lab.sim.battery_power_w() + 3000) <= 150, 10, "battery charging at 3 kW")
        target = gw.decision.limits.storage_target_w
        assert target.value == -3000 and target.source is Source.UTILITY and mrid in target.detail
        await wait_until(lambda: abs(float(lab.sim.meter_reading()["w"]) - 3800) <= 200, 5, "site import")

        # A discharge target above the export limit: the battery stops where the export limit is met.
        await lab.admin.cancel_control(mrid)
        base = r.DERControlBase(
            opModStorageTargetW=r.ActivePower.from_watts(4000), opModExpLimW=r.ActivePower.from_watts(1000)
        )
        await lab.admin.create_control("doe", lab.target, start=int(time.time()), duration=300, base=base)
        await wait_until(
            lambda: 1500 <= lab.sim.battery_power_w() <= 1900, 10, "battery discharging to the limit"
        )
        await wait_until(lambda: lab.export_w() <= 1000 + 100, 5, "export within its limit")
        assert lab.export_w() > 600, "the battery gives what the export limit leaves"
        # The site's DERCapability / DERSettings on the server advertise the v1.3 mode (VPPControlType bit 0).
        await wait_until(lambda: _advertised(lab), 10, "vppModesSupported at the server")


async def _advertised(lab: Lab) -> bool:
    docs = await lab.admin.site_der_documents(lab.lfdi)
    cap, settings = docs.get("dercap"), docs.get("derg")
    return cap is not None and cap.vppModesSupported == "01" and settings.vppModesEnabled == "01"


def test_storage_extension_can_be_turned_off_for_a_v12_server(tmp_path: Path, gw_pki: Pki) -> None:
    from gateway.config import ConfigError, settings_from_dict
    from tests.test_gateway_runtime import site_dict

    data = site_dict(gw_pki, tmp_path)
    assert settings_from_dict(data, tmp_path).server.storage_extension is True
    data["server"] = {**data["server"], "storage_extension": False}
    assert settings_from_dict(data, tmp_path).server.storage_extension is False
    data["server"]["storage_extension"] = "no"
    with pytest.raises(ConfigError, match=r"^server\.storage_extension"):
        settings_from_dict(data, tmp_path)
