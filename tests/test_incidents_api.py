"""Incident routes on the head-end API over real loopback HTTP, SQLite store on disk: bearer roles,
de-duplicated raise, transitions with the token's name as actor, refused transitions as 409."""

import aiohttp
import pytest
from aiohttp import web

from server.config import ServerConfig
from server.headend.api import create_headend_app
from server.store import Store

TOKENS = [{"name": "alice", "token": "operator-token-0123456789", "role": "operator"},
          {"name": "victor", "token": "viewer-token-0123456789ab", "role": "viewer"}]  # fmt: skip


@pytest.fixture
async def api(tmp_path):
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path}/s.sqlite3")
    app = create_headend_app(store, ServerConfig(data_dir=tmp_path, headend_tokens=TOKENS))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    sessions = {t["name"]: aiohttp.ClientSession(base, headers={"Authorization": f"Bearer {t['token']}"})
                for t in TOKENS}  # fmt: skip
    yield sessions, store
    for s in sessions.values():
        await s.close()
    await runner.cleanup()
    await store.close()


async def call(session, method, path, body=None):
    async with session.request(method, path, json=body) as resp:
        return resp.status, await resp.json()


async def test_incident_workflow_over_the_headend(api):
    s, store = api
    alice, victor = s["alice"], s["victor"]
    raise_body = {"subject": "site:AB12", "kind": "breach", "severity": "high", "text": "export 6 kW > 5 kW"}
    status, doc = await call(alice, "POST", "/api/incidents", raise_body)
    assert status == 201 and doc["created"] and doc["incident"]["id"] == "INC-1"
    status, doc = await call(alice, "POST", "/api/incidents", raise_body)
    assert status == 200 and not doc["created"] and len(doc["incident"]["timeline"]) == 2
    assert (await call(victor, "POST", "/api/incidents", raise_body))[0] == 403
    status, doc = await call(alice, "POST", "/api/incidents", {**raise_body, "kind": "fire"})
    assert status == 400 and doc["field"] == "kind"

    status, doc = await call(alice, "POST", "/api/incidents/INC-1/actions",
                             {"action": "resolve", "reason": "x"})  # fmt: skip
    assert status == 409 and doc["field"] == "action" and "not allowed from open" in doc["error"]
    status, doc = await call(alice, "POST", "/api/incidents/INC-1/actions", {"action": "triage"})
    assert status == 400 and doc["field"] == "reason"
    status, doc = await call(alice, "POST", "/api/incidents/INC-1/actions",
                             {"action": "triage", "reason": "confirmed"})  # fmt: skip
    assert status == 200 and doc["state"] == "triaged" and doc["timeline"][-1]["actor"] == "alice"
    assert (await call(s["alice"], "GET", "/api/incidents/INC-9"))[0] == 404

    status, doc = await call(victor, "GET", "/api/incidents?open=1")
    assert status == 200 and [i["id"] for i in doc["items"]] == ["INC-1"]
    audit = [a for a in await store.admin.audit(limit=20) if a["action"].startswith("incident.")]
    assert [(a["actor"], a["action"], a["reason"]) for a in reversed(audit)] == [
        ("alice", "incident.raise", "export 6 kW > 5 kW"),
        ("alice", "incident.note", "export 6 kW > 5 kW"),
        ("alice", "incident.triage", "confirmed"),
    ]


async def test_ctl_incidents_commands(api, tmp_path):
    import asyncio
    import contextlib
    import io
    import json

    from derlink.cli import main

    sessions, _ = api
    base = str(sessions["alice"]._base_url)

    def ctl(*argv):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = main(["ctl", "--url", base, "--token", TOKENS[0]["token"], "--json", *argv])
        return code, out.getvalue()

    # main() runs its own event loop (asyncio.run): call it off this test's loop.
    code, out = await asyncio.to_thread(ctl, "incidents", "raise", "site:EF56", "silent",
                                        "no readings 15 min", "--severity", "low")  # fmt: skip
    assert code == 0 and json.loads(out)["incident"]["id"] == "INC-1"
    code, out = await asyncio.to_thread(ctl, "incidents", "triage", "INC-1", "--reason", "looked")
    assert code == 0 and json.loads(out)["state"] == "triaged"
    code, out = await asyncio.to_thread(ctl, "incidents", "resolve", "INC-1", "--reason", "early")
    assert code == 1 and json.loads(out)["status"] == 409
    code, out = await asyncio.to_thread(ctl, "incidents", "refer", "INC-1", "--reason", "installer",
                                        "--referred-to", "installer-co")  # fmt: skip
    assert code == 0 and json.loads(out)["referred_to"] == "installer-co"
    code, out = await asyncio.to_thread(ctl, "incidents", "list", "--open")
    assert code == 0 and "INC-1" in out


async def test_incident_routes_in_the_openapi_document(api):
    from server.headend.incidents_api import ROUTES

    async with api[0]["victor"].get("/api/openapi.json") as resp:
        doc = await resp.json()
    for route in ROUTES:
        op = doc["paths"][route.path][route.method.lower()]
        assert op["x-derlink-role"] == ("operator" if route.write else "viewer")
