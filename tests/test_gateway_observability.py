"""Gateway logs and metrics for a DOE and an outage (issue 16, "Logs and metrics").

A real server over mutual TLS sends a DOE; the gateway's log has one ``limits_applied`` line naming the
DERControl as the source, and its ``/metrics`` (Prometheus text, parsed with prometheus-client's own
parser) shows the effective export limit with its source and the metered flow. The test then cuts the
link: ``link_lost`` and ``regime_changed`` lines appear, the metrics show the link lost and the regime,
and both go back when the link returns.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.observability import JsonFormatter
from gateway.runtime import GatewayRuntime
from server.store import build_control_base
from tests.test_gateway_runtime_harness import Lab, wait_until

pytest_plugins = ["tests.test_gateway_runtime_harness"]


async def scrape(lab: Lab, gw: GatewayRuntime, token: str | None = None) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"http://127.0.0.1:{gw.local_api_port}/metrics",
            headers={"Authorization": f"Bearer {token or lab.token}"},
        ) as reply,
    ):
        text = await reply.text()
        if reply.status != 200:
            return reply.status, {}
        samples: dict[str, Any] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return 200, samples


def sample(samples: dict[str, Any], name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == name]


async def test_metrics_and_log_lines_for_a_doe_and_an_outage(
    lab: Lab, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="derlink.gateway")
    caplog.set_level(logging.INFO, logger="gateway")
    gw = await lab.gateway(server={"mode": "poll"}, comms_loss={"persistent_loss_s": 30})
    assert gw.client is not None
    await gw.client.wait_ready(10)
    await wait_until(lambda: events(caplog, "link_up"), 5, "first contact logged")
    code, _ = await scrape(lab, gw, token="x" * 32)
    assert code == 401  # the metrics are behind the local API's bearer token too

    doe = await lab.admin.create_control(
        "doe", lab.target, duration=600, base=build_control_base(export_limit_w=1500)
    )
    await wait_until(lambda: gw.decision.limits.export_w.value == 1500, 5, "DOE received")
    await wait_until(lambda: lab.export_w() <= 1600, 10, "export within the DOE")

    applied = [r for r in events(caplog, "limits_applied") if "export_w" in r.fields["limits"]]
    last = applied[-1]
    assert last.fields["limits"]["export_w"]["value"] == 1500
    assert last.fields["limits"]["export_w"]["source"] == "UTILITY"
    assert doe in last.getMessage() and "export_w=1500 from UTILITY" in last.getMessage()
    line = json.loads(JsonFormatter().format(last))  # the --log-format json line of the same event
    assert line["event"] == "limits_applied" and line["fields"]["limits"]["export_w"]["value"] == 1500
    assert line["level"] == "INFO" and line["ts"].endswith("Z")

    async def metrics() -> dict[str, Any]:
        code, samples = await scrape(lab, gw)
        assert code == 200
        return samples

    async def flow_within_doe() -> bool:  # the gateway's own meter reading lags the site by a period
        flow = sample(await metrics(), "derlink_gateway_site_power_watts")
        return flow is not None and -1600 <= flow <= 0

    await wait_until(flow_within_doe, 5, "metered flow within the DOE")
    m = await metrics()
    assert sample(m, "derlink_gateway_limit", limit="export_w", source="UTILITY") == 1500
    assert sample(m, "derlink_gateway_limit", limit="export_w", source="INSTALLER") is None
    assert sample(m, "derlink_gateway_link_lost") == 0
    assert sample(m, "derlink_gateway_regime", regime="NORMAL") == 1
    assert sample(m, "derlink_gateway_device_power_watts", device="pv", role="pv") > 0
    assert sample(m, "derlink_gateway_outbox_depth") >= 0
    assert sample(m, "derlink_gateway_device_faults") == 0

    # Outage: the link is declared lost after comms_timeout_s (2 s); the DOE keeps running (held).
    lab.proxy.cut()
    await wait_until(lambda: gw.decision.link_lost, 10, "link declared lost")
    lost = events(caplog, "link_lost")
    assert len(lost) == 1 and "lost" in lost[0].getMessage()
    regimes = [r.fields["regime"] for r in events(caplog, "regime_changed")]
    assert regimes[-1] == "HELD_SCHEDULE"
    m = await metrics()
    assert sample(m, "derlink_gateway_link_lost") == 1
    assert sample(m, "derlink_gateway_regime", regime="HELD_SCHEDULE") == 1
    assert sample(m, "derlink_gateway_regime", regime="NORMAL") == 0
    assert sample(m, "derlink_gateway_limit", limit="export_w", source="UTILITY") == 1500
    # telemetry waits in the outbox while the server is unreachable
    await wait_until(lambda: scrape_depth(lab, gw), 10, "telemetry queued in the outbox")

    lab.proxy.restore()
    await wait_until(lambda: not gw.decision.link_lost, 15, "link back")
    assert len(events(caplog, "link_back")) == 1
    assert events(caplog, "regime_changed")[-1].fields["regime"] == "NORMAL"
    m = await metrics()
    assert sample(m, "derlink_gateway_link_lost") == 0


async def scrape_depth(lab: Lab, gw: GatewayRuntime) -> bool:
    _, samples = await scrape(lab, gw)
    return (sample(samples, "derlink_gateway_outbox_depth") or 0) > 0
