"""DER function set: FunctionSetAssignments, DERPrograms and DefaultDERControl (2030.5 clause 10.10,
CSIP-AUS 2.4), over real mutual TLS, with notifications delivered to a mutual-TLS subscriber."""

from __future__ import annotations

import asyncio

from sep2 import resources as r
from server.store import build_control_base
from tests.test_server_harness import end_device, subscription
from tests.test_server_notifications import Subscriber, free_port

pytest_plugins = ["tests.test_server_harness"]


async def programs_of(client, edev: str) -> list[r.DERProgram]:
    fsas = (await client.get(f"{edev}/fsa?l=50")).doc(r.FunctionSetAssignmentsList)
    found = []
    for fsa in fsas.FunctionSetAssignments:
        found += (await client.get(f"{fsa.DERProgramListLink.href}?l=50")).doc(r.DERProgramList).DERProgram
    return found


async def test_every_program_links_a_default_before_any_is_set(server, clients, pki):
    """Issue 11 item 8 (2030.5 clause 10.10: a DERProgram's DefaultDERControl applies when no DERControl
    is active; cactus S-ALL-35..40 subscribe to it before the operator sets one): every DERProgram links a
    DefaultDERControl a client can GET and subscribe to; its empty DERControlBase is valid 2030.5; setting
    it later notifies the subscriber."""
    a = clients["dev-a"]
    assert (await a.post("/edev", end_device(a.lfdi))).status == 201
    progs = await programs_of(a, "/edev/1")
    assert len(progs) == 3 and all(p.DefaultDERControlLink is not None for p in progs)
    for p in progs:
        reply = await a.get(p.DefaultDERControlLink.href)
        assert reply.status == 200
        dderc = reply.doc(r.DefaultDERControl)
        assert dderc.mRID and dderc.DERControlBase == r.DERControlBase()

    port = free_port()
    subscriber = Subscriber(pki.directory, port)
    await subscriber.start()
    try:
        default = next(p for p in progs if p.description == "Default limits")
        reply = await a.post(
            "/edev/1/sub", subscription(default.DefaultDERControlLink.href, f"https://127.0.0.1:{port}/notify")
        )
        assert reply.status == 201
        await server.store.admin.set_default_control(
            "default", "all", base=build_control_base(export_limit_w=0)
        )
        await asyncio.wait_for(subscriber.arrived.wait(), 10)
        note = subscriber.received[-1].Resource
        assert isinstance(note, r.DefaultDERControl)
        assert note.DERControlBase.opModExpLimW.to_watts() == 0
    finally:
        await subscriber.stop()


async def test_higher_primacy_programs_carry_the_default_set_below_them(server, clients):
    """Issue 11 items 8/9 (2030.5 clause 10.10 primacy; CSIP-AUS: the client applies the DefaultDERControl
    of the highest-primacy program): a mode set on the 'default' program (primacy 20) is published in the
    DefaultDERControl of the emergency (1) and DOE (10) programs too, unless they set it themselves, so a
    client taking only the highest-primacy program's default (py20305) applies the operator's limits."""
    admin = server.store.admin
    a = clients["dev-a"]
    assert (await a.post("/edev", end_device(a.lfdi))).status == 201
    await admin.set_default_control(
        "default", "all", base=build_control_base(export_limit_w=5000, generation_limit_w=7000)
    )
    await admin.set_default_control("doe", "all", base=build_control_base(export_limit_w=3000))
    by_name = {p.description: p for p in await programs_of(a, "/edev/1")}
    got = {
        name: (await a.get(p.DefaultDERControlLink.href)).doc(r.DefaultDERControl)
        for name, p in by_name.items()
    }
    assert got["Default limits"].DERControlBase.opModExpLimW.to_watts() == 5000
    assert got["Dynamic operating envelope"].DERControlBase.opModExpLimW.to_watts() == 3000  # its own wins
    assert got["Dynamic operating envelope"].DERControlBase.opModGenLimW.to_watts() == 7000  # inherited
    assert got["Emergency"].DERControlBase.opModExpLimW.to_watts() == 3000
    assert got["Emergency"].DERControlBase.opModGenLimW.to_watts() == 7000
    assert len({d.mRID for d in got.values()}) == 3  # three resources, three mRIDs


async def test_operator_owns_fsas_and_programs(server, clients):
    """Issue 11 item 9 (2030.5 clause 10.10: FSAs group DERPrograms; DERProgramList ordered by primacy):
    the operator makes FSAs with a description and programs of any primacy, moves and switches off the
    built-in programs; a site whose FSAs hold only operator-defined programs sees nothing else."""
    admin = server.store.admin
    a = clients["dev-a"]
    await admin.create_group("lab", description="Lab feeder")
    await admin.register_site(a.lfdi, groups_=["lab"])
    await admin.create_program("lab-b", primacy=7, group="lab", description="Lab B")
    await admin.create_program("lab-a", primacy=3, group="lab", description="Lab A")
    for key in ("emergency", "doe"):
        await admin.update_program(key, enabled=False)
    await admin.update_program("default", group="lab", description="Lab default", primacy=9)
    edev = (await a.get("/edev?l=5")).doc(r.EndDeviceList).EndDevice[0].href
    fsas = (await a.get(f"{edev}/fsa?l=10")).doc(r.FunctionSetAssignmentsList)
    assert [f.description for f in fsas.FunctionSetAssignments] == ["Lab feeder"]
    progs = await programs_of(a, edev)
    assert [(p.description, p.primacy) for p in progs] == [("Lab A", 3), ("Lab B", 7), ("Lab default", 9)]
    # Switched on again, the built-in emergency program is back in every site's FSA 0.
    await admin.update_program("emergency", enabled=True)
    assert "Emergency" in [p.description for p in await programs_of(a, edev)]


async def test_default_with_only_a_ramp_rate(server, clients):
    """Issue 11 item 10 (2030.5 DefaultDERControl: every DERControlBase element is optional, setGradW is
    optional; cactus S-ALL-23/48): the head-end publishes a default that only sets setGradW, a control with
    only rampTms, and a control with no limit at all."""
    admin = server.store.admin
    a = clients["dev-a"]
    assert (await a.post("/edev", end_device(a.lfdi))).status == 201
    await admin.set_default_control("default", "all", base=build_control_base(), set_grad_w=100)
    await admin.create_control("doe", "all", duration=600, base=build_control_base(ramp_tms=500))
    await admin.create_control("emergency", "all", duration=600, base=build_control_base())
    progs = {p.description: p for p in await programs_of(a, "/edev/1")}
    dderc = (await a.get(progs["Default limits"].DefaultDERControlLink.href)).doc(r.DefaultDERControl)
    assert dderc.setGradW == 100 and dderc.DERControlBase == r.DERControlBase()
    doe = (await a.get(progs["Dynamic operating envelope"].DERControlListLink.href)).doc(r.DERControlList)
    assert doe.DERControl[0].DERControlBase == r.DERControlBase(rampTms=500)
    em = (await a.get(progs["Emergency"].DERControlListLink.href)).doc(r.DERControlList)
    assert em.DERControl[0].DERControlBase == r.DERControlBase()
