"""The head-end operator API on a running server: real HTTP with bearer tokens for operators, real mutual
TLS for the 2030.5 clients that must see the effect, real notifications to a TLS subscriber."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from certs.pki import issue_device_certificate, load_pki
from certs.tls import client_ssl_context, server_ssl_context
from sep2 import resources as r
from sep2.xml import from_xml
from server.app import RunningServer, start_server
from server.headend.api import ROUTES
from tests.test_server_harness import BACKENDS, Client, Pki, end_device, server_config, subscription

pytest_plugins = ["tests.test_server_harness"]

OPERATOR_TOKEN = "operator-token-0123456789"
VIEWER_TOKEN = "viewer-token-0123456789ab"
TOKENS = [
    {"name": "alice", "token": OPERATOR_TOKEN, "role": "operator"},
    {"name": "victor", "token": VIEWER_TOKEN, "role": "viewer"},
]


class Api:
    """A head-end API client with one bearer token."""

    def __init__(self, base: str, token: str | None) -> None:
        self.base = base
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.session = aiohttp.ClientSession(headers=headers)

    async def call(self, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        if body is not None:
            kw["json"] = body
        async with self.session.request(method, self.base + path, **kw) as response:
            text = await response.text()
            return response.status, json.loads(text) if text else None

    async def ok(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        status, data = await self.call(method, path, body, **kw)
        assert status in (200, 201), (status, data)
        return data

    async def close(self) -> None:
        await self.session.close()


class Receiver:
    """Notification endpoint over TLS; records (path, Notification)."""

    def __init__(self, pki_dir: Path) -> None:
        self.pki_dir = pki_dir
        self.got: list[tuple[str, r.Notification]] = []
        self.changed = asyncio.Event()
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.got.append((request.match_info["who"], from_xml(await request.read(), r.Notification)))
        self.changed.set()
        return web.Response(status=201)

    async def start(self) -> None:
        paths = load_pki(self.pki_dir)
        app = web.Application()
        app.router.add_post("/notify/{who}", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(
            self.runner,
            "127.0.0.1",
            0,
            ssl_context=server_ssl_context(paths.server_chain, paths.server_key, paths.ca_chain),
        )
        await site.start()
        self.port = self.runner.addresses[0][1]

    def uri(self, who: str) -> str:
        return f"https://127.0.0.1:{self.port}/notify/{who}"

    async def wait_for(self, who: str, predicate: Any, within: float = 15.0) -> r.Notification:
        async def loop() -> r.Notification:
            while True:
                for name, note in self.got:
                    if name == who and note.Resource is not None and predicate(note.Resource):
                        return note
                self.changed.clear()
                await self.changed.wait()

        return await asyncio.wait_for(loop(), within)

    def seen(self, who: str, predicate: Any) -> bool:
        return any(
            n == who and note.Resource is not None and predicate(note.Resource) for n, note in self.got
        )

    async def stop(self) -> None:
        if self.runner:
            await self.runner.cleanup()


@dataclass
class HeadEndWorld:
    running: RunningServer
    op: Api
    viewer: Api
    anon: Api
    pki: Pki
    clients: dict[str, Client]
    base: str


@pytest.fixture
async def world(pki: Pki, tmp_path: Path, database_url: str | None) -> AsyncIterator[HeadEndWorld]:
    running = await start_server(
        server_config(pki, tmp_path / "data", database_url=database_url, headend_tokens=TOKENS)
    )
    base = f"http://127.0.0.1:{running.headend_port}"
    names = ("dev-a", "dev-b", "dev-c", "agg-a")
    clients = {n: Client(running.base_url, pki.ssl(n), pki.identities[n].lfdi) for n in names}
    w = HeadEndWorld(
        running, Api(base, OPERATOR_TOKEN), Api(base, VIEWER_TOKEN), Api(base, None), pki, clients, base
    )
    try:
        yield w
    finally:
        for api in (w.op, w.viewer, w.anon):
            await api.close()
        for c in clients.values():
            await c.close()
        await running.stop()


async def _setup_sites(w: HeadEndWorld) -> dict[str, int]:
    """region > substation > feeder-1 / feeder-2; dev-a in feeder-1, dev-b in feeder-2, dev-c in none."""
    await w.op.ok("POST", "/api/groups", {"name": "region"})
    await w.op.ok("POST", "/api/groups", {"name": "substation", "parent": "region"})
    await w.op.ok("POST", "/api/groups", {"name": "feeder-1", "parent": "substation"})
    await w.op.ok("POST", "/api/groups", {"name": "feeder-2", "parent": "substation"})
    ids = {}
    for name, group, nmi in (
        ("dev-a", "feeder-1", "4103000001"),
        ("dev-b", "feeder-2", "4103000002"),
        ("dev-c", None, "4103000003"),
    ):
        body = {"lfdi": w.clients[name].lfdi, "nmi": nmi, "pin": 11111, "label": f"house {name}"}
        if group:
            body["groups"] = [group]
        ids[name] = (await w.op.ok("POST", "/api/sites", body))["id"]
    return ids


async def _programs(client: Client, site_id: int) -> dict[int, str]:
    """primacy -> DERProgram href as the site sees it over 2030.5."""
    progs = (await client.get(f"/edev/{site_id}/fsa/0/derp?l=20")).doc(r.DERProgramList)
    return {p.primacy: p.href for p in progs.DERProgram}


async def _controls(client: Client, href: str, kind: str = "derc") -> r.DERControlList:
    reply = await client.get(f"{href}/{kind}?l=100")
    assert reply.status == 200, reply.headers.get("X-Error-Detail")
    return reply.doc(r.DERControlList)


def _has(mrid: str, status: int | None = None) -> Any:
    def check(resource: Any) -> bool:
        return any(
            c.mRID == mrid and (status is None or c.EventStatus.currentStatus == status)
            for c in getattr(resource, "DERControl", [])
        )

    return check


async def test_tokens_roles_and_openapi(world: HeadEndWorld) -> None:
    w = world
    assert (await w.anon.call("GET", "/api/sites"))[0] == 401
    bad = Api(w.base, "not-a-known-token-at-all")
    try:
        status, body = await bad.call("GET", "/api/sites")
        assert status == 401 and body["field"] == "Authorization"
    finally:
        await bad.close()
    assert (await w.viewer.ok("GET", "/api/whoami")) == {"name": "victor", "role": "viewer"}
    audit_before = (await w.op.ok("GET", "/api/audit"))["total"]
    for route in ROUTES:
        if route.write:
            path = route.path.replace("{site}", w.clients["dev-a"].lfdi).replace("{group}", "g")
            path = path.replace("{mrid}", "00" * 16).replace("{lfdi}", "AA" * 20).replace("{name}", "x")
            status, body = await w.viewer.call(route.method, path, {"name": "g"})
            assert status == 403, (route.path, status, body)
            assert (await w.anon.call(route.method, path, {"name": "g"}))[0] == 401
    assert (await w.op.ok("GET", "/api/audit"))["total"] == audit_before
    assert (await w.op.ok("GET", "/api/groups"))["items"][0]["name"] == "all"  # only the built-in
    # The OpenAPI document is served and describes every route with its role.
    status, doc = await w.anon.call("GET", "/api/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.")
    for route in ROUTES:
        op = doc["paths"][route.path][route.method.lower()]
        assert op["x-derlink-role"] == ("operator" if route.write else "viewer")
    # Viewers read everything.
    await w.op.ok("POST", "/api/groups", {"name": "feeder-9"})
    assert any(g["name"] == "feeder-9" for g in (await w.viewer.ok("GET", "/api/groups"))["items"])


@BACKENDS
async def test_validation_errors_name_the_field(world: HeadEndWorld) -> None:
    w = world
    await _setup_sites(w)
    before = await w.running.store.admin.table_dump()
    cases = [
        ({"program": "doe", "target": "all", "duration": -5, "export_limit_w": 1000}, "duration"),
        ({"program": "doe", "target": "group:nope", "duration": 60, "export_limit_w": 1000}, "target"),
        ({"program": "doe", "target": "site:" + "AB" * 20, "duration": 60, "export_limit_w": 1}, "target"),
        ({"program": "doe", "target": "all", "duration": 60, "export_limit_w": 1e20}, "export_limit_w"),
        ({"program": "doe", "target": "all", "duration": 60, "import_limit_w": -1}, "import_limit_w"),
        ({"program": "doe", "target": "all", "duration": 60, "export_limit_w": "5kW"}, "export_limit_w"),
        ({"program": "nope", "target": "all", "duration": 60, "export_limit_w": 1}, "program"),
        ({"program": "doe", "target": "all", "duration": 60, "export_limit_w": 1, "colour": 1}, "colour"),
        (
            {
                "program": "doe",
                "target": "all",
                "duration": 60,
                "export_limit_w": 1,
                "randomize_start": 99999,
            },
            "randomize_start",
        ),
    ]
    for body, field in cases:
        status, answer = await w.op.call("POST", "/api/controls", body)
        assert status == 400 and answer["field"] == field, (body, answer)
    status, answer = await w.op.call("POST", "/api/emergency", {"target": "all", "action": "explode"})
    assert status == 400 and answer["field"] == "action"
    status, answer = await w.op.call(
        "POST", "/api/emergency", {"target": "all", "action": "generation_limit"}
    )
    assert status == 400 and answer["field"] == "generation_limit_w"
    status, answer = await w.op.call("POST", "/api/sites", {"lfdi": "xyz"})
    assert status == 400 and answer["field"] == "lfdi"
    status, answer = await w.op.call("PUT", "/api/rates", {"resource": "derp", "value": 0})
    assert status == 400 and answer["field"] == "value"
    assert await w.running.store.admin.table_dump() == before


@BACKENDS
async def test_targeting_broadcast_cancel_emergency_with_notifications(world: HeadEndWorld) -> None:
    w = world
    ids = await _setup_sites(w)
    devs = ("dev-a", "dev-b", "dev-c")
    receiver = Receiver(w.pki.directory)
    await receiver.start()
    try:
        progs = {}
        for name in devs:
            c, e = w.clients[name], ids[name]
            progs[name] = await _programs(c, e)
            for primacy in (1, 10):  # emergency and DOE DERControlLists
                sub = subscription(f"{progs[name][primacy]}/derc", receiver.uri(name), limit=50)
                assert (await c.post(f"/edev/{e}/sub", sub)).status == 201

        # A control for feeder-1 reaches exactly dev-a.
        group_mrid = (
            await w.op.ok(
                "POST",
                "/api/controls",
                {
                    "program": "doe",
                    "target": "group:feeder-1",
                    "duration": 3600,
                    "export_limit_w": 1500,
                    "reason": "feeder-1 voltage",
                },
            )
        )["mrid"]
        for name in devs:
            listing = await _controls(w.clients[name], progs[name][10])
            assert _has(group_mrid)(listing) == (name == "dev-a"), name
        await receiver.wait_for("dev-a", _has(group_mrid))

        # A control for the substation (nested groups) reaches dev-a and dev-b, not dev-c.
        sub_mrid = (
            await w.op.ok(
                "POST",
                "/api/controls",
                {
                    "program": "doe",
                    "target": "group:substation",
                    "start": w.running.store.clock() + 7200,
                    "duration": 600,
                    "import_limit_w": 5000,
                    "export_limit_w": 0,
                },
            )
        )["mrid"]
        for name in devs:
            assert _has(sub_mrid)(await _controls(w.clients[name], progs[name][10])) == (name != "dev-c")

        # Broadcast reaches every site.
        all_mrid = (
            await w.op.ok(
                "POST",
                "/api/controls",
                {
                    "program": "doe",
                    "target": "all",
                    "start": w.running.store.clock() + 86400,
                    "duration": 600,
                    "generation_limit_w": 3000,
                },
            )
        )["mrid"]
        for name in devs:
            assert _has(all_mrid)(await _controls(w.clients[name], progs[name][10]))
            await receiver.wait_for(name, _has(all_mrid))

        # Cancel: the client reads EventStatus 2 (cancelled) and is notified of it.
        cancelled = await w.op.ok("POST", f"/api/controls/{group_mrid}/cancel", {"reason": "resolved"})
        assert cancelled["status"] == "cancelled"
        assert _has(group_mrid, 2)(await _controls(w.clients["dev-a"], progs["dev-a"][10]))
        await receiver.wait_for("dev-a", _has(group_mrid, 2))
        detail = await w.op.ok("GET", f"/api/controls/{group_mrid}")
        assert detail["status"] == "cancelled" and detail["target"] == "group:feeder-1"

        # An active DOE for every site (bulk upload), then an emergency for the region.
        now = w.running.store.clock()
        csv_body = "nmi,start,duration,import_limit_w,export_limit_w\n" + "".join(
            f"{nmi},{now - 60},3600,7000,4000\n" for nmi in ("4103000001", "4103000002", "4103000003")
        )
        await w.op.ok("POST", "/api/does", data=csv_body, headers={"Content-Type": "text/csv"})
        for name in devs:  # the upload notified each site's DOE list subscription
            await receiver.wait_for(
                name,
                lambda res: any(
                    c.mRID.startswith("D") and c.EventStatus.currentStatus == 1
                    for c in getattr(res, "DERControl", [])
                ),
            )
        emergency = await w.op.ok(
            "POST", "/api/emergency", {"target": "group:region", "action": "zero_export", "reason": "fault"}
        )
        for name in devs:
            c, p = w.clients[name], progs[name]
            doe_active = await _controls(c, p[10], "actderc")
            assert any(x.DERControlBase.opModExpLimW.to_watts() == 4000 for x in doe_active.DERControl)
            emergency_active = await _controls(c, p[1], "actderc")
            targeted = name != "dev-c"
            assert _has(emergency["mrid"], 1)(emergency_active) == targeted
            if targeted:
                # Outranks: the emergency program has the lower (winning) primacy and an active zero export.
                assert min(p) == 1 and p[1] != p[10]
                control = next(x for x in emergency_active.DERControl if x.mRID == emergency["mrid"])
                assert control.DERControlBase.opModExpLimW.to_watts() == 0
                await receiver.wait_for(name, _has(emergency["mrid"], 1))
        # The site detail shows the active controls with their source programs, emergency first.
        detail = await w.op.ok("GET", f"/api/sites/{w.clients['dev-a'].lfdi}")
        assert [p["program"] for p in detail["programs"]] == ["emergency", "doe", "default"]
        assert detail["programs"][0]["active"][0]["mrid"] == emergency["mrid"]
        assert detail["programs"][1]["active"][0]["limits"]["export_limit_w"] == 4000
        assert detail["groups"] == ["feeder-1"] and detail["nmi"] == "4103000001"
        assert detail["programs"][0]["active"][0]["target"] == "group:region"
        assert detail["programs"][1]["active"][0]["target"] == f"site:{w.clients['dev-a'].lfdi}"

        # Staged lift spread by randomisation: cancelled with randomisation (3), randomizeDuration set.
        lifted = await w.op.ok("POST", "/api/emergency/lift", {"target": "group:region", "spread": 900})
        assert lifted["lifted"] == [emergency["mrid"]] and lifted["mode"] == "spread"
        listing = await _controls(w.clients["dev-b"], progs["dev-b"][1])
        control = next(x for x in listing.DERControl if x.mRID == emergency["mrid"])
        assert control.EventStatus.currentStatus == 3 and control.randomizeDuration == 900
        await receiver.wait_for("dev-b", _has(emergency["mrid"], 3))
        assert not receiver.seen("dev-c", _has(emergency["mrid"]))

        # Staged lift by group waves: feeder-1 released now, feeder-2 after 600 s.
        second = await w.op.ok("POST", "/api/emergency", {"target": "group:region", "action": "disconnect"})
        waves = await w.op.ok(
            "POST",
            "/api/emergency/lift",
            {"mrid": second["mrid"], "waves": ["group:feeder-1", "group:feeder-2"], "wave_interval": 600},
        )
        assert [x["target"] for x in waves["waves"]] == ["group:feeder-2"]
        held = waves["waves"][0]["mrid"]
        a_active = await _controls(w.clients["dev-a"], progs["dev-a"][1], "actderc")
        b_active = await _controls(w.clients["dev-b"], progs["dev-b"][1], "actderc")
        assert not a_active.DERControl
        assert [x.mRID for x in b_active.DERControl] == [held]
        assert b_active.DERControl[0].DERControlBase.opModConnect is False
        assert b_active.DERControl[0].interval.duration == 600

        # Every write is in the audit log with who and why.
        audit = await w.viewer.ok("GET", "/api/audit?actor=alice&action=control.*")
        assert {e["action"] for e in audit["items"]} == {"control.create", "control.cancel"}
        assert any(e["reason"] == "resolved" for e in audit["items"])
        lifts = await w.viewer.ok("GET", "/api/audit?action=emergency.lift")
        assert lifts["total"] == 2
    finally:
        await receiver.stop()


@BACKENDS
async def test_membership_rates_lifecycle_and_security(world: HeadEndWorld, pki: Pki) -> None:
    w = world
    ids = await _setup_sites(w)
    a, c = w.clients["dev-a"], w.clients["dev-c"]
    await w.op.ok("POST", "/api/programs", {"key": "feeder-2-doe", "primacy": 5, "group": "feeder-2"})
    fsas = (await c.get(f"/edev/{ids['dev-c']}/fsa?l=10")).doc(r.FunctionSetAssignmentsList)
    assert fsas.all == 1
    # Membership decides FSAs, immediately.
    await w.op.ok("PUT", "/api/sites/nmi:4103000003/groups/feeder-2", params={"reason": "re-phased"})
    fsas = (await c.get(f"/edev/{ids['dev-c']}/fsa?l=10")).doc(r.FunctionSetAssignmentsList)
    assert fsas.all == 2
    listed = await w.op.ok("GET", "/api/sites", params={"group": "substation"})
    assert {s["nmi"] for s in listed["items"]} == {"4103000001", "4103000002", "4103000003"}
    await w.op.ok("DELETE", "/api/sites/nmi:4103000003/groups/feeder-2")
    assert (await c.get(f"/edev/{ids['dev-c']}/fsa?l=10")).doc(r.FunctionSetAssignmentsList).all == 1
    assert (await w.op.ok("GET", "/api/sites", params={"q": "4103000002"}))["total"] == 1

    # DefaultDERControls per program and group/site: the most specific one wins.
    await w.op.ok(
        "PUT",
        "/api/defaults",
        {"program": "default", "target": "group:substation", "export_limit_w": 1500, "set_grad_w": 27},
    )
    await w.op.ok(
        "PUT", "/api/defaults", {"program": "default", "target": "nmi:4103000001", "export_limit_w": 0}
    )
    dprog = (await _programs(a, ids["dev-a"]))[20]
    assert (await a.get(f"{dprog}/dderc")).doc(
        r.DefaultDERControl
    ).DERControlBase.opModExpLimW.to_watts() == 0
    bprog = (await _programs(w.clients["dev-b"], ids["dev-b"]))[20]
    dderc_b = (await w.clients["dev-b"].get(f"{bprog}/dderc")).doc(r.DefaultDERControl)
    assert dderc_b.DERControlBase.opModExpLimW.to_watts() == 1500 and dderc_b.setGradW == 27
    # dev-c is in neither: its DefaultDERControl exists and is empty (issue 11 item 8).
    dderc_c = (await c.get(f"{(await _programs(c, ids['dev-c']))[20]}/dderc")).doc(r.DefaultDERControl)
    assert dderc_c.DERControlBase == r.DERControlBase() and dderc_c.setGradW is None
    assert len((await w.viewer.ok("GET", "/api/defaults"))["items"]) == 2

    # Runtime rates: global, then group override, seen on the next read.
    await w.op.ok("PUT", "/api/rates", {"resource": "derp", "value": 77})
    await w.op.ok("PUT", "/api/rates", {"resource": "derp", "value": 33, "target": "group:feeder-1"})
    await w.op.ok("PUT", "/api/rates", {"resource": "post", "value": 120, "target": "nmi:4103000001"})
    derp_a = (await a.get(f"/edev/{ids['dev-a']}/fsa/0/derp")).doc(r.DERProgramList)
    derp_c = (await c.get(f"/edev/{ids['dev-c']}/fsa/0/derp")).doc(r.DERProgramList)
    assert (derp_a.pollRate, derp_c.pollRate) == (33, 77)
    assert (await a.get(f"/edev/{ids['dev-a']}")).doc(r.EndDevice).postRate == 120
    await w.op.ok("DELETE", "/api/rates", params={"resource": "derp", "target": "group:feeder-1"})
    assert (await a.get(f"/edev/{ids['dev-a']}/fsa/0/derp")).doc(r.DERProgramList).pollRate == 77

    # Revoke / restore a device certificate: 403 on the very next request, then back.
    await w.op.ok("POST", f"/api/clients/{a.lfdi}/revoke", {"reason": "stolen"})
    assert (await a.get("/dcap")).status == 403
    await w.op.ok("POST", f"/api/clients/{a.lfdi}/restore")
    assert (await a.get("/dcap")).status == 200

    # Aggregator certificate rotation: add the new certificate, remove the old; no site is lost.
    agg = w.clients["agg-a"]
    for n in range(3):
        assert (await agg.post("/edev", end_device(f"{n + 1:040X}"))).status == 201
    agg_name = next(x["name"] for x in (await w.op.ok("GET", "/api/aggregators"))["items"])
    status, answer = await w.op.call("DELETE", f"/api/aggregators/{agg_name}/certificates/{agg.lfdi}")
    assert status == 400 and answer["field"] == "lfdi"  # never remove the last certificate
    new_ident = issue_device_certificate(
        pki.directory, f"agg-a-2027-{w.running.store.engine.dialect.name}", aggregator=True
    )
    await w.op.ok("POST", f"/api/aggregators/{agg_name}/certificates", {"lfdi": new_ident.lfdi})
    await w.op.ok(
        "DELETE", f"/api/aggregators/{agg_name}/certificates/{agg.lfdi}", params={"reason": "rotated"}
    )
    ctx = client_ssl_context(new_ident.chain_path, new_ident.key_path, load_pki(pki.directory).ca_chain)
    new_client = Client(w.running.base_url, ctx, new_ident.lfdi)
    try:
        assert (await agg.get("/edev")).status == 403
        listing = (await new_client.get("/edev?l=10")).doc(r.EndDeviceList)
        assert listing.all == 3
    finally:
        await new_client.close()

    # Telemetry shows in the site detail; clearing MUPs removes them from the 2030.5 side.
    from tests.test_server_harness import dercap, mup

    reply = await a.post("/mup", mup(a.lfdi))
    assert reply.status == 201
    mup_path = reply.headers["Location"]
    assert (await a.put(f"/edev/{ids['dev-a']}/der/{ids['dev-a']}/dercap", dercap())).status == 204
    detail = await w.op.ok("GET", f"/api/sites/{a.lfdi}")
    assert detail["telemetry"][0]["value"] == 1234 and detail["mirror_usage_points"] == 1
    assert detail["der"]["dercap"]["rtgMaxW"] == {"multiplier": 3, "value": 5}
    assert detail["comms"]["revoked"] is False
    cleared = await w.op.ok("DELETE", f"/api/sites/{a.lfdi}/mups", params={"reason": "meter swap"})
    assert cleared["removed"] == 1
    assert (await a.get(mup_path)).status == 404

    # Deregister: EndDevice, FSAs, controls, subscriptions gone from 2030.5; the audit keeps the history.
    mrid = (
        await w.op.ok(
            "POST",
            "/api/controls",
            {"program": "doe", "target": f"site:{a.lfdi}", "duration": 600, "export_limit_w": 0},
        )
    )["mrid"]
    sub = subscription(f"/edev/{ids['dev-a']}/fsa", "https://127.0.0.1:9/n")
    assert (await a.post(f"/edev/{ids['dev-a']}/sub", sub)).status == 201
    gone = await w.op.ok("DELETE", f"/api/sites/{a.lfdi}", params={"reason": "decommissioned"})
    assert gone["removed"]["controls"] == 1
    for path in (f"/edev/{ids['dev-a']}", f"/edev/{ids['dev-a']}/fsa", f"/edev/{ids['dev-a']}/sub/1"):
        assert (await a.get(path)).status == 404
    assert (await a.get("/edev")).doc(r.EndDeviceList).all == 0
    assert (await w.op.call("GET", f"/api/controls/{mrid}"))[0] == 404
    history = await w.op.ok("GET", "/api/audit", params={"target": a.lfdi})
    actions = [e["action"] for e in history["items"]]
    assert "site.deregister" in actions and "site.register" in actions and "client.revoke" in actions
    assert all(e["actor"] == "alice" for e in history["items"])


async def test_ctl_cli_over_the_api(world: HeadEndWorld, tmp_path: Path) -> None:
    w = world
    base = [sys.executable, "-m", "derlink", "ctl", "--url", w.base, "--token", OPERATOR_TOKEN]

    async def ctl(*argv: str, json_out: bool = True) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            *base,
            *(["--json"] if json_out else []),
            *argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=Path(__file__).parent.parent,
            env={**os.environ, "COLUMNS": "200"},  # rich tables wide enough not to wrap the values we check
        )
        out, err = await proc.communicate()
        return proc.returncode, out.decode() + err.decode()

    code, out = await ctl("groups", "create", "feeder-7", "--reason", "new feeder")
    assert code == 0, out
    lfdi = w.clients["dev-b"].lfdi
    code, out = await ctl("sites", "register", lfdi, "--nmi", "4103000007", "--group", "feeder-7")
    assert code == 0, out
    doe = tmp_path / "doe.csv"
    now = w.running.store.clock()
    doe.write_text("lfdi,start,duration,import_limit_w,export_limit_w\n" + f"{lfdi},{now},1800,9000,2500\n")
    code, out = await ctl("does", "upload", str(doe))
    assert code == 0 and json.loads(out)["rows"] == 1, out
    code, out = await ctl("sites", "show", lfdi)
    assert json.loads(out)["programs"][1]["active"][0]["limits"]["export_limit_w"] == 2500
    code, out = await ctl(
        "controls", "create", "doe", "group:feeder-7", "--duration", "-1", "--export-limit-w", "5"
    )
    assert code == 1 and "duration" in out
    code, out = await ctl("sites", "list", json_out=False)  # a rich table
    assert code == 0 and "4103000007" in out and "lfdi" in out
    bad = tmp_path / "bad.csv"
    bad.write_text("nmi,start,duration,import_limit_w,export_limit_w\n4103000007,1,60,1,1\n4103000007,1,60,1,oops\n")
    code, out = await ctl("does", "upload", str(bad), json_out=False)
    assert code == 1 and "line 3" in out and "export_limit_w" in out
    code, out = await ctl("audit", "--action", "group.create")
    assert json.loads(out)["items"][0]["reason"] == "new feeder"
    code, out = await ctl("audit", "--action", "group.create", "--json", json_out=False)  # after the action
    assert code == 0 and json.loads(out)["items"][0]["actor"] == "alice"
    code, out = await ctl("sites", "show", lfdi, json_out=False)  # nested sections, times as local dates
    assert code == 0 and "export limit 2500 W" in out and "for 1800 s" in out, out
    local_start = datetime.fromtimestamp(now, UTC).astimezone().isoformat(sep=" ", timespec="seconds")
    assert local_start in out and str(now) not in out, out


def test_token_config_errors_name_the_field() -> None:
    from server.config import ConfigError, config_from_mapping

    good = config_from_mapping({"headend_tokens": TOKENS})
    assert good.headend_tokens[1]["role"] == "viewer"
    for tokens, field in (
        ([{"name": "x", "token": "short", "role": "operator"}], "headend_tokens[0].token"),
        ([{"name": "x", "token": "y" * 20, "role": "admin"}], "headend_tokens[0].role"),
        ([TOKENS[0], {"name": "alice", "token": "z" * 20, "role": "viewer"}], "headend_tokens[1].name"),
        ([{"name": "x", "token": "y" * 20, "role": "viewer", "colour": 1}], "headend_tokens[0].colour"),
        ("secret", "headend_tokens"),
    ):
        with pytest.raises(ConfigError, match=field.replace("[", r"\[").replace("]", r"\]")):
            config_from_mapping({"headend_tokens": tokens})
