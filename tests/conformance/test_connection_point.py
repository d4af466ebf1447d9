"""csipaus ConnectionPoint (CSIP-AUS: connectionPointId is the site's AEMO NMI; HTTP PUT semantics of
2030.5 clause 5.5 / RFC 9110 9.3.4), over real mutual TLS."""

from __future__ import annotations

from sep2 import resources as r
from tests.test_server_harness import end_device

pytest_plugins = ["tests.test_server_harness"]


async def test_put_creates_then_replaces_and_an_nmi_belongs_to_one_site(server, clients):
    """Issue 11 items 5 and 11: the first PUT answers 201 + Location, a replacing one 204; a site cannot
    claim another site's NMI (409 + Error, nothing changed), nor can the operator."""
    a, b = clients["dev-a"], clients["dev-b"]
    for c in (a, b):
        assert (await c.post("/edev", end_device(c.lfdi))).status == 201
    first = await a.put("/edev/1/cp", r.ConnectionPoint(connectionPointId="4102000001"))
    assert first.status == 201 and first.headers["Location"] == "/edev/1/cp"
    assert (await a.put("/edev/1/cp", r.ConnectionPoint(connectionPointId="4102000002"))).status == 204
    before = await server.store.admin.table_dump()
    reply = await b.put("/edev/2/cp", r.ConnectionPoint(connectionPointId="4102000002"))
    assert reply.status == 409 and isinstance(reply.doc(), r.Error)
    assert "another site" in reply.headers["X-Error-Detail"]
    assert await server.store.admin.table_dump() == before
    try:
        await server.store.admin.register_site(clients["dev-c"].lfdi, nmi="4102000002")
    except ValueError as exc:
        assert "nmi" in str(exc)
    else:
        raise AssertionError("the operator registered a site with another site's NMI")
    assert await server.store.admin.table_dump() == before
