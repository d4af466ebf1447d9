"""Input limits (server.limits): oversized numbers, odd digits, deep JSON, control characters and bad
tokens are 4xx with an error naming the field, on the 2030.5 API (2030.5 clause 5.3: Error reasonCode)
and on the head-end, and they change nothing in the database."""

from __future__ import annotations

import logging

import aiohttp

from sep2 import resources as r
from sep2.xml import from_xml
from server.limits import paging_cache_key
from tests.test_server_harness import populate

pytest_plugins = ["tests.test_server_harness"]

XML = "application/sep+xml"
NS = 'xmlns="urn:ieee:std:2030.5:ns"'


async def test_2030_5_numbers_and_ids_out_of_range_are_4xx_with_error(server, clients, pki, caplog):
    await populate(server, clients, pki)
    client = clients["dev-a"]
    lfdi = client.lfdi
    huge = "9" * 5000
    cases = [
        ("GET", "/edev?l=\u00b2", None, 400),  # superscript two: str.isdigit() but not a number
        ("GET", "/edev?l=\u0663", None, 400),  # Arabic-Indic three
        ("GET", "/edev?s=" + "1" * 30, None, 400),
        ("GET", "/edev?l=" + "1" * 30, None, 400),
        ("GET", "/edev?a=" + "1" * 30, None, 400),
        ("GET", "/edev?a=1e5", None, 400),
        ("GET", "/edev/" + "1" * 25, None, 404),
        ("GET", "/edev/" + "1" * 25 + "/derp/1/derc", None, 404),
        ("GET", "/edev/1/derp/" + "9" * 12, None, 404),
        ("GET", "/edev/\u0663", None, 404),
        ("GET", "/mup/" + "7" * 19, None, 404),
        ("DELETE", "/edev/1/sub/" + "5" * 40, None, 404),
        (
            "POST",
            "/edev",
            f"<EndDevice {NS}><lFDI>{lfdi}</lFDI><sFDI>{huge}</sFDI><changedTime>0</changedTime></EndDevice>",
            400,
        ),
        (
            "POST",
            "/edev/1/sub",
            f"<Subscription {NS}><subscribedResource>/edev/{'1' * 30}/fsa</subscribedResource><encoding>0"
            "</encoding><level>+S1</level><limit>1</limit><notificationURI>https://127.0.0.1:9/n"
            "</notificationURI></Subscription>",
            400,
        ),
    ]
    before = await server.store.admin.table_dump()
    with caplog.at_level(logging.INFO):
        for method, path, body, expected in cases:
            reply = await client.request(method, path, body.encode() if body else None, XML)
            assert reply.status == expected, (path[:60], reply.status, reply.headers.get("X-Error-Detail"))
            assert from_xml(reply.body, r.Error).reasonCode in (0, 1), path[:60]
    assert await server.store.admin.table_dump() == before
    assert not [rec for rec in caplog.records if rec.exc_info], "no traceback for bad input"
    # The XML integer error names the element.
    reply = await client.request("POST", "/edev", cases[12][2].encode(), XML)
    assert "sFDI" in reply.headers["X-Error-Detail"]


async def test_unknown_query_parameters_are_ignored_and_share_one_cache_entry(server, clients, pki):
    await populate(server, clients, pki)
    client = clients["dev-a"]
    plain = await client.get("/edev/1/fsa")
    junk = await client.get("/edev/1/fsa?junk=1&x=%00")
    assert plain.status == junk.status == 200 and plain.body == junk.body
    assert paging_cache_key("/edev", {"junk": "1", "l": "5", "s": "0"}) == "/edev?s=0&l=5"
    assert paging_cache_key("/edev", {"z": "7"}) == "/edev"


def test_doe_control_ids_are_valid_path_ids():
    from server import limits
    from server.headend.doe import DOE_ID_BASE, MAX_START

    assert limits.DOE_ID_BASE == DOE_ID_BASE and limits.DOE_ID_MAX == DOE_ID_BASE + MAX_START
    assert limits.path_id(str(DOE_ID_BASE + MAX_START), "c") == DOE_ID_BASE + MAX_START
    assert limits.path_id(str(2**31 - 1), "e") == 2**31 - 1


async def test_head_end_json_limits_control_characters_and_tokens(server, clients, pki, caplog):
    await populate(server, clients, pki)
    token = (server.config.data_dir / "headend-token").read_text().strip()
    base = f"http://127.0.0.1:{server.headend_port}"
    auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    deep = "[" * 100_000 + "]" * 100_000
    nested = "[" * 40 + "]" * 40
    cases = [
        ("POST", "/api/groups", '{"name": ' + deep + "}", 400, "body"),
        ("POST", "/api/groups", '{"name": "g", "description": ' + nested + "}", 400, "description"),
        ("POST", "/api/sites", '{"lfdi": "ab", "pin": ' + "7" * 5000 + "}", 400, "body"),
        ("POST", "/api/sites", '{"lfdi": "ab", "pin": 1e999}', 400, "body"),
        ("POST", "/api/sites", '{"lfdi": "ab", "pin": NaN}', 400, "body"),
        ("POST", "/api/groups", '{"name": "bad\\u0000group"}', 400, "name"),
        ("POST", "/api/groups", '{"name": "bad\\u000bgroup"}', 400, "name"),
        ("POST", "/api/sites", '{"lfdi": "' + "a" * 40 + '", "nmi": "41020\\u000b0001"}', 400, "nmi"),
        ("POST", "/api/groups", '{"name": "\\ud800"}', 400, "name"),
        ("GET", "/api/sites?q=a%0bb", None, 400, "q"),
        ("POST", "/api/groups", b"\xff\xfe{}", 400, "body"),
    ]
    before = await server.store.admin.table_dump()
    async with aiohttp.ClientSession() as session:
        with caplog.at_level(logging.INFO):
            for method, path, body, expected, field in cases:
                data = body.encode() if isinstance(body, str) else body
                async with session.request(method, base + path, data=data, headers=auth) as reply:
                    payload = await reply.json()
                    assert reply.status == expected, (path, (body or "")[:50], reply.status, payload)
                    assert (payload["field"] or "").startswith(field), (path, (body or "")[:50], payload)
            # A token with a byte that is not UTF-8 is simply unknown: 401, not 500.
            headers = {"Authorization": b"Bearer abc\xffdef".decode("latin-1")}
            async with session.get(base + "/api/whoami", headers=headers) as reply:
                assert reply.status == 401 and (await reply.json())["field"] == "Authorization"
            # A DOE CSV with a value that overflows every conversion: 400 naming the column.
            header = "lfdi,start,duration,export_limit_w,import_limit_w\n"
            csv = header + f"{clients['dev-a'].lfdi},0,300,1e308,1\n"
            async with session.post(
                base + "/api/does", data=csv, headers={**auth, "Content-Type": "text/csv"}
            ) as reply:
                text = await reply.text()
                assert reply.status == 400 and "export_limit_w" in text, text
    assert await server.store.admin.table_dump() == before
    assert not [rec for rec in caplog.records if rec.exc_info], "no traceback for bad input"
