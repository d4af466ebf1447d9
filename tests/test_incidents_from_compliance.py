"""Incidents raised automatically from a compliance assessment (issue 18; seed 002's workflow fed by the
server's own findings), over the real head-end HTTP API on loopback, with the webhook delivered to a real
receiver and its HMAC checked. One open incident per site and kind: a second run notes, never duplicates."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from server.config import ConfigError, ServerConfig, config_from_mapping
from server.headend.api import create_headend_app
from server.store import Store, build_control_base
from tests.test_compliance_assess import LFDI, T0, post_the_hour

TOKEN = "operator-token-0123456789"
SECRET = "webhook-secret"


class Received(list):
    def __init__(self) -> None:
        super().__init__()
        self.arrived = asyncio.Event()


async def _receiver() -> tuple[web.AppRunner, str, Received]:
    got = Received()

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        got.append((json.loads(body), request.headers.get("X-Derlink-Signature") == expected))
        got.arrived.set()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}/hook", got


@pytest.fixture
async def world(tmp_path: Path):
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    store.now = T0 - 600
    store.clock = lambda: store.now
    await store.admin.ensure_standard_programs()
    await store.admin.create_group("feeder")
    for lfdi in LFDI.values():
        await store.admin.register_site(lfdi, groups_=["feeder"])
    hook_runner, hook_url, got = await _receiver()
    config = ServerConfig(
        data_dir=tmp_path,
        headend_tokens=[{"name": "alice", "token": TOKEN, "role": "operator"}],
        incident_webhook_url=hook_url,
        incident_webhook_secret=SECRET,
    )
    runner = web.AppRunner(create_headend_app(store, config))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    async with aiohttp.ClientSession(base, headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        yield store, http, got, base
    await runner.cleanup()
    await hook_runner.cleanup()
    await store.close()


async def _wait_for(got: Received, count: int) -> None:
    """Webhooks are delivered in the background, after the commit: wait for ``count`` of them."""
    async with asyncio.timeout(10):
        while len(got) < count:
            await got.arrived.wait()
            got.arrived.clear()


async def test_assessment_findings_raise_incidents_once_and_reach_the_webhook(world: Any) -> None:
    store, http, got, base = world
    # B's inverter is stuck at 3 kW against a 2 kW envelope; C stops posting after 25 minutes; A and D
    # comply. The emergency asks for Responses and only A answers.
    store.now = T0 - 60
    await store.admin.create_control(
        "doe",
        "group:feeder",
        start=T0,
        duration=3600,
        base=build_control_base(export_limit_w=2000),
        response_required="00",  # asks for no Response
    )
    store.now = T0 + 1800
    emergency = await store.admin.create_control(
        "emergency", "group:feeder", start=T0 + 1800, duration=300, base=build_control_base(export_limit_w=0)
    )
    await post_the_hour(store, emergency)
    store.now = T0 + 3600
    window = {"from": T0, "to": T0 + 3600}

    async with http.post("/api/incidents/from-compliance", json=window) as resp:
        assert resp.status == 200, await resp.text()
        first = await resp.json()
    async with http.get("/api/incidents", params={"open": "1"}) as resp:
        items = (await resp.json())["items"]
    raised = {(i["subject"], i["kind"]) for i in items}
    assert raised == {
        (f"site:{LFDI['B']}", "breach"),
        (f"site:{LFDI['C']}", "silent"),
        *((f"site:{LFDI[n]}", "non_responder") for n in "BCD"),
    }
    assert len(first["created"]) == 5 and first["noted"] == []
    assert all(i["reporter"] == "compliance" and i["holder"] == "alice" for i in items)
    breach = next(i for i in items if i["kind"] == "breach")
    assert breach["severity"] == "high" and "persistent breach" in breach["timeline"][0]["text"]
    await _wait_for(got, 5)
    assert all(signed for _, signed in got)
    assert {(p["subject"], p["kind"]) for p, _ in got} == raised

    # The same assessment again, from the CLI: every finding notes its open incident; nothing new is raised.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "derlink", "ctl", "--url", base, "--token", TOKEN, "--json",
        "incidents", "from-compliance", "--since", str(T0), "--until", str(T0 + 3600),
        stdout=asyncio.subprocess.PIPE, cwd=Path(__file__).parent.parent,
    )  # fmt: skip
    out, _ = await proc.communicate()
    assert proc.returncode == 0, out
    second = json.loads(out)
    assert second["created"] == [] and sorted(second["noted"]) == sorted(first["created"])
    async with http.get("/api/incidents", params={"open": "1"}) as resp:
        assert (await resp.json())["total"] == 5
    await _wait_for(got, 10)
    assert all(p["event"]["text"].startswith("again: ") and p["state"] == "open" for p, _ in got[5:])


async def test_bad_requests_name_the_field_and_raise_nothing(world: Any) -> None:
    _store, http, got, _base = world
    for body, field in (
        ({"site": "00" * 20}, "site"),
        ({"from": "yesterday"}, "from"),
        ({"from": T0 + 10, "to": T0}, "to"),
        ({"feeder": "x"}, "feeder"),
    ):
        async with http.post("/api/incidents/from-compliance", json=body) as resp:
            assert resp.status == 400, body
            assert field in (await resp.text())
    async with http.get("/api/incidents") as resp:
        assert (await resp.json())["total"] == 0
    assert got == []


def test_webhook_url_is_checked_in_config() -> None:
    assert config_from_mapping({"incident_webhook_url": "https://ops.example/hook"}).incident_webhook_url
    with pytest.raises(ConfigError, match="incident_webhook_url"):
        config_from_mapping({"incident_webhook_url": "ftp://ops.example/hook"})
