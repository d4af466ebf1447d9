"""Subscription / Notification (2030.5 clause 9.3: a subscriber is notified of every change to the
subscribed resource), over real mutual TLS with a mutual-TLS notification listener."""

from __future__ import annotations

import asyncio

from sep2 import resources as r
from tests.test_server_harness import subscription
from tests.test_server_notifications import Subscriber, free_port

pytest_plugins = ["tests.test_server_harness"]


async def next_note(subscriber: Subscriber, count: int) -> r.Notification:
    """The ``count``-th notification (1-based), waiting for it."""
    async with asyncio.timeout(15):
        while len(subscriber.received) < count:
            subscriber.arrived.clear()
            await subscriber.arrived.wait()
    return subscriber.received[count - 1]


async def test_every_visible_change_is_notified(server, clients, pki):
    """Issue 11 item 7 (cactus S-ALL-25): a pollRate change of the EndDeviceList, an FSA added to the site,
    a DERProgram added to that FSA (the DERProgramList notification carries exactly that FSA's programs)
    are each notified."""
    admin = server.store.admin
    a = clients["dev-a"]
    await admin.create_group("other")
    await admin.create_program("other-p", primacy=4, group="other")  # an FSA dev-a is not in
    await admin.register_site(a.lfdi)
    edev = (await a.get("/edev?l=5")).doc(r.EndDeviceList).EndDevice[0].href
    port = free_port()
    subscriber = Subscriber(pki.directory, port)
    await subscriber.start()
    uri = f"https://127.0.0.1:{port}/notify"
    try:
        for resource in ("/edev", f"{edev}/fsa"):
            assert (await a.post(f"{edev}/sub", subscription(resource, uri))).status == 201

        await admin.set_rate("edev", 30, f"site:{a.lfdi}")
        note = await next_note(subscriber, 1)
        assert note.subscribedResource == "/edev" and note.Resource.pollRate == 30

        await admin.create_group("lab", description="Lab feeder")
        await admin.set_membership(a.lfdi, "lab")
        note = await next_note(subscriber, 2)
        assert note.subscribedResource == f"{edev}/fsa"
        lab = [f for f in note.Resource.FunctionSetAssignments if f.description == "Lab feeder"]
        assert len(lab) == 1  # listed before it holds a program
        derp_list = lab[0].DERProgramListLink.href
        assert (await a.get(derp_list)).doc(r.DERProgramList).all == 0
        assert (await a.post(f"{edev}/sub", subscription(derp_list, uri))).status == 201

        await admin.create_program("lab-p", primacy=3, group="lab", description="Lab program")
        async with asyncio.timeout(15):
            while not any(n.subscribedResource == derp_list for n in subscriber.received):
                subscriber.arrived.clear()
                await subscriber.arrived.wait()
        note = next(n for n in subscriber.received if n.subscribedResource == derp_list)
        assert [p.description for p in note.Resource.DERProgram] == ["Lab program"]
    finally:
        await subscriber.stop()
