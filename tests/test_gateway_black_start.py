"""Black start end to end: the simulator drops and restores the grid (meter at 0 V, inverters trip and
reconnect after their AS/NZS 4777.2 delay); the gateway sees it on the meter, holds the site at zero
export until its randomised release, and a gateway restarted during the hold keeps holding until the
same moment (seed 000 GS09, L569)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import replace
from pathlib import Path

from gateway.core import Source
from tests.test_gateway_runtime_harness import Pki, make_lab, tolerance, wait_until

pytest_plugins = ["tests.test_gateway_runtime_harness"]


async def test_zero_export_hold_after_the_grid_returns_and_across_a_restart(
    tmp_path: Path, gw_pki: Pki
) -> None:
    async with make_lab(tmp_path, gw_pki, sim_kwargs={"pv_available_w": 5000.0, "load_w": 800.0}) as lab:
        pv = lab.sim.physics.units["pv"]
        pv.params = replace(pv.params, grid_reconnect_s=0.5, reconnect_ramp_s=1.0)  # fast 4777.2 reconnect
        hold = {"delay_min_s": 4, "window_s": 3}
        gw = await lab.gateway(black_start=hold)
        assert gw.client is not None
        await gw.client.wait_ready(10)
        await wait_until(lambda: lab.export_w() > 3000, 10, "exporting before the outage")

        lab.sim.set_grid(False)
        await wait_until(lambda: not gw.controller.grid.grid_up, 5, "grid loss seen on the meter")
        await wait_until(lambda: gw.decision.limits.export_w.value == 0, 5, "hold from grid loss")
        assert gw.decision.limits.export_w.source == Source.INSTALLER
        assert lab.sim.inverter_output_w("pv") == 0 and lab.sim.meter_reading()["v_phase"][0] == 0

        lab.sim.set_grid(True)
        await wait_until(lambda: gw.controller.grid.grid_up, 5, "grid back seen on the meter")
        until = gw.controller.grid.hold_until
        restored = gw.controller.grid.restored_at
        assert until is not None and restored + 4 <= until <= restored + 7
        assert "black-start hold: grid back" in gw.decision.limits.export_w.detail
        # the inverter reconnects on its own after 0.5 s; the gateway keeps the site at zero export
        worst = -1e9
        while time.time() < until - 0.3:
            worst = max(worst, lab.export_w())
            await asyncio.sleep(0.05)
        assert worst <= tolerance(0), f"exported {worst:.0f} W during the hold"
        assert lab.sim.inverter_output_w("pv") > 300  # generating for the load meanwhile
        await wait_until(lambda: gw.decision.limits.export_w.value == 10000, 5, "released")
        assert time.time() >= until - 1
        await wait_until(lambda: lab.export_w() > 3000, 10, "exporting again after the release")

        # a second outage; the gateway restarts during the hold and resumes it until the same moment
        lab.sim.set_grid(False)
        await wait_until(lambda: not gw.controller.grid.grid_up, 5, "second grid loss")
        lab.sim.set_grid(True)
        await wait_until(lambda: gw.controller.grid.grid_up, 5, "grid back again")
        until = gw.controller.grid.hold_until
        await gw.stop()
        lab.runtimes.remove(gw)
        gw = await lab.gateway(black_start=hold)
        assert gw.controller.grid.hold_until == until
        assert gw.decision.limits.export_w.value == 0  # from the state file, before any network
        assert "black-start hold" in gw.decision.limits.export_w.detail
        while time.time() < until - 0.3:
            assert lab.export_w() <= tolerance(0)
            await asyncio.sleep(0.05)
        await wait_until(lambda: lab.export_w() > 3000, 10, "released after the restart")


async def test_cold_start_after_a_black_system_holds_from_boot(tmp_path: Path, gw_pki: Pki, caplog) -> None:
    """The gateway was dark with the site (seed 000 GS09, L421): its last persisted heartbeat is older than
    cold_start_after_s, so the boot itself is the grid's return and generation is held back from boot."""
    async with make_lab(tmp_path, gw_pki, sim_kwargs={"pv_available_w": 5000.0, "load_w": 800.0}) as lab:
        hold = {"delay_min_s": 4, "window_s": 3, "cold_start_after_s": 120}
        gw = await lab.gateway(black_start=hold)
        await gw.client.wait_ready(10)
        await wait_until(lambda: lab.export_w() > 3000, 10, "exporting before the black system")
        state_path = gw.settings.state_path
        await gw.stop()
        lab.runtimes.remove(gw)
        state = json.loads(state_path.read_text())
        assert abs(state["alive_at"] - time.time()) < 5, "the heartbeat is persisted"
        # A short restart does not hold...
        gw = await lab.gateway(black_start=hold)
        assert gw.controller.grid.hold_until is None
        assert "black-start" not in gw.decision.limits.export_w.detail
        await gw.stop()
        lab.runtimes.remove(gw)
        # ...a boot 20 minutes after the last heartbeat does (the power was off that long).
        state = json.loads(state_path.read_text())
        state["alive_at"] = int(time.time()) - 1200
        state_path.write_text(json.dumps(state))
        caplog.set_level(logging.WARNING, logger="derlink.gateway.runtime")
        gw = await lab.gateway(black_start=hold)
        until = gw.controller.grid.hold_until
        assert until is not None and time.time() + 2 <= until <= time.time() + 8
        assert gw.decision.limits.export_w.value == 0 and "cold start" in gw.decision.limits.export_w.detail
        assert any("cold start: no heartbeat since" in r.getMessage() for r in caplog.records)
        await wait_until(lambda: lab.export_w() <= tolerance(0), 5, "zero export during the hold")
        while time.time() < until - 0.3:
            assert lab.export_w() <= tolerance(0)
            await asyncio.sleep(0.05)
        await wait_until(lambda: lab.export_w() > 3000, 10, "released after the randomised delay")
