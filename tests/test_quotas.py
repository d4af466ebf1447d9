"""Per-client quotas (server.store.quotas): MirrorUsagePoints per site, readings per request,
subscriptions per site and Responses per event are capped; over a cap the request is a 409 with a 2030.5
Error (reasonCode 2, resource limit reached) and nothing is stored; a repeated Response is idempotent; other
sites are unaffected. 2030.5 clause 5.3 (Error.reasonCode 2), clause 10.10 (Response)."""

from __future__ import annotations

from sep2 import resources as r
from sep2.xml import from_xml
from server.app import start_server
from server.store import build_control_base
from tests.test_server_harness import (
    Client,
    end_device,
    meter_reading,
    mup,
    response,
    server_config,
    subscription,
)

pytest_plugins = ["tests.test_server_harness"]

QUOTAS = dict(
    max_mups_per_site=2, max_readings_per_request=5, max_subscriptions_per_site=2, max_responses_per_event=3
)


def _refused(reply, field: str) -> None:
    assert reply.status == 409, (reply.status, reply.headers.get("X-Error-Detail"))
    assert from_xml(reply.body, r.Error).reasonCode == 2
    assert field in reply.headers["X-Error-Detail"]


async def test_quotas_refuse_over_the_cap_change_nothing_and_spare_other_sites(pki, tmp_path):
    running = await start_server(server_config(pki, tmp_path / "data", **QUOTAS))
    a = Client(running.base_url, pki.ssl("dev-a"), pki.identities["dev-a"].lfdi)
    b = Client(running.base_url, pki.ssl("dev-b"), pki.identities["dev-b"].lfdi)
    try:
        for client in (a, b):
            assert (await client.post("/edev", end_device(client.lfdi))).status == 201
        mrid = await running.store.admin.create_control(
            "doe", "all", duration=3600, base=build_control_base(export_limit_w=1000)
        )
        # MirrorUsagePoints: two per site; the same mRID again is an update, not a new one.
        for n in (1, 2, 2):
            assert (await a.post("/mup", mup(a.lfdi, f"{n:032X}"))).status in (201, 204)
        before = await running.store.admin.table_dump()
        _refused(await a.post("/mup", mup(a.lfdi, "3" * 32)), "MirrorUsagePoint")
        # Readings per request.
        many = mup(a.lfdi, f"{1:032X}")
        many.MirrorMeterReading = [
            meter_reading(10, 1_700_000_000 + 300 * i, mrid=f"{i:032X}") for i in range(6)
        ]
        _refused(await a.post("/mup", many), "6 readings")
        _refused(
            await a.request(
                "POST", "/mup/1", _mmr_list([meter_reading(1, 1_700_000_000 + i) for i in range(6)])
            ),
            "MirrorMeterReading",
        )
        # Subscriptions per site.
        for _ in range(2):
            sub = subscription("/edev/1/derp/1/derc", "https://127.0.0.1:9/n")
            assert (await a.post("/edev/1/sub", sub)).status == 201
        subs_before = await running.store.admin.table_dump()
        _refused(
            await a.post("/edev/1/sub", subscription("/edev/1/fsa", "https://127.0.0.1:9/n")), "Subscription"
        )
        assert (await running.store.admin.table_dump())["subscriptions"] == subs_before["subscriptions"]
        # Responses per event: a repeated Response is the same one (same Location, stored once).
        first = await a.post("/rsps/1/rsp", response(a.lfdi, mrid, status=1))
        again = await a.post("/rsps/1/rsp", response(a.lfdi, mrid, status=1))
        assert first.status == again.status == 201
        assert first.headers["Location"] == again.headers["Location"]
        for status in (2, 3):
            assert (await a.post("/rsps/1/rsp", response(a.lfdi, mrid, status=status))).status == 201
        _refused(await a.post("/rsps/1/rsp", response(a.lfdi, mrid, status=6)), "Response")
        assert len((await running.store.admin.table_dump())["responses"]) == 3
        assert (await running.store.admin.table_dump())["mups"] == before["mups"]
        # Site B's quotas are its own.
        assert (await b.post("/mup", mup(b.lfdi, "B" * 32))).status == 201
        assert (
            await b.post("/edev/2/sub", subscription("/edev/2/fsa", "https://127.0.0.1:9/n"))
        ).status == 201
        assert (await b.post("/rsps/1/rsp", response(b.lfdi, mrid, status=1))).status == 201
    finally:
        await a.close()
        await b.close()
        await running.stop()


def _mmr_list(items: list[r.MirrorMeterReading]) -> bytes:
    from sep2.xml import to_xml

    return to_xml(r.MirrorMeterReadingList(MirrorMeterReading=items, all=len(items), results=len(items)))
