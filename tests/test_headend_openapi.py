"""The head-end's OpenAPI document is generated from its routes and pydantic models: it validates as
OpenAPI 3.1, names every route with typed parameters, its request body and its answer's schema, and is
browsable at /api/docs (a self-contained page, checked in real Chromium). Bad bodies and query values are
400 naming the field."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web
from openapi_spec_validator import validate

from server.config import ServerConfig
from server.headend import models as m
from server.headend.api import ROUTES, create_headend_app
from server.headend.incidents_api import ROUTES as INCIDENT_ROUTES
from server.headend.routing import Route, add_routes
from server.store import Store
from tests.browser import chromium, needs_chromium

TOKENS = [{"name": "alice", "token": "operator-token-0123456789", "role": "operator"}]


@pytest.fixture
async def headend(tmp_path):
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path}/s.sqlite3")
    config = ServerConfig(data_dir=tmp_path, headend_tokens=TOKENS)
    runner = web.AppRunner(create_headend_app(store, config))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    async with aiohttp.ClientSession(base, headers={"Authorization": f"Bearer {TOKENS[0]['token']}"}) as s:
        yield s, ROUTES + INCIDENT_ROUTES, base
    await runner.cleanup()
    await store.close()


def _resolve(doc: dict, schema: dict) -> dict:
    if "$ref" in schema:
        name = schema["$ref"].removeprefix("#/components/schemas/")
        return doc["components"]["schemas"][name]
    return schema


async def test_document_validates_and_describes_every_route(headend) -> None:
    _session, routes, base = headend
    async with aiohttp.ClientSession() as anonymous:  # readable without a token
        async with anonymous.get(f"{base}/api/openapi.json") as reply:
            assert reply.status == 200
            doc = await reply.json()
    validate(doc)  # OpenAPI 3.1 (openapi-spec-validator)
    assert len(routes) > 40
    for route in routes:
        op = doc["paths"][route.path][route.method.lower()]
        assert op["x-derlink-role"] == ("operator" if route.write else "viewer")
        # every success status the handler may answer (the router refuses others) carries the answer schema
        successes = {int(code) for code in op["responses"] if code.startswith("2")}
        assert successes == route.successes, route.handler
        assert ("403" in op["responses"]) == route.write, route.handler  # only writes check the role
        for code in successes:
            answer = op["responses"][str(code)]["content"]["application/json"]["schema"]
            for option in (_resolve(doc, o) for o in answer.get("oneOf", [answer])):
                assert option.get("properties") or option.get("type") == "object"
        if route.body is not None:
            body = _resolve(doc, op["requestBody"]["content"]["application/json"]["schema"])
            assert body["additionalProperties"] is False, route.path  # unknown fields are errors
        elif route.upload:
            assert "text/csv" in op["requestBody"]["content"]
        elif route.method != "GET":
            assert route.query is not None or "{" in route.path, route.path
        path_params = {p["name"] for p in op["parameters"] if p["in"] == "path"}
        assert path_params == {part[1:-1] for part in route.path.split("/") if part.startswith("{")}

    # Types, bounds and required fields come from the models, not "string" for everything.
    sites = {p["name"]: p for p in doc["paths"]["/api/sites"]["get"]["parameters"]}
    assert sites["limit"]["schema"] == {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50,
                                        "title": "Limit"}  # fmt: skip
    create = _resolve(doc, doc["paths"]["/api/controls"]["post"]["requestBody"]["content"]["application/json"]
                      ["schema"])  # fmt: skip
    assert set(create["required"]) == {"program", "target", "duration"}
    assert {"export_limit_w", "ramp_tms", "randomize_start"} <= set(create["properties"])
    detail = doc["paths"]["/api/sites/{site}"]["get"]["responses"]["200"]["content"]["application/json"]
    assert "comms" in _resolve(doc, detail["schema"])["properties"]
    raise_ = doc["paths"]["/api/incidents"]["post"]["responses"]
    assert {"200", "201"} <= set(raise_) and "created is false" in raise_["200"]["description"]
    assert "409" in doc["paths"]["/api/incidents/{id}/actions"]["post"]["responses"]
    telemetry = doc["paths"]["/api/telemetry"]["get"]["responses"]["200"]["content"]
    assert set(telemetry) == {"application/json", "text/csv"}
    assert {p["name"] for p in doc["paths"]["/api/telemetry"]["get"]["parameters"]} >= {"from", "to", "site"}


async def test_bad_bodies_and_queries_name_the_field(headend) -> None:
    session, _routes, _base = headend
    cases = [
        ("POST", "/api/groups", {"name": "g", "colour": "red"}, "colour"),
        ("POST", "/api/groups", {"name": 5}, "name"),
        ("POST", "/api/groups", {}, "name"),
        ("POST", "/api/sites/bulk", {"sites": [{"lfdi": "AB" * 20}, {"lfdi": "AB" * 20, "pin": -1}]},
         "sites[1].pin"),
        ("POST", "/api/sites/bulk", {"sites": [{"lfdi": "xyz"}]}, "sites[0].lfdi"),
        ("POST", "/api/emergency/lift", {"target": "all", "waves": ["group:a"]}, "wave_interval"),
        ("POST", "/api/controls", {"program": "doe", "target": "all", "duration": 60, "ramp_tms": 1.5},
         "ramp_tms"),
        ("GET", "/api/sites?limit=lots", None, "limit"),
        ("GET", "/api/sites?limit=0", None, "limit"),
        ("GET", "/api/controls?active=maybe", None, "active"),
        ("DELETE", "/api/rates", None, "resource"),
    ]  # fmt: skip
    for method, path, body, field in cases:
        async with session.request(method, path, json=body) as reply:
            answer = await reply.json()
            assert reply.status == 400 and answer["field"] == field, (path, body, answer)
            assert answer["error"].startswith(f"{field}: "), answer


@needs_chromium
async def test_docs_page_renders_every_operation_in_chromium(headend) -> None:
    _session, routes, base = headend
    async with chromium() as browser:
        page = await browser.new_page()
        reply = await page.goto(f"{base}/api/docs")  # no token: the description is public
        assert reply is not None and reply.status == 200
        assert await page.title() == "derlink head-end API"
        for route in routes:
            section = page.locator(f"section#{route.handler}")
            assert await section.locator(".path").first.text_content() == route.path
        body = page.locator("section#control_create table").first
        assert "export_limit_w" in (await body.text_content() or "")
        await page.click("a[href='#schema-ControlCreated']")
        assert await page.locator("#schema-ControlCreated").is_visible()
        external = await page.evaluate(
            "[...document.querySelectorAll('script[src], link[href], img[src]')].map(e => e.src || e.href)"
        )
        assert external == []  # self-contained: no CDN


async def test_a_success_status_the_document_does_not_list_is_an_error() -> None:
    """The router answers 500 (and logs) when a handler answers a 2xx its route does not document, so the
    document cannot fall behind the handlers: a route documented 201 whose handler answers 200."""
    route = Route("POST", "/x", "x_make", True, "Make", m.Mrid, status=201)

    async def x_make(request: web.Request) -> object:
        return {"mrid": "AB" * 16}, int(request.query.get("status", "201"))

    app = web.Application()
    add_routes(app, [route], {"x_make": x_make})
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{runner.addresses[0][1]}") as session:
            async with session.post("/x") as reply:
                assert reply.status == 201
            async with session.post("/x?status=200") as reply:
                assert reply.status == 500
    finally:
        await runner.cleanup()
