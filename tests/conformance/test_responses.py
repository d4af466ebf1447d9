"""Response function set (2030.5 clause 10.10.1 / Table 27 ResponseType), over real mutual TLS."""

from __future__ import annotations

from sep2 import resources as r
from server.store import VALID_RESPONSE_STATUSES, build_control_base
from tests.test_server_harness import end_device, response

pytest_plugins = ["tests.test_server_harness"]


def test_one_definition_of_the_response_types():
    """The store accepts exactly what the decoder admits: 1-14 and 252-254 (15-251, 255 reserved)."""
    assert VALID_RESPONSE_STATUSES is r.RESPONSE_TYPES
    assert set(range(1, 15)) | {252, 253, 254} == set(r.RESPONSE_TYPES)


async def test_reserved_response_status_is_refused(server, clients):
    """Issue 11 item 6: a reserved ResponseType (e.g. 15, 251, 255) gets 400 with an Error and nothing is
    stored; a defined one (e.g. 14, 252) is stored."""
    a = clients["dev-a"]
    assert (await a.post("/edev", end_device(a.lfdi))).status == 201
    mrid = await server.store.admin.create_control(
        "doe", f"site:{a.lfdi}", duration=600, base=build_control_base(export_limit_w=1000)
    )
    before = await server.store.admin.table_dump()
    for status in (0, 15, 251, 255):
        reply = await a.post("/rsps/1/rsp", response(a.lfdi, mrid, status=status))
        assert reply.status == 400 and isinstance(reply.doc(), r.Error), status
    assert await server.store.admin.table_dump() == before
    for status in (14, 252):
        assert (await a.post("/rsps/1/rsp", response(a.lfdi, mrid, status=status))).status == 201
    assert [x["status"] for x in await server.store.admin.responses_for_control(mrid)] == [14, 252]
