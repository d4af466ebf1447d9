"""Controls for one DER alone (issue 16 item 3: "Controls target the site or, where the profile allows, a
DER"), over real mutual TLS and the head-end's JSON API.

IEEE 2030.5-2018 §10.10 (DER resource): ``AssociatedDERProgramListLink`` - "DERPrograms having the
DERControl(s) for this DER". A control the operator gives a DER (site + DER id) is published in that DER's own
DERProgramList (/edev/{e}/der/{d}/derp), in a program with a DefaultDERControl and a DERControlList like the
site's, never in the site's FunctionSetAssignments; the DER links that list only once it holds a program, so
a site that is never given a per-DER control (every CSIP-AUS site) sees exactly the documents it saw before.
"""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web

from sep2 import resources as r
from server.config import ServerConfig
from server.console.views import target_names as console_target_names
from server.headend.api import create_headend_app
from server.store import build_control_base
from tests.test_server_harness import assert_valid_everywhere, end_device, response, subscription
from tests.test_server_notifications import Subscriber, free_port

pytest_plugins = ["tests.test_server_harness"]
TOKENS = [{"name": "op", "token": "per-der-operator-token-0123", "role": "operator"}]


async def test_a_der_control_is_published_in_that_ders_own_program_list_only(server, clients, pki):
    a = clients["dev-a"]
    assert (await a.post("/edev", end_device(a.lfdi))).status == 201
    admin = server.store.admin
    await admin.set_der_count(a.lfdi, 3)
    der_list = await a.get("/edev/1/der?l=10")
    assert_valid_everywhere(der_list.body)
    ders = der_list.doc(r.DERList).DER
    assert len(ders) == 3
    # No per-DER control yet: no DER links a program list (the documents CSIP-AUS clients always saw).
    assert all(d.AssociatedDERProgramListLink is None for d in ders)
    second = int(ders[1].href.rsplit("/", 1)[1])

    port = free_port()
    subscriber = Subscriber(pki.directory, port)
    await subscriber.start()
    try:
        mrid = await admin.create_control(
            "doe", f"site:{a.lfdi}", der=second, duration=600, base=build_control_base(max_lim_w_percent=3000)
        )
        der_list = await a.get("/edev/1/der?l=10")
        assert_valid_everywhere(der_list.body)  # AssociatedDERProgramListLink first in DER (official XSD)
        links = [d.AssociatedDERProgramListLink for d in der_list.doc(r.DERList).DER]
        assert links[0] is None and links[2] is None
        assert links[1].href == f"/edev/1/der/{second}/derp" and links[1].all == 1
        assert (await a.get(f"/edev/1/der/{second}")).doc(r.DER).AssociatedDERProgramListLink.all == 1

        plist = await a.get(f"{links[1].href}?l=10")
        assert_valid_everywhere(plist.body)
        (program,) = plist.doc(r.DERProgramList).DERProgram
        site_programs = (await a.get("/edev/1/fsa/0/derp?l=10")).doc(r.DERProgramList).DERProgram
        site_doe = next(p for p in site_programs if p.description == program.description)
        assert program.mRID != site_doe.mRID and program.primacy == site_doe.primacy
        assert program.href.startswith(f"/edev/1/der/{second}/derp/")
        controls = await a.get(f"{program.DERControlListLink.href}?l=10")
        assert_valid_everywhere(controls.body)
        (control,) = controls.doc(r.DERControlList).DERControl
        assert control.mRID == mrid and control.DERControlBase.opModMaxLimW == 3000
        assert control.href == f"{program.href}/derc/{control.href.rsplit('/', 1)[1]}"
        assert (await a.get(control.href)).doc(r.DERControl).mRID == mrid
        active = (await a.get(f"{program.ActiveDERControlListLink.href}?l=10")).doc(r.DERControlList)
        assert [c.mRID for c in active.DERControl] == [mrid]
        default = await a.get(program.DefaultDERControlLink.href)
        assert_valid_everywhere(default.body)
        assert default.doc(r.DefaultDERControl).DERControlBase.opModMaxLimW is None  # no per-DER default
        # The site's own programs do not carry it.
        site_controls = (await a.get(f"{site_doe.DERControlListLink.href}?l=10")).doc(r.DERControlList)
        assert mrid not in [c.mRID for c in site_controls.DERControl]
        # Another DER's list is empty; a DER of another site is not found.
        other = (await a.get(f"/edev/1/der/{int(ders[0].href.rsplit('/', 1)[1])}/derp")).doc(r.DERProgramList)
        assert other.all == 0
        assert (await a.get("/edev/1/der/999/derp")).status == 404

        # Subscriptions on the DER's DERControlList work as on the site's lists.
        uri = f"https://127.0.0.1:{port}/notify"
        reply = await a.post("/edev/1/sub", subscription(program.DERControlListLink.href, uri))
        assert reply.status == 201, reply.body
        newer = await admin.create_control(
            "doe", f"site:{a.lfdi}", der=second, start=server.store.clock() + 3600, duration=60,
            base=build_control_base(connect=False),
        )  # fmt: skip
        await asyncio.wait_for(subscriber.arrived.wait(), 10)
        note = subscriber.received[-1]
        assert note.subscribedResource == program.DERControlListLink.href
        assert {c.mRID for c in note.Resource.DERControl} == {mrid, newer}
        # A Response to the DER's control (its replyTo) is the site's to send.
        assert (await a.post(control.replyTo, response(a.lfdi, mrid, 1))).status == 201
    finally:
        await subscriber.stop()
    # The console names the target as its site and DER, not the store's key.
    a_site = await admin.site_id(a.lfdi)
    async with server.store.read() as conn:
        names = await console_target_names(conn, [f"d:{second}", f"s:{int(a_site)}", "all"])
    assert names == {f"d:{second}": f"site:{a.lfdi} · DER {second}", f"s:{int(a_site)}": f"site:{a.lfdi}",
                     "all": "all sites"}  # fmt: skip


async def test_headend_takes_a_der_target_and_refuses_a_bad_one_naming_the_field(server, clients):
    a = clients["dev-a"]
    assert (await a.post("/edev", end_device(a.lfdi))).status == 201
    store = server.store
    await store.admin.set_der_count(a.lfdi, 2)
    config = ServerConfig(data_dir=server.config.data_dir, headend_tokens=TOKENS)
    runner = web.AppRunner(create_headend_app(store, config))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    headers = {"Authorization": f"Bearer {TOKENS[0]['token']}"}
    try:
        async with aiohttp.ClientSession(base, headers=headers) as http:
            async with http.get(f"/api/sites/{a.lfdi}/ders") as reply:
                der_ids = [d["id"] for d in (await reply.json())["ders"]]
            body = {"program": "doe", "target": f"site:{a.lfdi}", "duration": 600, "max_lim_w_percent": 5000}
            before = len((await store.admin.table_dump())["controls"])
            for bad, words in (
                ({**body, "der": 999}, "has no DER 999"),
                ({**body, "target": "all", "der": der_ids[0]}, "not a group"),
                ({**body, "der": 0}, None),
            ):
                async with http.post("/api/controls", json=bad) as reply:
                    answer = await reply.json()
                    assert reply.status == 400 and answer["field"] == "der", answer
                    assert words is None or words in answer["error"], answer
            assert len((await store.admin.table_dump())["controls"]) == before  # nothing stored

            async with http.post("/api/controls", json={**body, "der": der_ids[1]}) as reply:
                assert reply.status == 201, await reply.text()
                mrid = (await reply.json())["mrid"]
            async with http.get(f"/api/controls/{mrid}") as reply:
                detail = await reply.json()
            assert detail["der"] == der_ids[1] and detail["target"] == f"site:{a.lfdi}"
            assert detail["acknowledgements"]["sites_targeted"] == 1
            async with http.put("/api/defaults", json={
                "program": "doe", "target": f"site:{a.lfdi}", "der": der_ids[1], "generation_limit_w": 2000,
            }) as reply:  # fmt: skip
                assert reply.status == 200, await reply.text()
            async with http.get("/api/openapi.json") as reply:
                spec = await reply.json()
            assert "der" in spec["components"]["schemas"]["ControlCreate"]["properties"]
    finally:
        await runner.cleanup()
    plist = (await a.get(f"/edev/1/der/{der_ids[1]}/derp")).doc(r.DERProgramList)
    program = plist.DERProgram[0]
    default = (await a.get(program.DefaultDERControlLink.href)).doc(r.DefaultDERControl)
    assert (
        default.DERControlBase.opModGenLimW.value * 10**default.DERControlBase.opModGenLimW.multiplier == 2000
    )
    # The site's DefaultDERControl is untouched.
    site_default = (await a.get("/edev/1/derp/2/dderc")).doc(r.DefaultDERControl)
    assert site_default.DERControlBase.opModGenLimW is None
