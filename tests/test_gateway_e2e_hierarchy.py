"""Control hierarchy end to end, each step explained by `derlink gateway status`.

* an aggregator setpoint that would breach the DNSP's DOE is clipped to it (and the site follows it);
* the local emergency input (DRM 0) outranks everything: the site disconnects although the server's DOE
  and the aggregator still ask for export;
* a customer's battery reserve is honoured: at night the battery stops covering the load at the reserve.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from pathlib import Path
from typing import Any

import aiohttp

from derlink.cli import main as derlink_main
from gateway.runtime import GatewayRuntime
from server.store import build_control_base
from tests.test_gateway_runtime_harness import Lab, Pki, make_lab, wait_until

pytest_plugins = ["tests.test_gateway_runtime_harness"]


async def api(lab: Lab, gw: GatewayRuntime, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method,
            f"http://127.0.0.1:{gw.local_api_port}{path}",
            json=body,
            headers={"Authorization": f"Bearer {lab.token}"},
        ) as reply,
    ):
        return reply.status, await reply.json()


async def cli(config: Path, *extra: str) -> tuple[int, str]:
    """Run `derlink gateway status --config ...` (in a thread: the CLI blocks on its HTTP request)."""

    def run() -> tuple[int, str]:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = derlink_main(["gateway", "status", "--config", str(config), *extra])
        return code, out.getvalue()

    return await asyncio.to_thread(run)


async def status_json(config: Path) -> dict[str, Any]:
    code, out = await cli(config, "--json")
    assert code == 0, out
    return json.loads(out)


async def test_aggregator_clipped_by_doe_and_local_emergency_outranks_everything(lab: Lab) -> None:
    config = lab.write_site_toml()
    gw = await lab.gateway()
    assert gw.client is not None
    await gw.client.wait_ready(10)
    doe = await lab.admin.create_control(
        "doe", lab.target, duration=600, base=build_control_base(export_limit_w=1500)
    )
    await wait_until(lambda: gw.decision.limits.export_w.value == 1500, 5, "DOE received")

    # The aggregator wants 3 kW of export: clipped into the DOE, and the site follows the clipped value
    # (without a setpoint the battery would soak up the surplus and export ~0).
    code, body = await api(lab, gw, "PUT", "/aggregator", {"export_target_w": 3000, "detail": "VPP bid 42"})
    assert code == 200, body
    target = body["limits"]["export_target_w"]
    assert target["requested"] == 3000 and target["value"] == 1500
    assert (
        target["source"] == "AGGREGATOR"
        and target["clipped_by"] == "UTILITY"
        and doe in target["clip_detail"]
    )
    await wait_until(lambda: 1300 <= lab.export_w() <= 1600, 10, "export at the clipped setpoint")

    status = await status_json(config)
    assert status["limits"]["export_target_w"]["clipped_by"] == "UTILITY"
    assert status["limits"]["export_w"] == {
        "value": 1500,
        "source": "UTILITY",
        "detail": status["limits"]["export_w"]["detail"],
    }
    assert doe in status["limits"]["export_w"]["detail"]
    code, table = await cli(config)
    assert code == 0
    assert "clipped by UTILITY" in table and "VPP bid 42" in table and "NORMAL" in table

    # DRM 0 on the local emergency input: disconnect, whatever the DOE and the aggregator say.
    code, body = await api(lab, gw, "POST", "/emergency", {"drm0": True})
    assert code == 200, body
    await wait_until(lambda: lab.sim.inverter_output_w("pv") <= 50, 10, "PV disconnected")
    await wait_until(lambda: lab.export_w() <= 100, 10, "no export while disconnected")
    status = await status_json(config)
    assert status["limits"]["connect"]["value"] is False
    assert status["limits"]["connect"]["source"] == "LOCAL_EMERGENCY"
    assert "DRM 0" in status["limits"]["connect"]["detail"]
    assert status["limits"]["export_target_w"]["value"] == 0
    assert status["limits"]["export_target_w"]["clipped_by"] == "LOCAL_EMERGENCY"
    code, table = await cli(config)
    assert "LOCAL_EMERGENCY" in table

    # Lifting it restores the previous state.
    code, body = await api(lab, gw, "DELETE", "/emergency")
    assert code == 200 and body["limits"]["connect"]["value"] is None
    await wait_until(lambda: 1300 <= lab.export_w() <= 1600, 15, "export back at the clipped setpoint")


async def test_customer_battery_reserve_is_honoured_at_night(tmp_path: Path, gw_pki: Pki) -> None:
    night = dict(pv_available_w=0.0, load_w=1500.0, battery=True, family="der")
    async with make_lab(tmp_path, gw_pki, sim_kwargs=night) as lab:
        config = lab.write_site_toml()
        gw = await lab.gateway()
        # Self-consumption: the battery (SoC 50 %) covers the load.
        await wait_until(lambda: lab.sim.battery_power_w() > 1200, 10, "battery covering the load")
        assert -lab.export_w() < 300  # import

        code, body = await api(lab, gw, "PUT", "/customer", {"battery_reserve_pct": 60})
        assert code == 200, body
        assert body["limits"]["battery_reserve_pct"]["value"] == 60
        assert body["limits"]["battery_reserve_pct"]["source"] == "CUSTOMER"
        await wait_until(lambda: lab.sim.battery_power_w() <= 50, 10, "battery stops discharging")
        await wait_until(lambda: -lab.export_w() >= 1400, 5, "the load comes from the grid")
        await asyncio.sleep(1.5)  # and it stays so
        assert lab.sim.battery_power_w() <= 50
        status = await status_json(config)
        assert status["limits"]["battery_reserve_pct"]["source"] == "CUSTOMER"
        code, table = await cli(config)
        assert "battery_reserve_pct" in table and "CUSTOMER" in table

        # The reserve, not something else, stopped it: below the SoC the battery discharges again.
        code, body = await api(lab, gw, "PUT", "/customer", {"battery_reserve_pct": 20})
        assert code == 200
        await wait_until(lambda: lab.sim.battery_power_w() > 1200, 10, "battery covering the load again")
