"""Access-control matrix: for every pair of clients, every resource the victim owns, and every method, the
attacker gets a 4xx with an Error body, its lists never show the victim's resources, and nothing changes."""

from __future__ import annotations

import re

from sep2 import resources as r
from sep2.xml import from_xml, to_xml
from tests.test_server_harness import (
    BACKENDS,
    crawl,
    dercap,
    derg,
    end_device,
    meter_reading,
    mup,
    populate,
    response,
    subscription,
)

pytest_plugins = ["tests.test_server_harness"]

PRINCIPALS = ("dev-a", "dev-b", "agg-a", "agg-b")
OWNED = re.compile(r"^/(edev|mup)/\d+|^/rsps/1/rsp/\d+")


def _body_for(path: str) -> bytes:
    """A well-formed body of the kind the path accepts, so only authorisation can refuse it."""
    if path.endswith("/dercap"):
        return to_xml(dercap())
    if path.endswith(("/derg", "/ders", "/dera")):
        return to_xml(derg())
    if path.endswith("/cp"):
        return to_xml(r.ConnectionPoint(connectionPointId="STOLEN"))
    if path.endswith("/sub"):
        return to_xml(subscription(path[: -len("/sub")] + "/fsa", "https://127.0.0.1:9/x"))
    if path.startswith("/mup/"):
        return to_xml(meter_reading(1, 1_700_000_000))
    return to_xml(end_device("AB" * 20))


@BACKENDS
async def test_no_client_reaches_another_clients_resources(server, clients, pki):
    world = await populate(server, clients, pki)
    owned: dict[str, set[str]] = {}
    for name in PRINCIPALS:
        seen = await crawl(clients[name])
        owned[name] = {p for p in seen if OWNED.match(p)}
        assert owned[name], name
    before = await server.store.admin.table_dump()
    checked = 0
    for attacker in PRINCIPALS:
        for victim in PRINCIPALS:
            if attacker == victim:
                continue
            client = clients[attacker]
            for path in sorted(owned[victim]):
                for method in ("GET", "HEAD", "PUT", "POST", "DELETE"):
                    body = None if method in ("GET", "HEAD", "DELETE") else _body_for(path)
                    reply = await client.request(method, path, body)
                    assert 400 <= reply.status < 500, (attacker, victim, method, path, reply.status)
                    if method != "HEAD":
                        assert from_xml(reply.body, r.Error).reasonCode is not None
                    checked += 1
            # Lists never show the victim's resources.
            for listing in ("/edev?l=100", "/mup?l=100", "/rsps/1/rsp?l=100"):
                body = (await client.get(listing)).body.decode()
                for path in owned[victim]:
                    assert f'href="{path}"' not in body, (attacker, victim, listing, path)
            # Writes that name the victim's devices in the body are refused too.
            victim_lfdi = world.lfdis[victim][0]
            attempts = [
                ("/rsps/1/rsp", response(victim_lfdi, world.controls[victim])),
                ("/mup", mup(victim_lfdi)),
                ("/edev", end_device(victim_lfdi)),
            ]
            for path, doc in attempts:
                reply = await client.post(path, doc)
                assert 400 <= reply.status < 500, (attacker, victim, path, reply.status)
                # Answering the victim's control as one's own device is refused as well.
            own_lfdi = world.lfdis[attacker][0]
            if world.controls[victim] != world.controls[attacker]:
                reply = await client.post("/rsps/1/rsp", response(own_lfdi, world.controls[victim]))
                assert reply.status == 400
    assert checked > 500
    assert await server.store.admin.table_dump() == before


@BACKENDS
async def test_revoked_certificate_is_refused_on_next_request(server, clients, pki):
    await populate(server, clients, pki)
    client = clients["dev-b"]
    assert (await client.get("/edev/2")).status == 200
    await server.store.admin.set_revoked(client.lfdi, True, actor="test", reason="lost device")
    reply = await client.get("/edev/2")
    assert reply.status == 403 and from_xml(reply.body, r.Error)
    await server.store.admin.set_revoked(client.lfdi, False, actor="test")
    assert (await client.get("/edev/2")).status == 200
