"""The response cache invalidates what a write changed and nothing else (issue 12): documents are versioned
by the site, its groups/programs (targets) and rates; a site's own writes leave other sites' documents,
and its own control documents, cached; operator changes are seen at once by exactly the affected sites.
Over real mutual TLS, on SQLite and on PostgreSQL (one process, cache switched on)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from sep2 import resources as r
from sep2.xml import from_xml
from server.app import RunningServer, start_server
from server.store import build_control_base
from server.store.versions import Deps, DocumentCache, Versions
from tests.test_server_harness import (
    BACKENDS,
    Client,
    Pki,
    derg,
    end_device,
    meter_reading,
    mup,
    response,
    server_config,
    subscription,
)

pytest_plugins = ["tests.test_server_harness"]


@pytest.fixture
async def cached(pki: Pki, tmp_path, backend: str, database_url: str | None) -> AsyncIterator[RunningServer]:
    config = server_config(pki, tmp_path / "data", database_url=database_url, cache_enabled=True)
    running = await start_server(config)
    assert running.store.engine.dialect.name == backend
    try:
        yield running
    finally:
        await running.stop()


@pytest.fixture
async def sites(cached: RunningServer, pki: Pki) -> AsyncIterator[dict[str, Client]]:
    made = {
        n: Client(cached.base_url, pki.ssl(n), pki.identities[n].lfdi) for n in ("dev-a", "dev-b", "dev-c")
    }
    for client in made.values():
        assert (await client.post("/edev", end_device(client.lfdi))).status == 201
    try:
        yield made
    finally:
        for client in made.values():
            await client.close()


class Probe:
    """GETs that say whether the cache answered (the server's cache-hit counter moved by one)."""

    def __init__(self, server: RunningServer) -> None:
        self.server = server

    def hits(self) -> float:
        return self.server.metrics.cache_hits._value.get()  # type: ignore[union-attr]

    async def get(self, client: Client, path: str) -> tuple[bool, bytes]:
        before = self.hits()
        reply = await client.get(path)
        assert reply.status == 200, (path, reply.status, reply.headers.get("X-Error-Detail"))
        return self.hits() == before + 1, reply.body

    async def primed(self, client: Client, path: str) -> bytes:
        await self.get(client, path)
        hit, body = await self.get(client, path)
        assert hit, f"{path} was not cached"
        return body


@BACKENDS
async def test_a_sites_own_writes_leave_other_documents_cached(cached, sites):
    """Readings, MUPs, Responses, subscriptions and DER documents of site A invalidate A's documents of that
    kind only: B's control list and A's own control list stay cached."""
    probe = Probe(cached)
    a, b = sites["dev-a"], sites["dev-b"]
    mrid = await cached.store.admin.create_control(
        "doe", "all", duration=3600, base=build_control_base(export_limit_w=1000)
    )
    b_list, a_list = "/edev/2/derp/2/derc?l=10", "/edev/1/derp/2/derc?l=10"
    b_body = await probe.primed(b, b_list)
    a_body = await probe.primed(a, a_list)
    await probe.primed(b, "/edev/2/fsa/0/derp?l=10")
    assert from_xml(await probe.primed(a, "/edev/1/sub?l=5"), r.SubscriptionList).all == 0

    created = await a.post("/mup", mup(a.lfdi))
    assert created.status == 201
    mup_path = created.headers["Location"]
    await probe.primed(a, mup_path)
    writes = [
        a.post(mup_path, meter_reading(77, 1_700_000_600)),
        a.post("/rsps/1/rsp", response(a.lfdi, mrid, 1)),
        a.post("/edev/1/sub", subscription("/edev/1/derp/2/derc", "https://127.0.0.1:1/notify")),
        a.put("/edev/1/der/1/derg", derg()),
    ]
    for write in writes:
        assert (await write).status in (201, 204)
        assert await probe.get(b, b_list) == (True, b_body)
        assert await probe.get(a, a_list) == (True, a_body)
        assert (await probe.get(b, "/edev/2/fsa/0/derp?l=10"))[0]
    # ... while the documents the writes did change are rebuilt at once.
    assert not (await probe.get(a, mup_path))[0]
    hit, body = await probe.get(a, "/edev/1/sub?l=5")
    assert not hit and from_xml(body, r.SubscriptionList).all == 1


@BACKENDS
async def test_operator_changes_reach_exactly_the_affected_sites(cached, sites):
    probe = Probe(cached)
    admin = cached.store.admin
    a, b, c = sites["dev-a"], sites["dev-b"], sites["dev-c"]
    await admin.create_group("feeder")
    await admin.set_membership(a.lfdi, "feeder")
    lists = {a: "/edev/1/derp/2/derc?l=10", b: "/edev/2/derp/2/derc?l=10", c: "/edev/3/derp/2/derc?l=10"}
    for client, path in lists.items():
        await probe.primed(client, path)

    # A group control: A (a member) sees it on its next GET; B and C are still served from the cache.
    group = await admin.create_control(
        "doe", "group:feeder", duration=600, base=build_control_base(export_limit_w=5)
    )
    hit, body = await probe.get(a, lists[a])
    assert not hit and group.encode() in body
    for other in (b, c):
        hit, body = await probe.get(other, lists[other])
        assert hit and group.encode() not in body

    # A site control for C reaches C only.
    own = await admin.create_control(
        "doe", f"site:{c.lfdi}", duration=600, base=build_control_base(export_limit_w=6)
    )
    assert (await probe.get(a, lists[a]))[0] and (await probe.get(b, lists[b]))[0]
    hit, body = await probe.get(c, lists[c])
    assert not hit and own.encode() in body

    # B joins the group: its targets change, so it sees the group control; A and C keep their documents.
    await admin.set_membership(b.lfdi, "feeder")
    hit, body = await probe.get(b, lists[b])
    assert not hit and group.encode() in body
    assert (await probe.get(a, lists[a]))[0] and (await probe.get(c, lists[c]))[0]

    # Cancelling the group control reaches both members, not C.
    await admin.cancel_control(group)
    for member in (a, b):
        hit, body = await probe.get(member, lists[member])
        assert not hit and group.encode() in body
    assert (await probe.get(c, lists[c]))[0]

    # A control for everyone reaches everyone.
    everyone = await admin.create_control(
        "doe", "all", duration=600, base=build_control_base(export_limit_w=7)
    )
    for client, path in lists.items():
        hit, body = await probe.get(client, path)
        assert not hit and everyone.encode() in body

    # Rates: a site's pollRate changes its own documents only; a global one changes everybody's.
    dcap = {client: await probe.primed(client, "/dcap") for client in lists}
    await admin.set_rate("dcap", 61, f"site:{a.lfdi}")
    hit, body = await probe.get(a, "/dcap")
    assert not hit and b'pollRate="61"' in body
    assert await probe.get(b, "/dcap") == (True, dcap[b])
    await admin.set_rate("dcap", 62)
    assert (await probe.get(a, "/dcap"))[1] == body  # rebuilt (it reads the global rate), own rate wins
    hit, body = await probe.get(b, "/dcap")
    assert not hit and b'pollRate="62"' in body


async def test_unknown_query_parameters_do_not_split_the_cache(pki, tmp_path):
    running = await start_server(server_config(pki, tmp_path / "data"))
    client = Client(running.base_url, pki.ssl("dev-a"), pki.identities["dev-a"].lfdi)
    probe = Probe(running)
    try:
        await client.post("/edev", end_device(client.lfdi))
        body = await probe.primed(client, "/edev/1/fsa?l=5")
        for noise in ("&x=1", "&utm=2&y=", "&x=1&l2=9"):
            assert await probe.get(client, f"/edev/1/fsa?l=5{noise}") == (True, body)
        assert not (await probe.get(client, "/edev/1/fsa?l=4"))[0]  # paging is part of the key
    finally:
        await client.close()
        await running.stop()


def _deps(versions: Versions, *tokens) -> Deps:
    with versions.reading() as deps:
        versions.depends(*tokens)
    return deps


def test_the_cache_is_bounded_in_bytes_and_evicts_the_least_recently_used():
    versions = Versions()
    per_entry = 100 + DocumentCache.ENTRY_OVERHEAD
    cache = DocumentCache(versions, max_bytes=3 * per_entry)
    for n in range(3):
        cache.put((f"k{n}",), _deps(versions, ("site", n)), float("inf"), bytes(100))
    assert cache.get(("k0",), 0.0) is not None  # k0 is now the most recently used
    cache.put(("k3",), _deps(versions, ("site", 3)), float("inf"), bytes(100))
    assert [cache.get((f"k{n}",), 0.0) is not None for n in range(4)] == [True, False, True, True]
    assert cache.bytes == 3 * per_entry == cache.max_bytes
    cache.put(("huge",), _deps(versions, ("site", 9)), float("inf"), bytes(cache.max_bytes))
    assert cache.get(("huge",), 0.0) is None and len(cache) == 3  # larger than the whole budget: not kept


def test_a_write_invalidates_only_documents_that_read_what_it_touched():
    versions = Versions()
    cache = DocumentCache(versions, max_bytes=1 << 20)
    cache.put(("a",), _deps(versions, ("site", 1), ("target", "all")), float("inf"), b"A")
    cache.put(("b",), _deps(versions, ("site", 2), ("target", "all")), float("inf"), b"B")
    cache.put(("t",), _deps(versions, ("rate", "all")), 10.0, b"T")
    versions.bump([("site", 1)])
    assert cache.get(("a",), 0.0) is None and cache.get(("b",), 0.0) == b"B"
    assert cache.get(("t",), 9.9) == b"T" and cache.get(("t",), 10.0) is None  # until: it changes by itself
    versions.bump([("target", "all")])
    assert cache.get(("b",), 0.0) is None
    cache.put(("b",), _deps(versions, ("site", 2)), float("inf"), b"B2")
    versions.bump(None)  # a writer that did not say what it changed: everything goes
    assert cache.get(("b",), 0.0) is None


def test_a_document_whose_inputs_changed_while_it_was_rendered_is_not_cached():
    versions = Versions()
    cache = DocumentCache(versions, max_bytes=1 << 20)
    with versions.reading() as deps:
        versions.bump([("target", "g:1")])  # a write commits between the query and the recording
        versions.depends(("target", "g:1"))
    cache.put(("x",), deps, float("inf"), b"maybe old")
    assert cache.get(("x",), 0.0) is None
    with versions.reading() as empty:
        pass
    cache.put(("y",), empty, float("inf"), b"depends on nothing recorded")
    assert cache.get(("y",), 0.0) is None
