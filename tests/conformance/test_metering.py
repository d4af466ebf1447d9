"""Metering mirrors (2030.5 clause 10.6 Metering Mirror; mRID rules of clause 8.2.4.1 / CSIP-AUS), over
real mutual TLS. A refusal is a 4xx with an ``Error`` body and stores nothing."""

from __future__ import annotations

from dataclasses import replace

from sep2 import resources as r
from tests.test_server_harness import end_device, mup

pytest_plugins = ["tests.test_server_harness"]


async def test_mrids_are_globally_unique(server, clients):
    """Issue 11 item 2 (cactus S-ALL-05 step 6): a MirrorUsagePoint or MirrorMeterReading whose mRID is
    another client's resource's is refused; a client reusing its own mRID updates its own resource."""
    a, b = clients["dev-a"], clients["dev-b"]
    for c in (a, b):
        assert (await c.post("/edev", end_device(c.lfdi))).status == 201
    mup_b = mup(b.lfdi, "B0" * 16)
    mup_b.MirrorMeterReading[0].mRID = "BB" * 16
    assert (await b.post("/mup", mup_b)).status == 201
    mup_a = mup(a.lfdi, "A0" * 16)
    created = await a.post("/mup", mup_a)
    assert created.status == 201
    before = await server.store.admin.table_dump()

    # The MUP mRID of another client's MUP.
    reply = await a.post("/mup", mup(a.lfdi, "B0" * 16))
    assert reply.status == 409 and isinstance(reply.doc(), r.Error)
    assert "MirrorUsagePoint.mRID" in reply.headers["X-Error-Detail"]
    # Its own MUP, with a MirrorMeterReading whose mRID is another client's (S-ALL-05 step 6).
    stolen = replace(mup_a.MirrorMeterReading[0], mRID="BB" * 16)
    reply = await a.post("/mup", replace(mup_a, MirrorMeterReading=[stolen]))
    assert reply.status == 409 and "MirrorMeterReading.mRID" in reply.headers["X-Error-Detail"]
    # The same, posted to its MUP directly.
    reply = await a.post(created.headers["Location"], stolen)
    assert reply.status == 409 and isinstance(reply.doc(), r.Error)
    assert await server.store.admin.table_dump() == before

    # Reusing its own mRIDs updates, as before: the same MUP, a new reading on the same MMR.
    again = replace(mup_a, description="renamed")
    again.MirrorMeterReading[0].Reading = r.Reading(
        value=99, timePeriod=r.DateTimeInterval(start=1_700_000_300, duration=300)
    )
    reply = await a.post("/mup", again)
    assert reply.status == 204 and reply.headers["Location"] == created.headers["Location"]
    values = [row["value"] for row in await server.store.admin.site_readings(a.lfdi)]
    assert values == [1234, 99]
