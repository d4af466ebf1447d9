"""End to end: our server (real mutual TLS) -> gateway runtime -> simulated site (real Modbus TCP).

A DOE created on the server brings the metered export within the limit (tolerance max(2 %, 100 W)) within
5 s of the control's start; an emergency command beats the DOE; cancelling restores the previous state;
the gateway's Responses arrive at the server.
"""

from __future__ import annotations

import time

from server.store import build_control_base
from tests.test_gateway_runtime_harness import Lab, tolerance, wait_until

pytest_plugins = ["tests.test_gateway_runtime_harness"]


async def statuses(lab: Lab, mrid: str) -> set[int]:
    return {row["status"] for row in await lab.admin.responses_for_control(mrid)}


async def test_doe_then_emergency_then_cancels_with_responses(lab: Lab) -> None:
    gw = await lab.gateway()
    assert gw.client is not None
    await gw.client.wait_ready(10)
    # Uncontrolled: PV 5000 W, load 500 W, installer limit 10 kW -> ~4.5 kW export.
    await wait_until(lambda: lab.export_w() > 4000, 5, "uncontrolled export")
    assert gw.decision is not None and gw.decision.regime.value == "NORMAL"

    start = int(time.time()) + 2
    doe = await lab.admin.create_control(
        "doe", lab.target, start=start, duration=300, base=build_control_base(export_limit_w=1500)
    )
    # Not applied before its start...
    await wait_until(lambda: time.time() >= start - 0.3, 5)
    assert lab.export_w() > 4000, "the DOE must not act before its start time"
    # ...and within 5 s of it.
    met = await wait_until(lambda: lab.export_w() <= 1500 + tolerance(1500), 8, "export within the DOE")
    assert met - start <= 5.0, f"export within limit {met - start:.2f} s after the control's start"
    limits = gw.decision.limits
    assert limits.export_w.value == 1500 and limits.export_w.source.name == "UTILITY"
    assert doe in limits.export_w.detail
    # The loop holds it (the site does not run far below the limit either: PV is only curtailed to it).
    await wait_until(lambda: 1200 <= lab.export_w() <= 1600, 5, "export settled at the DOE")

    # An emergency command (primacy 1) beats the DOE.
    emergency = await lab.admin.create_control(
        "emergency", lab.target, duration=300, base=build_control_base(export_limit_w=0)
    )
    t0 = time.time()
    met = await wait_until(lambda: lab.export_w() <= tolerance(0), 8, "export within the emergency limit")
    assert met - t0 <= 5.0
    assert gw.decision.limits.export_w.value == 0 and emergency in gw.decision.limits.export_w.detail

    # Cancelling the emergency restores the DOE...
    await lab.admin.cancel_control(emergency)
    await wait_until(lambda: 1200 <= lab.export_w() <= 1600, 8, "export back at the DOE")
    assert doe in gw.decision.limits.export_w.detail
    # ...and cancelling the DOE restores the uncontrolled site (installer limit only).
    await lab.admin.cancel_control(doe)
    await wait_until(lambda: lab.export_w() > 4000, 8, "export back to uncontrolled")
    assert gw.decision.limits.export_w.source.name == "INSTALLER"

    # Responses (responseRequired 03): received, started, cancelled — for both controls, at the server.
    for mrid in (doe, emergency):
        await wait_until(lambda m=mrid: _has(lab, m, {1, 2, 6}), 10, f"Responses for {mrid}")


async def _has(lab: Lab, mrid: str, wanted: set[int]) -> bool:
    return wanted <= await statuses(lab, mrid)
