"""EndDevice registration (2030.5 clause 6.4 Security / 8.3 EndDevice, CSIP-AUS 2.2 Registration), over
real mutual TLS. Every refusal is a 4xx with a 2030.5 ``Error`` body and leaves the database unchanged."""

from __future__ import annotations

import random

from sep2 import resources as r
from tests.test_server_harness import end_device, random_lfdi

pytest_plugins = ["tests.test_server_harness"]


def is_error(reply, status: int) -> bool:
    return reply.status == status and r.Error is type(reply.doc())


async def test_duplicate_inband_registration_is_refused(server, clients):
    """Issue 11 item 3 (CSIP-AUS: a client finds its EndDevice through the EndDeviceList; cactus
    S-ALL-51, S-OPT-01): a POST of an LFDI already registered is refused, in- or out-of-band, for a
    device and for an aggregator."""
    admin = server.store.admin
    a, c, agg = clients["dev-a"], clients["dev-c"], clients["agg-a"]
    assert (await a.post("/edev", end_device(a.lfdi))).status == 201
    await admin.register_site(c.lfdi, pin=111115)  # out of band
    agg_site = random_lfdi(random.Random(3))
    assert (await agg.post("/edev", end_device(agg_site))).status == 201
    assert (await c.get("/dcap")).status == 200  # dev-c's first contact happens before the snapshot
    before = await admin.table_dump()
    for client, lfdi in ((a, a.lfdi), (c, c.lfdi), (agg, agg_site), (agg, a.lfdi)):
        reply = await client.post("/edev", end_device(lfdi))
        assert is_error(reply, 409), (lfdi, reply.status, reply.body)
        assert "EndDeviceList" in reply.headers["X-Error-Detail"] or lfdi == a.lfdi
    assert await admin.table_dump() == before
    # ... and the client finds it where the profile says: the EndDeviceList.
    listing = (await c.get("/edev?l=10")).doc(r.EndDeviceList)
    assert [d.lFDI for d in listing.EndDevice] == [c.lfdi]


async def test_deregistered_site_cannot_reenrol_inband(server, clients):
    """Issue 11 item 4: deregistration ends that certificate's access until the operator registers it
    again (2030.5 clause 6.4: the server decides which certificates it grants access)."""
    admin = server.store.admin
    a = clients["dev-a"]
    assert (await a.post("/edev", end_device(a.lfdi))).status == 201
    await admin.deregister_site(a.lfdi, reason="decommissioned")
    before = await admin.table_dump()
    assert (await a.post("/edev", end_device(a.lfdi))).status == 403
    assert (await a.get("/edev")).status == 403
    assert await admin.table_dump() == before
    await admin.register_site(a.lfdi)  # the operator grants it again
    listing = (await a.get("/edev?l=10")).doc(r.EndDeviceList)
    assert [d.lFDI for d in listing.EndDevice] == [a.lfdi]


async def test_aggregator_cannot_claim_a_device_clients_lfdi(server, clients):
    """Issue 11 item 4: an aggregator cannot take, by POSTing an EndDevice, an LFDI the operator
    registered as a device client's or gave to another aggregator, nor a device certificate the server
    knows (2030.5 clause 6.4; CSIP-AUS aggregator clients manage only their own EndDevices)."""
    admin = server.store.admin
    agg_a, agg_b, b = clients["agg-a"], clients["agg-b"], clients["dev-b"]
    await admin.register_site(clients["dev-c"].lfdi)  # device client, out of band
    other = random_lfdi(random.Random(5))
    assert (await agg_b.post("/edev", end_device(other))).status == 201  # agg-b's site
    assert (await b.get("/dcap")).status == 200  # dev-b's certificate is known, not yet registered
    assert (await agg_a.get("/dcap")).status == 200  # agg-a's first contact happens before the snapshot
    before = await admin.table_dump()
    for lfdi in (clients["dev-c"].lfdi, other, b.lfdi, agg_b.lfdi):
        reply = await agg_a.post("/edev", end_device(lfdi))
        assert is_error(reply, 409), (lfdi, reply.status)
    assert await admin.table_dump() == before
    assert (await agg_a.get("/edev?l=10")).doc(r.EndDeviceList).all == 0
