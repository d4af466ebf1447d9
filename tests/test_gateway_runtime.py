"""Gateway runtime without a reachable server: site.toml checks, the local API (auth, bad input, durable
inputs across a restart), MQTT publishing against a real mosquitto broker, and the CLI's error paths."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest

from derlink.cli import main as derlink_main
from gateway.config import ConfigError, load_settings, settings_from_dict, to_toml
from gateway.core.hierarchy import EffectiveLimits, Limit, Setpoint, Source
from gateway.runtime import GatewayRuntime, alarm_status, dr_mode_status
from simulators.config import default_site_config
from simulators.site import SimulatedSite
from tests.test_gateway_runtime_harness import Pki, tolerance, wait_until

pytest_plugins = ["tests.test_gateway_runtime_harness"]
TOKEN = "0123456789abcdef0123"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def site_dict(pki: Pki, tmp: Path, devices: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    ident = pki.gateway
    return {
        "gateway": {"data_dir": str(tmp / "gw-data")},
        "server": {
            "dcap_url": f"https://127.0.0.1:{free_port()}/dcap",
            "backoff_initial_s": 0.1,
            "backoff_max_s": 0.5,
        },
        "tls": {"cert": str(ident.chain_path), "key": str(ident.key_path), "ca": str(pki.paths.ca_chain)},
        "device": devices
        or [
            {"name": "pv", "role": "pv", "port": 1502},
            {"name": "m", "role": "meter", "port": 1502, "unit": 3},
        ],
        "installer_limits": {"export_limit_w": 10000},
        "comms_loss": {"export_limit_w": 1500, "comms_timeout_s": 5, "persistent_loss_s": 60},
        "control_loop": {"period_s": 0.5},
        "local_api": {"token": TOKEN},
    }


# ------------------------------------------------------------------------------------------ site.toml


def test_settings_derive_lfdi_from_certificate_and_resolve_paths(gw_pki: Pki, tmp_path: Path) -> None:
    data = site_dict(gw_pki, tmp_path)
    data["gateway"]["data_dir"] = "relative-dir"
    settings = settings_from_dict(data, tmp_path)
    assert settings.lfdi == gw_pki.gateway.lfdi
    assert settings.data_dir == tmp_path / "relative-dir"
    assert (
        settings.fallback.comms_timeout_s == 5 and settings.fallback.comms_loss_limits.export_limit_w == 1500
    )
    assert [d.role for d in settings.devices] == ["pv", "meter"]
    path = tmp_path / "site.toml"
    path.write_text(to_toml(site_dict(gw_pki, tmp_path)))
    assert load_settings(path).installer_limits.export_limit_w == 10000


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda d: d["server"].pop("dcap_url"), "server.dcap_url: required"),
        (lambda d: d["server"].update(dcap_url="http://x/dcap"), "server.dcap_url: must be an https"),
        (lambda d: d["server"].update(mode="push"), "server.mode"),
        (lambda d: d["server"].update(pin=1234567), "server.pin"),
        (lambda d: d["server"].update(colour="red"), "server.colour: unknown setting"),
        (lambda d: d["tls"].update(key="/nonexistent.key"), "tls.key: file not found"),
        (lambda d: d["device"][0].update(role="windmill"), "device[0].role"),
        (lambda d: d["device"][1].update(port="502"), "device[1].port: expected an integer"),
        (lambda d: d["device"].pop(), 'exactly one device with role "meter"'),
        (lambda d: d["installer_limits"].pop("export_limit_w"), "installer_limits.export_limit_w"),
        (
            lambda d: d["installer_limits"].update(import_limit_w=-1),
            "installer_limits.import_limit_w: must be >=",
        ),
        (lambda d: d["comms_loss"].pop("export_limit_w"), "comms_loss: comms_loss_limits must set"),
        (lambda d: d["comms_loss"].update(comms_timeout_s=0), "comms_loss.comms_timeout_s"),
        (lambda d: d["server"].update(nmi="41023"), "server.nmi"),
        (lambda d: d["local_api"].update(host="0.0.0.0"), "local_api.host: must be a loopback"),
        (lambda d: d["local_api"].update(token="short"), "local_api.token"),
        (lambda d: d["control_loop"].update(period_s=0), "control_loop.period_s: must be > 0"),
        (lambda d: d["mqtt"].update(port=0) if "mqtt" in d else d.update(mqtt={"port": 0}), "mqtt.port"),
        (lambda d: d.update(extra={}), "extra: unknown setting"),
    ],
)
def test_settings_errors_name_the_field(gw_pki: Pki, tmp_path: Path, change: Any, field: str) -> None:
    data = site_dict(gw_pki, tmp_path)
    change(data)
    with pytest.raises(ConfigError) as info:
        settings_from_dict(data, tmp_path)
    assert field in str(info.value)


@pytest.mark.parametrize(
    ("fixed_w_pct", "status"),
    [
        (-0.01, 101), (-50, 102), (-75, 103), (-100, 104), (0, 105), (50, 106), (75, 107), (100, 108),
        (None, None),
    ],
)
def test_a_demand_response_instruction_is_reported_as_its_drm(fixed_w_pct: float | None, status: int) -> None:
    """DERStatus.operationalModeStatus 100 + the AS/NZS 4755 DRM an opModFixedW setpoint amounts to, as the
    CSIP-AUS demand response client procedures DRD-01 / DRG-01 / DRL-01 read it; disconnect or
    de-energise is DRM 0 (DRA-02)."""
    fixed = None if fixed_w_pct is None else Setpoint(fixed_w_pct, fixed_w_pct, Source.UTILITY, "DERControl")
    assert dr_mode_status(EffectiveLimits(fixed_w_pct=fixed)) == status
    assert dr_mode_status(EffectiveLimits(connect=Limit(False, Source.UTILITY), fixed_w_pct=fixed)) == 100
    assert dr_mode_status(EffectiveLimits(energize=Limit(False, Source.UTILITY))) == 100


def test_inverter_events_map_onto_the_2030_5_alarm_bits() -> None:
    """IEEE 2030.5 AlarmStatusType: 1 over voltage, 2 under voltage, 3 over frequency, 4 under frequency,
    from SunSpec Evt1 / Alrm AC_OVER_VOLT (10), AC_UNDER_VOLT (11), OVER_FREQUENCY (8), UNDER_FREQUENCY (9);
    no event is no alarm (alarmStatus 0, DRA-02), no event register is no alarmStatus."""
    assert alarm_status(0) == 0 and alarm_status(None) is None
    assert alarm_status(1 << 10 | 1 << 9 | 1 << 0) == 0b10010  # ground fault has no 2030.5 alarm bit
    assert alarm_status(1 << 11 | 1 << 8) == 0b01100


def test_load_settings_reports_bad_toml(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text("[server\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.toml")


# ------------------------------------------------------------------------------ an offline gateway


@pytest.fixture
async def site() -> AsyncIterator[SimulatedSite]:
    cfg = default_site_config(pv_available_w=5000.0, load_w=500.0, battery=False, response_delay_s=0.1,
                              ramp_time_s=0.0)  # fmt: skip
    async with SimulatedSite(cfg) as sim:
        yield sim


def devices_of(sim: SimulatedSite) -> list[dict[str, Any]]:
    return [{"name": e.name, "role": e.kind, "port": e.port, "unit": e.unit_id} for e in sim.endpoints]


async def request(
    gw: GatewayRuntime, method: str, path: str, body: Any = None, token: str | None = TOKEN
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method, f"http://127.0.0.1:{gw.local_api_port}{path}", json=body, headers=headers
        ) as reply,
    ):
        return reply.status, await reply.json()


async def test_never_contacted_gateway_applies_comms_loss_limits_and_local_api_is_guarded(
    gw_pki: Pki, tmp_path: Path, site: SimulatedSite
) -> None:
    settings = settings_from_dict(site_dict(gw_pki, tmp_path, devices_of(site)), tmp_path)
    gw = GatewayRuntime(settings)
    await gw.start()
    try:
        # No server ever reached: the installer's comms-loss limit, never "unlimited".
        assert gw.decision.regime.value == "COMMS_LOSS_LIMITS"
        await wait_until(lambda: -site.meter_reading()["w"] <= 1500 + tolerance(1500), 5, "export <= 1.5 kW")
        assert gw.startup["limits_applied_s"] < 2.0

        assert (await request(gw, "GET", "/status", token=None))[0] == 401
        assert (await request(gw, "GET", "/status", token="x" * 20))[0] == 401
        code, status = await request(gw, "GET", "/status")
        assert code == 200 and status["regime"] == "COMMS_LOSS_LIMITS"
        assert status["limits"]["export_w"]["value"] == 1500 and status["comms"]["comms_ok"] is False

        before = (await request(gw, "GET", "/explain"))[1]
        for method, path, body, field in [
            ("PUT", "/customer", {"battery_reserve_pct": 150}, "battery_reserve_pct"),
            ("PUT", "/customer", {"battery_reserve_pct": "high"}, "battery_reserve_pct"),
            ("PUT", "/customer", {"reserve": 10}, "reserve"),
            ("PUT", "/aggregator", {"export_target_w": 3000, "expires_in_s": -5}, "expires_in_s"),
            ("PUT", "/aggregator", {"export_limit_w": -1}, "export_limit_w"),
            ("PUT", "/aggregator", {}, "body"),
            ("POST", "/emergency", {"drm0": "yes"}, "drm0"),
            ("POST", "/emergency", {"drm0": True, "connect": True}, "connect"),
            ("POST", "/emergency", [1, 2], "body"),
        ]:
            code, reply = await request(gw, method, path, body)
            assert code == 400 and reply["field"] == field, (path, body, reply)
        assert (await request(gw, "GET", "/explain"))[1] == before, "a rejected input changed nothing"

        # Accepted inputs are persisted before the reply: a restart keeps them (and the limits).
        code, reply = await request(
            gw, "PUT", "/customer", {"battery_reserve_pct": 35, "export_limit_w": 900}
        )
        assert code == 200
        assert reply["limits"]["export_w"] == {
            "value": 900,
            "source": "CUSTOMER",
            "detail": "customer preferences",
        }
        await wait_until(lambda: -site.meter_reading()["w"] <= 900 + tolerance(900), 5, "export <= 900 W")
    finally:
        await gw.stop()
    again = GatewayRuntime(settings)
    await again.start()
    try:
        assert again.startup["restored"] is True
        assert again.controller.inputs.customer.battery_reserve_pct == 35
        assert again.decision.limits.export_w.value == 900
        assert again.decision.limits.export_w.source.name == "CUSTOMER"
    finally:
        await again.stop()


# ----------------------------------------------------------------------------------------- MQTT


@pytest.fixture
async def mosquitto(tmp_path: Path) -> AsyncIterator[int]:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = await asyncio.create_subprocess_exec(
        binary, "-c", str(conf), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.1):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("mosquitto did not start")
        yield port
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 5)


async def test_mqtt_publishes_state_and_changes_to_a_real_broker(
    gw_pki: Pki, tmp_path: Path, site: SimulatedSite, mosquitto: int
) -> None:
    data = site_dict(gw_pki, tmp_path, devices_of(site))
    data["mqtt"] = {"enabled": True, "port": mosquitto, "topic": "site/7", "interval_s": 30}
    gw = GatewayRuntime(settings_from_dict(data, tmp_path))
    async with aiomqtt.Client("127.0.0.1", mosquitto) as sub:
        await sub.subscribe("site/7/#", qos=1)
        await gw.start()
        try:
            messages = aiter(sub.messages)

            async def next_state(predicate: Any) -> dict[str, Any]:
                while True:
                    msg = await asyncio.wait_for(anext(messages), 10)
                    if str(msg.topic) == "site/7/state":
                        state = json.loads(msg.payload)
                        if predicate(state):
                            return state

            state = await next_state(lambda s: True)
            assert state["regime"] == "COMMS_LOSS_LIMITS" and state["lfdi"] == gw.settings.lfdi
            assert state["limits"]["export_w"] == {"value": 1500, "source": "UTILITY"}
            code, _ = await request(gw, "POST", "/emergency", {"export_limit_w": 0})
            assert code == 200
            state = await next_state(lambda s: s["limits"]["export_w"]["value"] == 0)
            assert state["limits"]["export_w"]["source"] == "LOCAL_EMERGENCY"
        finally:
            await gw.stop()


# ------------------------------------------------------------------------------------------ CLI


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = derlink_main(list(argv))
    return code, out.getvalue(), err.getvalue()


def test_cli_errors(gw_pki: Pki, tmp_path: Path) -> None:
    code, _, err = run_cli("gateway", "status")
    assert code == 2 and "--config" in err
    bad = tmp_path / "bad.toml"
    data = site_dict(gw_pki, tmp_path)
    data["server"]["mode"] = "push"
    bad.write_text(to_toml(data))
    code, _, err = run_cli("gateway", "--config", str(bad))
    assert code == 2 and "server.mode" in err
    good = tmp_path / "good.toml"
    good.write_text(to_toml(site_dict(gw_pki, tmp_path)))
    code, _, err = run_cli("gateway", "status", "--config", str(good))
    assert code == 3 and "no running gateway" in err
    code, _, err = run_cli(
        "gateway", "status", "--config", str(good), "--url", f"http://127.0.0.1:{free_port()}"
    )
    assert code == 3 and "cannot reach" in err
