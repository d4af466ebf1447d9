"""Comms loss end to end: the test cuts the TCP proxy between gateway and server.

The site follows the held schedule, then the DefaultDERControl, then the installer's comms-loss limit
(short configured periods: link declared lost after 2 s of silence, persistent after 8 s more). When the
link returns, the telemetry and Responses queued during the outage are delivered: nothing is lost.
"""

from __future__ import annotations

import itertools
import time

from server.store import build_control_base
from tests.test_gateway_runtime_harness import Lab, tolerance, wait_until

pytest_plugins = ["tests.test_gateway_runtime_harness"]


async def test_outage_held_schedule_then_default_then_comms_loss_limits_then_recovery(lab: Lab) -> None:
    await lab.admin.set_default_control("default", lab.target, base=build_control_base(export_limit_w=3000))
    gw = await lab.gateway(server={"mode": "poll"}, comms_loss={"persistent_loss_s": 8})
    assert gw.client is not None
    await gw.client.wait_ready(10)
    start = int(time.time())
    doe = await lab.admin.create_control(
        "doe", lab.target, start=start, duration=9, base=build_control_base(export_limit_w=1000)
    )
    await wait_until(lambda: gw.decision.limits.export_w.value == 1000, 5, "DOE picked up by polling")
    await wait_until(lambda: lab.export_w() <= 1000 + tolerance(1000), 5, "export within the DOE")
    await wait_until(lambda: gw.client.status.post_rate == 2, 5, "postRate from the server")

    lab.proxy.cut()
    cut_at = time.time()
    seen: list[tuple[str, float | None]] = []  # (regime, export limit) transitions during the outage
    checked: dict[str, bool] = {}

    def sample() -> None:
        d = gw.decision
        item = (d.regime.value, d.limits.export_w.value)
        if not seen or seen[-1] != item:
            seen.append(item)

    async def phase(regime: str, limit: float, within: float) -> None:
        def reached() -> bool:
            sample()
            return gw.decision.regime.value == regime

        await wait_until(reached, within, f"regime {regime}")
        assert gw.decision.limits.export_w.value == limit
        # the metered site follows each phase's limit
        await wait_until(
            lambda: (sample(), lab.export_w() <= limit + tolerance(limit))[1], 4, f"export <= {limit} W"
        )
        checked[regime] = True

    await phase("HELD_SCHEDULE", 1000, 6)  # link lost, the DOE still runs from the held schedule
    assert gw.decision.link_lost
    await phase("DEFAULT", 3000, 12)  # the DOE ended during the outage: the default applies
    await wait_until(lambda: lab.export_w() > 2500, 4, "the default lets the site export up to 3 kW")
    await phase("COMMS_LOSS_LIMITS", 1500, 12)  # persistent loss: installer comms-loss limit
    assert "comms-loss" in gw.decision.limits.export_w.detail
    regimes = [r for r, _ in seen]
    assert regimes.index("HELD_SCHEDULE") < regimes.index("DEFAULT") < regimes.index("COMMS_LOSS_LIMITS")
    assert all(limit is not None for _, limit in seen), "never unlimited during the outage"

    pending_during = await gw.client.outbox.pending()
    assert pending_during >= 3, "telemetry and the DOE's completed Response wait in the outbox"
    restored_at = time.time()
    lab.proxy.restore()
    await wait_until(lambda: gw.decision.regime.value == "NORMAL", 10, "recovery to NORMAL")
    assert gw.decision.limits.export_w.value == 3000  # the default again, from a live link
    await wait_until(lambda: _drained(gw), 15, "outbox drained")
    assert await gw.client.outbox.rejected() == 0

    # Responses: received, started and completed (the last one produced during the outage).
    rows = await lab.admin.responses_for_control(doe)
    assert {row["status"] for row in rows} >= {1, 2, 3}
    completed = next(row for row in rows if row["status"] == 3)
    assert cut_at - 1 <= completed["created_time"] <= restored_at + 1
    assert completed["received_at"] >= restored_at - 1

    # Telemetry: the site's power readings cover the outage at the postRate (2 s), none missing.
    readings = await lab.admin.site_readings(lab.lfdi, since=int(cut_at))
    site_w = sorted(
        r["time_start"]
        for r in readings
        if r["reading_type"].uom == 38
        and r["reading_type"].flowDirection == 1
        and r["time_start"] < restored_at
    )
    expected = int((restored_at - cut_at) / 2) - 1
    assert len(site_w) >= expected, (len(site_w), expected)
    gaps = [b - a for a, b in itertools.pairwise(site_w)]
    assert max(gaps) <= 3, f"telemetry gap during the outage: {gaps}"
    assert set(checked) == {"HELD_SCHEDULE", "DEFAULT", "COMMS_LOSS_LIMITS"}


async def _drained(gw) -> bool:
    return await gw.client.outbox.pending() == 0
