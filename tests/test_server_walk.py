"""Walk the whole 2030.5 tree over real mutual TLS as a device client and as an aggregator client; every
response body validates against the official IEEE 2030.5 + CSIP-AUS schema and against our own."""

from __future__ import annotations

from lxml import etree

from tests.test_server_harness import BACKENDS, assert_valid_everywhere, crawl, populate

pytest_plugins = ["tests.test_server_harness"]

EXPECTED_TYPES = {
    "DeviceCapability",
    "Time",
    "EndDeviceList",
    "EndDevice",
    "Registration",
    "ConnectionPoint",
    "FunctionSetAssignmentsList",
    "FunctionSetAssignments",
    "DERProgramList",
    "DERProgram",
    "DERControlList",
    "DERControl",
    "DefaultDERControl",
    "DERList",
    "DER",
    "DERCapability",
    "DERSettings",
    "DERStatus",
    "DERAvailability",
    "MirrorUsagePointList",
    "MirrorUsagePoint",
    "ResponseSetList",
    "ResponseSet",
    "ResponseList",
    "Response",
    "SubscriptionList",
    "Subscription",
}


def _types(seen: dict) -> set[str]:
    return {etree.QName(etree.fromstring(reply.body)).localname for reply in seen.values()}


@BACKENDS
async def test_device_client_walks_whole_tree(server, clients, pki):
    await populate(server, clients, pki)
    seen = await crawl(clients["dev-a"])
    failures = {
        path: (reply.status, reply.headers.get("X-Error-Detail"))
        for path, reply in seen.items()
        if reply.status != 200
    }
    assert not failures
    for path, reply in seen.items():
        assert reply.headers["Content-Type"].startswith("application/sep+xml"), path
        assert_valid_everywhere(reply.body)
    assert _types(seen) >= EXPECTED_TYPES
    # dev-a is in feeder-1: it sees two FSAs (all sites + the feeder's program).
    assert "/edev/1/fsa/0" in seen and any(
        p.startswith("/edev/1/fsa/") and p != "/edev/1/fsa/0" for p in seen if p.count("/") == 4
    )
    # It never sees another client's EndDevice.
    assert {p.split("/")[2] for p in seen if p.startswith("/edev/")} == {"1"}


@BACKENDS
async def test_aggregator_client_walks_whole_tree(server, clients, pki):
    world = await populate(server, clients, pki)
    seen = await crawl(clients["agg-a"])
    failures = {
        path: (reply.status, reply.headers.get("X-Error-Detail"))
        for path, reply in seen.items()
        if reply.status != 200
    }
    # The aggregator's sites have no PIN issued: Registration is absent (404), everything else resolves.
    assert set(failures) == {f"{edev}/rg" for edev in world.sites["agg-a"]}
    for reply in seen.values():
        if reply.status == 200:
            assert_valid_everywhere(reply.body)
    assert _types(seen) >= EXPECTED_TYPES - {"Registration"}
    owned = {edev.split("/")[2] for edev in world.sites["agg-a"]}
    assert {p.split("/")[2] for p in seen if p.startswith("/edev/")} == owned
