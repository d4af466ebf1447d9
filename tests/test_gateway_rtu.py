"""Modbus RTU: the simulated devices on one serial line (a linked pseudo-terminal pair, real RTU framing
through pyserial and pymodbus on both ends), the gateway's device layer sharing that line, and the whole
gateway meeting a DOE with devices configured by ``serial_port``."""

from __future__ import annotations

import asyncio
import json
import time
import tomllib

import pytest

from certs.pki import issue_device_certificate
from gateway.commissioning import run_commissioning
from gateway.config import ConfigError, GatewaySettings
from gateway.devices import DeviceConnection, DeviceUnreachable
from gateway.devices.device import SerialLine
from server.store import build_control_base
from simulators.config import default_site_config
from simulators.serial_link import PtyLink
from simulators.site import SimulatedSite
from tests.test_commissioning_harness import Bench, RecordingUI
from tests.test_gateway_runtime_harness import Lab, tolerance, wait_until

pytest_plugins = ["tests.test_gateway_runtime_harness", "tests.test_commissioning_harness"]

BAUD = 19200


async def test_three_devices_share_one_rtu_line() -> None:
    link = PtyLink().start()
    site = SimulatedSite(default_site_config(pv_available_w=4000, load_w=500))
    await site.start()
    await site.serve_rtu(link.device_end, BAUD)
    line = SerialLine(link.gateway_end, BAUD)
    names = ("pv", "battery", "meter")
    devices = [await DeviceConnection.open("", 0, site.endpoint(n).unit_id, line, timeout=1.0) for n in names]
    try:
        # all three at once: the line's lock keeps one request on the wire, so no answer lands on the
        # wrong request (RTU frames carry no transaction id)
        infos = await asyncio.gather(*(d.scan() for d in devices))
        assert [i.kind for i in infos] == ["pv", "battery", "meter"]
        assert all(d.where.startswith(link.gateway_end) for d in devices)
        for _ in range(3):
            pv, battery, meter = await asyncio.gather(*(d.read_measurements() for d in devices))
            assert pv.w == pytest.approx(site.inverter_output_w("pv"), abs=5)
            assert battery.soc_pct is not None and meter.w is not None
        await devices[0].set_active_power_limit_pct(25, ramp_s=0)  # written, then read back over RTU
        for _ in range(50):  # the inverter acts on it after its response delay
            if site.status()["devices"][0].get("limit_pct") == pytest.approx(25):
                break
            await asyncio.sleep(0.1)
        assert site.status()["devices"][0]["limit_pct"] == pytest.approx(25)
        # another line setting for a port already open is refused, not silently mixed
        with pytest.raises(ValueError, match="already open"):
            DeviceConnection("", 0, 9, SerialLine(link.gateway_end, 9600))
    finally:
        for d in devices:
            await d.close()
        await site.stop()
        link.close()


async def test_a_missing_serial_port_is_named() -> None:
    with pytest.raises(DeviceUnreachable, match=r"/dev/ttyDERLINK404 unit 3.*serial port"):
        await DeviceConnection.open("", 0, 3, SerialLine("/dev/ttyDERLINK404"), timeout=0.5)


async def test_gateway_meets_a_doe_with_its_devices_on_rtu(lab: Lab) -> None:
    link = PtyLink().start()
    try:
        await lab.sim.serve_rtu(link.device_end, BAUD)
        # no host or port anywhere: every request of this gateway goes over the serial line
        devices = [
            {"name": ep.name, "role": ep.kind, "serial_port": link.gateway_end, "baudrate": BAUD,
             "unit": ep.unit_id}
            for ep in lab.sim.endpoints
        ]  # fmt: skip
        gw = await lab.gateway(device=devices)
        assert gw.client is not None
        await gw.client.wait_ready(10)
        await wait_until(lambda: lab.export_w() > 4000, 5, "uncontrolled export")
        start = int(time.time()) + 1
        await lab.admin.create_control(
            "doe", lab.target, start=start, duration=300, base=build_control_base(export_limit_w=1500)
        )
        met = await wait_until(lambda: lab.export_w() <= 1500 + tolerance(1500), 8, "export within the DOE")
        assert met - start <= 5.0, f"export within limit {met - start:.2f} s after the control's start"
    finally:
        for runtime in lab.runtimes:
            await runtime.stop()
        lab.runtimes.clear()
        link.close()


async def test_serial_device_settings_are_checked_naming_the_field(lab: Lab) -> None:
    def settings(**device: object) -> GatewaySettings:
        meter = {"name": "meter", "role": "meter", "serial_port": "/dev/ttyUSB0", "unit": 3, **device}
        pv = {"name": "pv", "role": "pv", "host": "127.0.0.1", "port": 502}
        return lab.settings(device=[pv, meter])

    good = settings(baudrate=19200, parity="e", stopbits=2)
    meter = next(d for d in good.devices if d.role == "meter")
    assert meter.address == ("", 0, 3, SerialLine("/dev/ttyUSB0", 19200, "E", 2))
    pv_rtu = {"name": "pv", "role": "pv", "serial_port": "/dev/ttyUSB0", "unit": 1}
    meter_rtu = {"name": "meter", "role": "meter", "serial_port": "/dev/ttyUSB0", "unit": 3}
    with pytest.raises(ConfigError, match=r"device\[1\]\.baudrate: 19200 differs from device\[0\]"):
        lab.settings(device=[pv_rtu, {**meter_rtu, "baudrate": 19200}])
    with pytest.raises(ConfigError, match=r"device\[1\]\.unit: 1 is already used on /dev/ttyUSB0"):
        lab.settings(device=[pv_rtu, {**meter_rtu, "unit": 1}])
    for device, field in (
        ({"port": 502}, "device[1].port"),
        ({"host": "10.0.0.1"}, "device[1].host"),
        ({"baudrate": 12345}, "device[1].baudrate"),
        ({"parity": "X"}, "device[1].parity"),
        ({"stopbits": 3}, "device[1].stopbits"),
        ({"unit": 0}, "device[1].unit"),
        ({"serial_port": ""}, "device[1].serial_port"),
        ({"flow": "rts"}, "device[1].flow"),
    ):
        with pytest.raises(ConfigError, match=field.replace("[", r"\[").replace("]", r"\]")):
            settings(**device)


async def test_commissioning_scans_an_rtu_line_and_writes_serial_devices(bench: Bench) -> None:
    link = PtyLink().start()
    try:
        await bench.sim.serve_rtu(link.device_end, BAUD)
        ident = issue_device_certificate(bench.pki.directory, "gw-rtu")
        await bench.register_site(ident.lfdi)
        ui = RecordingUI()
        opts = bench.options(
            cert=ident.chain_path,
            key=ident.key_path,
            sign_with_ca=None,
            scan=[f"rtu:{link.gateway_end}@{BAUD}"],
        )
        outcome = await run_commissioning(opts, ui)
        assert outcome.ok, (outcome.message, outcome.next_action, ui.text)
        line = f"rtu:{link.gateway_end}@{BAUD}-8N1"
        report = json.loads((opts.work_dir / "report.json").read_text())
        assert sorted(d["role"] for d in report["devices"]) == ["battery", "meter", "pv"]
        assert f"{line}:1" in ui.text  # found devices listed by their line and unit ID
        devices = tomllib.loads(opts.site_toml_path.read_text())["device"]
        assert all(d["serial_port"] == link.gateway_end and d["baudrate"] == BAUD for d in devices)
        assert not any("host" in d or "port" in d for d in devices)
        # verification ran over the line: the PV obeyed the test limit and the gateway's telemetry arrived
        verification = report["verification"]
        assert verification["passed"] is True and verification["local"]["inverter"]["obeyed"]
        assert verification["server"]["telemetry"]["readings"]
    finally:
        link.close()
