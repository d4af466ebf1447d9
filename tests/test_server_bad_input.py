"""Bad-input corpus: every case is a 4xx with a 2030.5 Error body, and the database is unchanged."""

from __future__ import annotations

from dataclasses import replace

from sep2 import resources as r
from sep2.xml import from_xml, to_xml
from tests.test_server_harness import (
    BACKENDS,
    dera,
    dercap,
    derg,
    ders,
    end_device,
    meter_reading,
    mup,
    populate,
    response,
    subscription,
)

pytest_plugins = ["tests.test_server_harness"]

NS = b'xmlns="urn:ieee:std:2030.5:ns"'
XML = "application/sep+xml"


def swap(doc: bytes, old: bytes, new: bytes) -> bytes:
    assert old in doc, (old, doc)
    return doc.replace(old, new, 1)


def corpus(world, lfdi: str, sfdi: int, other_lfdi: str, other_control: str, own_control: str):
    """(name, method, path, body, content type, expected status)."""
    ed = to_xml(end_device(lfdi))
    settings = to_xml(derg())
    der = "/edev/1/der/1"
    mup_path = world.mups["dev-a"]
    good_sub = subscription("/edev/1/derp/2/derc", "https://127.0.0.1:9/n")
    rsp = to_xml(response(lfdi, own_control))
    cases = [
        ("malformed xml", "POST", "/edev", b"<EndDevice " + NS + b"><sFDI>1</sFDI", XML, 400),
        ("not xml", "POST", "/edev", b"hello", XML, 400),
        ("empty body", "POST", "/edev", b"", XML, 400),
        (
            "xxe entity",
            "POST",
            "/edev",
            b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><EndDevice '
            + NS
            + b"><sFDI>&e;</sFDI><changedTime>0</changedTime></EndDevice>",
            XML,
            400,
        ),
        (
            "billion laughs",
            "POST",
            "/edev",
            b'<!DOCTYPE l [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;&a;">]><EndDevice '
            + NS
            + b">&b;</EndDevice>",
            XML,
            400,
        ),
        (
            "oversized body",
            "POST",
            "/edev",
            b"<EndDevice " + NS + b">" + b" " * 70_000 + b"</EndDevice>",
            XML,
            413,
        ),
        ("oversized der settings", "PUT", f"{der}/derg", settings + b" " * 70_000, XML, 413),
        ("text/plain", "POST", "/edev", ed, "text/plain", 415),
        ("json", "POST", "/edev", b'{"lFDI": "x"}', "application/json", 415),
        ("application/xml", "PUT", f"{der}/derg", settings, "application/xml", 415),
        ("no content type", "POST", "/mup", to_xml(mup(lfdi)), None, 415),
        ("unknown root", "POST", "/edev", b"<Gadget " + NS + b"/>", XML, 400),
        ("wrong namespace", "POST", "/edev", swap(ed, b"urn:ieee:std:2030.5:ns", b"urn:other"), XML, 400),
        ("wrong document type", "POST", "/edev", settings, XML, 400),
        ("lFDI is a word", "POST", "/edev", swap(ed, lfdi.encode(), b"not-an-lfdi"), XML, 400),
        ("lFDI too short", "POST", "/edev", swap(ed, lfdi.encode(), lfdi[:39].encode()), XML, 400),
        ("lFDI of someone else", "POST", "/edev", to_xml(end_device(other_lfdi)), XML, 403),
        ("sFDI mismatch", "POST", "/edev", swap(ed, str(sfdi).encode(), b"12345"), XML, 400),
        ("sFDI not a number", "POST", "/edev", swap(ed, str(sfdi).encode(), b"twelve"), XML, 400),
        (
            "unknown element",
            "POST",
            "/edev",
            swap(ed, b"</EndDevice>", b"<colour>red</colour></EndDevice>"),
            XML,
            400,
        ),
        (
            "unknown attribute",
            "POST",
            "/edev",
            swap(ed, b"<EndDevice ", b'<EndDevice colour="red" '),
            XML,
            400,
        ),
        ("stray text", "POST", "/edev", swap(ed, b"</EndDevice>", b"surprise</EndDevice>"), XML, 400),
        ("not utf-8", "POST", "/edev", swap(ed, b"</EndDevice>", b"\xff\xfe</EndDevice>"), XML, 400),
        (
            "settings without updatedTime",
            "PUT",
            f"{der}/derg",
            to_xml(replace(derg(), updatedTime=None))
            if False
            else swap(settings, b"<updatedTime>1700000000</updatedTime>", b""),
            XML,
            400,
        ),
        (
            "settings without setMaxW",
            "PUT",
            f"{der}/derg",
            swap(settings, b"<setMaxW><multiplier>3</multiplier><value>5</value></setMaxW>", b""),
            XML,
            400,
        ),
        (
            "setGradW out of range",
            "PUT",
            f"{der}/derg",
            swap(settings, b"<setGradW>27</setGradW>", b"<setGradW>70000</setGradW>"),
            XML,
            400,
        ),
        (
            "setMaxW value too big",
            "PUT",
            f"{der}/derg",
            swap(settings, b"<value>5</value>", b"<value>99999</value>"),
            XML,
            400,
        ),
        (
            "multiplier not a number",
            "PUT",
            f"{der}/derg",
            swap(settings, b"<multiplier>3</multiplier>", b"<multiplier>x</multiplier>"),
            XML,
            400,
        ),
        (
            "capability without rtgMaxW",
            "PUT",
            f"{der}/dercap",
            swap(to_xml(dercap()), b"<rtgMaxW><multiplier>3</multiplier><value>5</value></rtgMaxW>", b""),
            XML,
            400,
        ),
        ("capability on settings path", "PUT", f"{der}/derg", to_xml(dercap()), XML, 400),
        (
            "status without readingTime",
            "PUT",
            f"{der}/ders",
            swap(to_xml(ders()), b"<readingTime>1700000000</readingTime>", b""),
            XML,
            400,
        ),
        (
            "availability negative",
            "PUT",
            f"{der}/dera",
            swap(
                to_xml(dera()),
                b"<readingTime>1700000000</readingTime>",
                b"<readingTime>1700000000</readingTime><reservePercent>-4</reservePercent>",
            ),
            XML,
            400,
        ),
        ("unknown DER", "PUT", "/edev/1/der/999/derg", settings, XML, 404),
        ("unknown EndDevice", "PUT", "/edev/999/der/1/derg", settings, XML, 404),
        ("unknown DER document kind", "PUT", f"{der}/dercurve", settings, XML, 404),
        ("unknown path", "GET", "/gadgets", None, None, 404),
        ("unknown EndDevice GET", "GET", "/edev/999", None, None, 404),
        ("non-numeric id", "GET", "/edev/abc", None, None, 404),
        ("unknown program", "GET", "/edev/1/derp/999/derc", None, None, 404),
        ("unknown control", "GET", "/edev/1/derp/2/derc/99999", None, None, 404),
        ("unknown FSA", "GET", "/edev/1/fsa/77", None, None, 404),
        ("DELETE dcap", "DELETE", "/dcap", None, None, 405),
        ("POST dcap", "POST", "/dcap", ed, XML, 405),
        ("PUT edev list", "PUT", "/edev", ed, XML, 405),
        ("PATCH edev", "PATCH", "/edev/1", ed, XML, 405),
        ("POST time", "POST", "/tm", ed, XML, 405),
        ("DELETE control list", "DELETE", "/edev/1/derp/2/derc", None, None, 405),
        ("POST control list", "POST", "/edev/1/derp/2/derc", ed, XML, 405),
        ("limit not a number", "GET", "/edev?l=abc", None, None, 400),
        ("negative start", "GET", "/edev?s=-1", None, None, 400),
        ("after not a time", "GET", "/rsps/1/rsp?a=yesterday", None, None, 400),
        (
            "response status 0",
            "POST",
            "/rsps/1/rsp",
            swap(rsp, b"<status>1</status>", b"<status>0</status>"),
            XML,
            400,
        ),
        (
            "response status 200",
            "POST",
            "/rsps/1/rsp",
            swap(rsp, b"<status>1</status>", b"<status>200</status>"),
            XML,
            400,
        ),
        (
            "response status 300",
            "POST",
            "/rsps/1/rsp",
            swap(rsp, b"<status>1</status>", b"<status>300</status>"),
            XML,
            400,
        ),
        ("response without status", "POST", "/rsps/1/rsp", swap(rsp, b"<status>1</status>", b""), XML, 400),
        ("response unknown subject", "POST", "/rsps/1/rsp", to_xml(response(lfdi, "F" * 32)), XML, 400),
        (
            "response to another site's event",
            "POST",
            "/rsps/1/rsp",
            to_xml(response(lfdi, other_control)),
            XML,
            400,
        ),
        (
            "response for another device",
            "POST",
            "/rsps/1/rsp",
            to_xml(response(other_lfdi, own_control)),
            XML,
            400,
        ),
        (
            "response without subject",
            "POST",
            "/rsps/1/rsp",
            swap(rsp, f"<subject>{own_control}</subject>".encode(), b""),
            XML,
            400,
        ),
        (
            "response subject not hex",
            "POST",
            "/rsps/1/rsp",
            swap(rsp, own_control.encode(), b"Z" * 32),
            XML,
            400,
        ),
        ("unknown response set", "POST", "/rsps/2/rsp", rsp, XML, 404),
        ("mup for another device", "POST", "/mup", to_xml(mup(other_lfdi)), XML, 400),
        (
            "mup without roleFlags",
            "POST",
            "/mup",
            swap(to_xml(mup(lfdi)), b"<roleFlags>0003</roleFlags>", b""),
            XML,
            400,
        ),
        ("mup bad deviceLFDI", "POST", "/mup", swap(to_xml(mup(lfdi)), lfdi.encode(), b"XYZ"), XML, 400),
        (
            "new meter reading without ReadingType",
            "POST",
            mup_path,
            to_xml(meter_reading(1, 0, mrid="BB" * 16)),
            XML,
            400,
        ),
        (
            "reading value not integer",
            "POST",
            mup_path,
            swap(to_xml(meter_reading(7, 0)), b"<value>7</value>", b"<value>7.5</value>"),
            XML,
            400,
        ),
        ("readings for unknown mup", "POST", "/mup/9999", to_xml(meter_reading(1, 0)), XML, 404),
        ("delete unknown mup", "DELETE", "/mup/9999", None, None, 404),
        (
            "subscribe to dcap",
            "POST",
            "/edev/1/sub",
            to_xml(replace(good_sub, subscribedResource="/dcap")),
            XML,
            400,
        ),
        (
            "subscribe over http",
            "POST",
            "/edev/1/sub",
            to_xml(replace(good_sub, notificationURI="http://127.0.0.1:9/n")),
            XML,
            400,
        ),
        (
            "subscribe to another edev",
            "POST",
            "/edev/1/sub",
            to_xml(replace(good_sub, subscribedResource="/edev/2/derp/2/derc")),
            XML,
            400,
        ),
        ("subscribe limit 0", "POST", "/edev/1/sub", to_xml(replace(good_sub, limit=0)), XML, 400),
        ("subscribe encoding 1", "POST", "/edev/1/sub", to_xml(replace(good_sub, encoding=1)), XML, 400),
        (
            "subscribe unknown program",
            "POST",
            "/edev/1/sub",
            to_xml(replace(good_sub, subscribedResource="/edev/1/derp/99/derc")),
            XML,
            404,
        ),
        ("delete unknown subscription", "DELETE", "/edev/1/sub/999", None, None, 404),
        (
            "connection point id too long",
            "PUT",
            "/edev/1/cp",
            to_xml(r.ConnectionPoint(connectionPointId="N" * 32)).replace(b"N" * 32, b"N" * 40),
            XML,
            400,
        ),
        (
            "connection point blank",
            "PUT",
            "/edev/1/cp",
            to_xml(r.ConnectionPoint(connectionPointId="   ")),
            XML,
            400,
        ),
    ]
    return cases


@BACKENDS
async def test_bad_input_corpus(server, clients, pki):
    world = await populate(server, clients, pki)
    client = clients["dev-a"]
    ident = pki.identities["dev-a"]
    cases = corpus(
        world, ident.lfdi, ident.sfdi, clients["dev-b"].lfdi, world.controls["dev-b"], world.controls["dev-a"]
    )
    assert len(cases) >= 50
    assert len({c[0] for c in cases}) == len(cases)
    before = await server.store.admin.table_dump()
    problems = []
    for name, method, path, body, content_type, expected in cases:
        reply = await client.request(method, path, body, content_type)
        ok = reply.status == expected
        try:
            error = from_xml(reply.body, r.Error)
        except Exception as exc:
            ok, error = False, exc
        if not ok:
            problems.append((name, reply.status, expected, reply.headers.get("X-Error-Detail"), error))
    assert not problems
    assert await server.store.admin.table_dump() == before


@BACKENDS
async def test_error_detail_names_the_field(server, clients, pki):
    await populate(server, clients, pki)
    settings = swap(to_xml(derg()), b"<updatedTime>1700000000</updatedTime>", b"")
    reply = await clients["dev-a"].request("PUT", "/edev/1/der/1/derg", settings)
    assert reply.status == 400 and "updatedTime" in reply.headers["X-Error-Detail"]
    reply = await clients["dev-a"].request("GET", "/edev?l=abc")
    assert "l" in reply.headers["X-Error-Detail"]
    reply = await clients["dev-a"].request("DELETE", "/dcap")
    assert reply.status == 405 and "GET" in reply.headers["Allow"]
