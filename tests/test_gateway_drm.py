"""AS/NZS 4755 DRM inputs end to end: a simulated DRED behind a Modbus TCP digital I/O module.

A live utility DOE (export 3 kW) runs on the server; the test asserts each DRM 0..8 on the DRED in turn
and checks, for each, the gateway's effective limits (source LOCAL_EMERGENCY, the detail naming the
DRM and the DRED input) and what the simulated devices were made to do over SunSpec Modbus. DRM 0
disconnects the site although the DOE allows export. The DRED's input read failure keeps the last
modes (gateway/README-drm.md).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.config import ConfigError, settings_from_dict
from gateway.runtime import GatewayRuntime
from server.store import build_control_base
from simulators.dred import SimulatedDred
from tests.test_gateway_runtime import site_dict
from tests.test_gateway_runtime_harness import Lab, Pki, make_lab, tolerance, wait_until

pytest_plugins = ["tests.test_gateway_runtime_harness"]

DOE_EXPORT = 3000.0
SURPLUS = dict(pv_available_w=5000.0, load_w=500.0, battery=True, family="der")


@pytest.fixture
async def dred() -> AsyncIterator[SimulatedDred]:
    device = SimulatedDred(unit=7)
    await device.start()
    yield device
    await device.stop()


def unit(lab: Lab, name: str) -> Any:
    lab.sim.advance()
    return lab.sim.physics.units[name]


async def test_each_drm_through_the_simulated_dred_with_a_live_doe(
    tmp_path: Path, gw_pki: Pki, dred: SimulatedDred
) -> None:
    async with make_lab(tmp_path, gw_pki, sim_kwargs=SURPLUS) as lab:
        drm = {"source": "modbus", "host": dred.host, "port": dred.port, "unit": 7, "poll_s": 0.2}
        gw = await lab.gateway(drm=drm)
        assert gw.client is not None
        await gw.client.wait_ready(10)
        await lab.admin.create_control(
            "doe", lab.target, duration=900, base=build_control_base(export_limit_w=DOE_EXPORT)
        )
        await wait_until(lambda: gw.decision.limits.export_w.value == DOE_EXPORT, 5, "DOE received")
        # no DRM: the battery soaks up the surplus (self-consumption) and the DOE holds the export
        await wait_until(lambda: lab.sim.battery_power_w() < -3000, 10, "battery charging from the surplus")

        def limit(name: str) -> Any:
            return getattr(gw.decision.limits, name)

        def value(name: str) -> Any:
            item = limit(name)
            return item.value if item is not None else None

        async def assert_mode(mode: int, name: str, expected: Any) -> None:
            dred.set_modes({mode})
            await wait_until(lambda: value(name) == expected, 5, f"DRM {mode}: {name} = {expected}")
            item = limit(name)
            assert item.source.name == "LOCAL_EMERGENCY"
            assert item.detail.startswith(f"DRM {mode} (") and "DRED on Modbus" in item.detail
            assert limit("export_w").value == DOE_EXPORT  # the DOE still binds underneath

        # DRM 0 beats the live DOE: the inverters are disconnected over Modbus
        await assert_mode(0, "connect", False)
        await wait_until(lambda: not unit(lab, "pv").connected, 10, "DRM 0: PV disconnected")
        await wait_until(lambda: lab.sim.inverter_output_w("pv") <= 50, 10, "DRM 0: PV output 0")
        await wait_until(lambda: abs(lab.sim.battery_power_w()) <= 50, 10, "DRM 0: battery idle")
        status = await gw.status()
        assert any("connect: false from LOCAL_EMERGENCY (DRM 0" in line for line in status["explain"])

        # DRM 1-3: consumption caps on battery charging (% of its 5 kW rating)
        for mode, cap_pct in ((1, 0.0), (2, 50.0), (3, 75.0)):
            await assert_mode(mode, "consumption_pct", cap_pct)
            floor = -5000.0 * cap_pct / 100.0
            await wait_until(lambda: unit(lab, "pv").connected, 10, "reconnected after DRM 0")
            await wait_until(
                lambda f=floor: f - 100 <= lab.sim.battery_power_w() <= f + 100,
                15, f"DRM {mode}: battery charges at its cap",
            )  # fmt: skip
            await wait_until(lambda: lab.export_w() <= DOE_EXPORT + tolerance(DOE_EXPORT), 10, "DOE kept")

        # DRM 4: increase consumption -> charge at the full rating, importing if it must
        await assert_mode(4, "fixed_w_pct", -100.0)
        await wait_until(lambda: lab.sim.battery_power_w() <= -4800, 15, "DRM 4: battery charging at 5 kW")

        # DRM 5: do not generate -> PV limited to 0 %, no discharge
        await assert_mode(5, "generation_w", 0.0)
        await wait_until(lambda: unit(lab, "pv").limit_pct <= 0.5, 10, "DRM 5: PV WMaxLimPct 0 written")
        await wait_until(lambda: lab.sim.inverter_output_w("pv") <= 50, 10, "DRM 5: PV output 0")
        assert lab.sim.battery_power_w() <= 50

        # DRM 6/7: each generating device at most 50 / 75 % of its rating
        for mode, pct in ((6, 50.0), (7, 75.0)):
            await assert_mode(mode, "max_w_pct", pct)
            await wait_until(
                lambda p=pct: unit(lab, "pv").limit_pct <= p + 0.5, 10, f"DRM {mode}: PV limit <= {pct}%"
            )
            await wait_until(
                lambda p=pct: lab.sim.inverter_output_w("pv") <= 5000 * p / 100 + 100, 10, "PV follows"
            )

        # DRM 8: increase generation -> the battery stops absorbing the surplus; the DOE still binds
        await assert_mode(8, "fixed_w_pct", 100.0)
        await wait_until(lambda: lab.sim.battery_power_w() >= -100, 15, "DRM 8: battery not charging")
        await wait_until(lambda: lab.export_w() <= DOE_EXPORT + tolerance(DOE_EXPORT), 10, "DOE kept")
        await wait_until(  # generating up to the envelope once the battery has stopped absorbing
            lambda: DOE_EXPORT - 600 <= lab.export_w() <= DOE_EXPORT + tolerance(DOE_EXPORT),
            10,
            "DRM 8: export up to the DOE, within it",
        )

        # a DRED the gateway cannot read: the last modes stay asserted (and it is a Modbus error)
        await dred.stop()
        await wait_until(lambda: gw.drm_error is not None, 5, "DRED read failure noticed")
        assert gw.controller.inputs.drm_modes == {8}
        dred.set_modes(set())
        await dred.start()  # same port again
        await wait_until(lambda: gw.drm_error is None, 5, "DRED readable again")
        await wait_until(lambda: value("fixed_w_pct") is None, 5, "no DRM: no DRM setpoint")
        assert gw.runner.modbus_errors["drm"] >= 1
        # the local API cannot override the DRED
        async with (
            aiohttp.ClientSession() as session,
            session.put(
                f"http://127.0.0.1:{gw.local_api_port}/drm", json={"modes": [0]},
                headers={"Authorization": f"Bearer {lab.token}"},
            ) as reply,
        ):  # fmt: skip
            assert reply.status == 409 and (await reply.json())["field"] == "drm.source"


async def api(lab: Lab, gw: GatewayRuntime, method: str, body: Any = None) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method, f"http://127.0.0.1:{gw.local_api_port}/drm", json=body,
            headers={"Authorization": f"Bearer {lab.token}"},
        ) as reply,
    ):  # fmt: skip
        return reply.status, await reply.json()


async def test_local_api_drm_source_and_gpio_value_files(tmp_path: Path, gw_pki: Pki) -> None:
    async with make_lab(tmp_path, gw_pki) as lab:
        gw = await lab.gateway(drm={"source": "local_api"})
        for bad in ({"modes": [9]}, {"modes": "0"}, {"mode": [0]}):
            code, body = await api(lab, gw, "PUT", bad)
            assert code == 400 and body["field"] in ("modes", "mode"), body
        assert gw.controller.inputs.drm_modes == frozenset()
        code, body = await api(lab, gw, "PUT", {"modes": [5]})
        assert code == 200 and body["limits"]["generation_w"]["value"] == 0
        detail = body["limits"]["generation_w"]["detail"]
        assert "DRM 5" in detail and "local API" in detail
        await wait_until(lambda: lab.sim.inverter_output_w("pv") <= 50, 10, "PV stops generating")
        code, body = await api(lab, gw, "DELETE")
        assert code == 200 and body["limits"]["generation_w"]["value"] is None
        await gw.stop()
        lab.runtimes.remove(gw)

        # GPIO through sysfs-style value files (a real sysfs value file is one "0"/"1" line)
        files = []
        for mode in range(9):
            f = tmp_path / f"gpio{mode}" / "value"
            f.parent.mkdir()
            f.write_text("1\n" if mode == 6 else "0\n")  # active low: every line but DRM 6 asserted
            files.append(str(f))
        gpio = {"source": "gpio", "value_files": files, "active_low": True, "poll_s": 0.1}
        gw = await lab.gateway(drm=gpio)
        assert gw.controller.inputs.drm_modes == frozenset(set(range(9)) - {6})
        assert gw.decision.limits.connect.value is False  # DRM 0 among them
        release(files)
        await wait_until(lambda: not gw.controller.inputs.drm_modes, 5, "every GPIO line released")
        assert gw.decision.limits.connect.value is None


def release(files: list[str]) -> None:
    for f in files:
        Path(f).write_text("1\n")


@pytest.mark.parametrize(
    ("drm", "field"),
    [
        ({"source": "serial"}, "drm.source"),
        ({"source": "modbus"}, "drm.host"),
        ({"source": "modbus", "host": "127.0.0.1", "table": "holding"}, "drm.table"),
        ({"source": "gpio", "gpio_pins": [1, 2, 3]}, "drm.gpio_pins"),
        ({"source": "gpio", "gpio_pins": [1] * 8 + ["x"]}, "drm.gpio_pins[8]"),
        ({"source": "gpio"}, "drm.gpio_pins"),
        ({"source": "local_api", "poll_s": 0}, "drm.poll_s"),
        ({"source": "local_api", "pins": 1}, "drm.pins"),
    ],
)
def test_drm_config_errors_name_the_field(tmp_path: Path, gw_pki: Pki, drm: dict, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        settings_from_dict({**site_dict(gw_pki, tmp_path), "drm": drm}, tmp_path)
    assert str(err.value).startswith(field + ":"), str(err.value)


def test_drm_config_reads_modbus_and_gpio_pins(tmp_path: Path, gw_pki: Pki) -> None:
    s = settings_from_dict({**site_dict(gw_pki, tmp_path), "drm": {"source": "modbus", "host": "10.0.0.9",
                            "table": "coils", "address": 100}}, tmp_path)  # fmt: skip
    assert (s.drm.host, s.drm.port, s.drm.table, s.drm.address) == ("10.0.0.9", 502, "coils", 100)
    s = settings_from_dict(
        {**site_dict(gw_pki, tmp_path), "drm": {"source": "gpio", "gpio_pins": list(range(20, 29))}}, tmp_path
    )
    assert s.drm.value_files[0] == Path("/sys/class/gpio/gpio20/value") and len(s.drm.value_files) == 9
    assert settings_from_dict(site_dict(gw_pki, tmp_path), tmp_path).drm.source is None  # no [drm]: none
