"""Behaviour of the 2030.5 resources over real mutual TLS: registration, DER documents, telemetry,
responses, paging, targeting, event status, rates, HEAD, metrics, logs."""

from __future__ import annotations

import logging
import random
from dataclasses import replace

import aiohttp

from sep2 import resources as r
from sep2.xml import to_xml
from server.store import build_control_base
from tests.test_server_harness import (
    BACKENDS,
    dera,
    dercap,
    derg,
    ders,
    end_device,
    meter_reading,
    mup,
    random_lfdi,
    response,
)

pytest_plugins = ["tests.test_server_harness"]


@BACKENDS
async def test_registration_duplicates_and_out_of_band(server, clients):
    a = clients["dev-a"]
    first = await a.post("/edev", end_device(a.lfdi))
    assert first.status == 201 and first.headers["Location"] == "/edev/1"
    # A second POST of a registered LFDI is refused (tests/conformance/test_registration.py).
    assert (await a.post("/edev", end_device(a.lfdi))).status == 409
    listing = (await a.get("/edev?l=10")).doc(r.EndDeviceList)
    assert listing.all == 1 and listing.EndDevice[0].lFDI == a.lfdi
    # Out of band: the operator registers dev-c with a PIN; dev-c sees it without POSTing.
    c = clients["dev-c"]
    await server.store.admin.register_site(c.lfdi, pin=111115, nmi="4102009999")
    device = (await c.get("/edev?l=10")).doc(r.EndDeviceList).EndDevice[0]
    reg = (await c.get(device.RegistrationLink.href)).doc(r.Registration)
    assert reg.pIN == 111115
    cp = (await c.get(device.ConnectionPointLink.href)).doc(r.ConnectionPoint)
    assert cp.connectionPointId == "4102009999"
    # An aggregator may register others; a duplicate is refused as for a device.
    agg = clients["agg-a"]
    lfdi = random_lfdi(random.Random(1))
    assert (await agg.post("/edev", end_device(lfdi))).status == 201
    assert (await agg.post("/edev", end_device(lfdi))).status == 409
    # ... but not one that belongs to someone else.
    assert (await agg.post("/edev", end_device(a.lfdi))).status == 409


async def test_inband_registration_can_be_disabled(pki, tmp_path):
    from server.app import start_server
    from tests.test_server_harness import Client, server_config

    running = await start_server(server_config(pki, tmp_path / "d", inband_registration=False))
    client = Client(running.base_url, pki.ssl("dev-a"), pki.identities["dev-a"].lfdi)
    try:
        assert (await client.post("/edev", end_device(client.lfdi))).status == 403
        await running.store.admin.register_site(client.lfdi)
        listing = (await client.get("/edev?l=10")).doc(r.EndDeviceList)  # found, not POSTed
        assert [d.lFDI for d in listing.EndDevice] == [client.lfdi]
    finally:
        await client.close()
        await running.stop()


@BACKENDS
async def test_der_documents_are_persisted_and_read_back(server, clients):
    a = clients["dev-a"]
    await a.post("/edev", end_device(a.lfdi))
    docs = {"dercap": dercap(), "derg": derg(), "ders": ders(), "dera": dera()}
    for kind, doc in docs.items():
        assert (await a.put(f"/edev/1/der/1/{kind}", doc)).status == 204
    for kind, doc in docs.items():
        back = (await a.get(f"/edev/1/der/1/{kind}")).doc(type(doc))
        assert back.href == f"/edev/1/der/1/{kind}"
        assert replace(back, href=None) == doc
    # Incomplete settings are refused and the stored ones stay.
    bad = to_xml(derg(updated=1)).replace(b"<updatedTime>1</updatedTime>", b"")
    assert (await a.request("PUT", "/edev/1/der/1/derg", bad)).status == 400
    assert (await a.get("/edev/1/der/1/derg")).doc(r.DERSettings).updatedTime == derg().updatedTime
    stored = await server.store.admin.site_der_documents(a.lfdi)
    assert stored["dercap"].doeModesSupported == "03"


@BACKENDS
async def test_mirror_usage_points_update_by_mrid_and_store_readings(server, clients):
    a = clients["dev-a"]
    await a.post("/edev", end_device(a.lfdi))
    doc = mup(a.lfdi, mrid="12" * 16)
    first = await a.post("/mup", doc)
    assert first.status == 201
    second = await a.post("/mup", replace(doc, description="renamed"))
    assert second.status == 204 and second.headers["Location"] == first.headers["Location"]
    listing = (await a.get("/mup?l=10")).doc(r.MirrorUsagePointList)
    assert listing.all == 1 and listing.MirrorUsagePoint[0].description == "renamed"
    assert listing.MirrorUsagePoint[0].postRate == server.config.post_rate
    path = first.headers["Location"]
    for i in range(3):
        assert (await a.post(path, meter_reading(2000 + i, 1_700_000_300 + 300 * i))).status == 204
    batch = r.MirrorMeterReadingList(all=1, results=1, MirrorMeterReading=[meter_reading(9, 1_700_001_200)])
    assert (await a.post(path, batch)).status == 204
    readings = await server.store.admin.site_readings(a.lfdi)
    assert [x["value"] for x in readings] == [1234, 2000, 2001, 2002, 9]
    assert readings[1]["time_start"] == 1_700_000_300 and readings[1]["reading_type"].uom == 38
    assert (await a.get(path)).doc(r.MirrorUsagePoint).MirrorMeterReading[0].ReadingType.kind == 37
    assert (await a.delete(path)).status == 204
    assert (await a.get(path)).status == 404


@BACKENDS
async def test_responses_stored_and_queryable_per_event(server, clients):
    a = clients["dev-a"]
    await a.post("/edev", end_device(a.lfdi))
    mrid = await server.store.admin.create_control(
        "doe", f"site:{a.lfdi}", duration=600, base=build_control_base(export_limit_w=0)
    )
    control = (await a.get("/edev/1/derp/2/derc?l=5")).doc(r.DERControlList).DERControl[0]
    assert control.mRID == mrid and control.replyTo == "/rsps/1/rsp" and control.responseRequired == "03"
    for status in (1, 2):
        reply = await a.post(control.replyTo, response(a.lfdi, mrid, status))
        assert reply.status == 201 and reply.headers["Location"].startswith("/rsps/1/rsp/")
    listing = (await a.get("/rsps/1/rsp?l=10")).doc(r.ResponseList)
    assert [x.status for x in listing.Response] == [1, 2] and listing.Response[0].subject == mrid
    one = (await a.get(listing.Response[1].href)).doc(r.Response)
    assert one.endDeviceLFDI == a.lfdi
    assert [x["status"] for x in await server.store.admin.responses_for_control(mrid)] == [1, 2]


@BACKENDS
async def test_paging_is_stable_and_complete(server, clients):
    agg = clients["agg-a"]
    rng = random.Random(3)
    for _ in range(7):
        assert (await agg.post("/edev", end_device(random_lfdi(rng)))).status == 201
    pages = []
    for start in (0, 3, 6):
        page = (await agg.get(f"/edev?s={start}&l=3")).doc(r.EndDeviceList)
        assert page.all == 7
        pages.append([d.href for d in page.EndDevice])
    assert [len(p) for p in pages] == [3, 3, 1]
    flat = [h for p in pages for h in p]
    assert len(set(flat)) == 7
    assert [d.href for d in (await agg.get("/edev?l=7")).doc(r.EndDeviceList).EndDevice] == flat
    # Without l the 2030.5 default limit of 1 applies.
    assert (await agg.get("/edev")).doc(r.EndDeviceList).results == 1
    # Controls are ordered by start time.
    lfdi = (await agg.get("/edev?l=1")).doc(r.EndDeviceList).EndDevice[0].lFDI
    now = server.store.clock()
    for offset in (900, 300, 600):
        await server.store.admin.create_control(
            "doe",
            f"site:{lfdi}",
            start=now + offset,
            duration=60,
            base=build_control_base(export_limit_w=offset),
        )
    edev = (await agg.get("/edev?l=1")).doc(r.EndDeviceList).EndDevice[0].href
    starts = [
        c.interval.start for c in (await agg.get(f"{edev}/derp/2/derc?l=10")).doc(r.DERControlList).DERControl
    ]
    assert starts == sorted(starts) and len(starts) == 3


@BACKENDS
async def test_targeting_status_and_primacy(server, clients):
    admin = server.store.admin
    a, b = clients["dev-a"], clients["dev-b"]
    for c in (a, b):
        await c.post("/edev", end_device(c.lfdi))
    await admin.create_group("zone")
    await admin.create_group("feeder", parent="zone")
    await admin.set_membership(a.lfdi, "feeder")
    group_control = await admin.create_control(
        "doe", "group:zone", duration=600, base=build_control_base(export_limit_w=100)
    )

    async def mrids(client, edev):
        return [
            c.mRID for c in (await client.get(f"{edev}/derp/2/derc?l=50")).doc(r.DERControlList).DERControl
        ]

    assert await mrids(a, "/edev/1") == [group_control]  # via the nested group
    assert await mrids(b, "/edev/2") == []
    everyone = await admin.create_control(
        "doe",
        "all",
        start=server.store.clock() + 1000,
        duration=60,
        base=build_control_base(export_limit_w=50),
    )
    assert everyone in await mrids(b, "/edev/2") and everyone in await mrids(a, "/edev/1")
    active = (await a.get("/edev/1/derp/2/actderc?l=10")).doc(r.DERControlList)
    assert [c.mRID for c in active.DERControl] == [group_control]
    assert active.DERControl[0].EventStatus.currentStatus == 1
    # A newer overlapping control for the same target supersedes; cancelling shows as cancelled.
    newer = await admin.create_control(
        "doe", "group:zone", duration=600, base=build_control_base(export_limit_w=200)
    )
    listing = {c.mRID: c for c in (await a.get("/edev/1/derp/2/derc?l=50")).doc(r.DERControlList).DERControl}
    assert listing[group_control].EventStatus.currentStatus == 4
    await admin.cancel_control(newer, reason="test")
    listing = {c.mRID: c for c in (await a.get("/edev/1/derp/2/derc?l=50")).doc(r.DERControlList).DERControl}
    assert listing[newer].EventStatus.currentStatus == 2
    programs = (await a.get("/edev/1/fsa/0/derp?l=10")).doc(r.DERProgramList).DERProgram
    assert [p.primacy for p in programs] == sorted(p.primacy for p in programs)
    assert programs[0].description == "Emergency"
    audit = await admin.audit()
    assert audit[0]["action"] == "control.cancel" and audit[0]["reason"] == "test"


@BACKENDS
async def test_rates_change_at_runtime_and_head(server, clients):
    a = clients["dev-a"]
    await a.post("/edev", end_device(a.lfdi))
    assert (await a.get("/dcap")).doc(r.DeviceCapability).pollRate == server.config.poll_rate
    await server.store.admin.set_rate("dcap", 60, f"site:{a.lfdi}")
    await server.store.admin.set_rate("post", 30)
    assert (await a.get("/dcap")).doc(r.DeviceCapability).pollRate == 60
    assert (await clients["dev-b"].get("/dcap")).doc(r.DeviceCapability).pollRate == server.config.poll_rate
    assert (await a.get("/edev/1")).doc(r.EndDevice).postRate == 30
    head = await a.request("HEAD", "/dcap")
    assert head.status == 200 and head.body == b""
    assert (await a.request("HEAD", "/edev/77")).status == 404


@BACKENDS
async def test_metrics_and_access_log_carry_the_client(server, clients, caplog):
    a = clients["dev-a"]
    with caplog.at_level(logging.INFO, logger="derlink.server.access"):
        await a.get("/dcap")
        await a.get("/nowhere")
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "derlink.server.access"]
    assert any(f"lfdi={a.lfdi}" in line and "path=/dcap" in line and "status=200" in line for line in lines)
    assert any("status=404" in line and f"lfdi={a.lfdi}" in line for line in lines)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{server.admin_port}/metrics") as reply:
            text = await reply.text()
    assert 'derlink_http_requests_total{method="GET",route="/dcap",status="200"}' in text


@BACKENDS
async def test_aggregator_certificate_rotation_keeps_sites(server, clients):
    admin = server.store.admin
    old, new = clients["agg-a"], clients["agg-b"]
    lfdi = random_lfdi(random.Random(5))
    assert (await old.post("/edev", end_device(lfdi))).status == 201
    name = await admin.aggregator_of(old.lfdi)
    await admin.add_aggregator_certificate(name, new.lfdi)
    assert [d.lFDI for d in (await new.get("/edev?l=10")).doc(r.EndDeviceList).EndDevice] == [lfdi]
    await admin.set_revoked(old.lfdi)
    assert (await old.get("/edev")).status == 403
    assert (await new.get("/edev?l=10")).doc(r.EndDeviceList).all == 1


async def test_a_write_blocked_by_another_writer_is_a_503_and_changes_nothing(pki, tmp_path, monkeypatch):
    """A long write transaction (e.g. a bulk DOE upload) holds SQLite: others get 503 + Retry-After."""
    import sqlite3

    import server.store.engine
    from server.app import start_server
    from tests.test_server_harness import Client, server_config

    monkeypatch.setattr(server.store.engine, "SQLITE_BUSY_TIMEOUT_MS", 200)
    running = await start_server(server_config(pki, tmp_path / "d"))
    client = Client(running.base_url, pki.ssl("dev-a"), pki.identities["dev-a"].lfdi)
    try:
        assert (await client.post("/edev", end_device(client.lfdi))).status == 201
        before = await running.store.admin.table_dump()
        blocker = sqlite3.connect(running.store.engine.url.database, timeout=0.1)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            reply = await client.post("/mup", mup(client.lfdi))
        finally:
            blocker.rollback()
            blocker.close()
        assert reply.status == 503
        assert reply.headers["Retry-After"] == "30"
        assert reply.doc(r.Error).maxRetryDuration == 30
        assert await running.store.admin.table_dump() == before
        assert (await client.post("/mup", mup(client.lfdi))).status == 201  # and it works once free
    finally:
        await client.close()
        await running.stop()
