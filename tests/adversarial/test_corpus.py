"""The adversarial corpus: at least 500 generated bad requests (tests/adversarial/strategies.py) over the
2030.5 API and the head-end. Each must get a 4xx with a 2030.5 Error (or the head-end's JSON error),
the database must be byte-for-byte unchanged (a dump of every table compared before and after), and the
server log must hold no traceback. 2030.5 clause 5.3 (Error, reasonCode); CSIP-AUS: a rejected request
changes nothing.

The server runs in its own thread and event loop; hypothesis drives a plain blocking client, so each
generated case is one real request over mutual TLS (or HTTP for the head-end on loopback)."""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import threading
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from sep2 import resources as r
from sep2.xml import from_xml, to_xml
from server.app import RunningServer, start_server
from server.store import build_control_base
from tests.adversarial.strategies import Bad, bad_2030_5, bad_headend
from tests.test_server_harness import derg, end_device, mup, response, server_config, subscription

pytest_plugins = ["tests.test_server_harness"]

EXAMPLES_PER_API = 260  # two APIs: 520 requests, >= 500 required
TOKEN = "adversarial-operator-token-0123456789"


class Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class LiveServer:
    """A real server on its own loop in a thread, with a little data in it."""

    def __init__(self, pki: Any, data_dir: Any) -> None:
        self.pki = pki
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        config = server_config(
            pki, data_dir, headend_tokens=[{"name": "op", "token": TOKEN, "role": "operator"}]
        )
        self.running: RunningServer = self.call(start_server(config))
        self.lfdi = pki.identities["dev-a"].lfdi
        self.context = pki.ssl("dev-a")
        self.context.check_hostname = False
        self.api: http.client.HTTPSConnection | None = None
        self.head: http.client.HTTPConnection | None = None

    def call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(60)

    def dump(self) -> dict[str, list[tuple[Any, ...]]]:
        return self.call(self.running.store.admin.table_dump())

    def request(self, case: Bad, *, headend: bool) -> tuple[int, dict[str, str], bytes]:
        headers = dict(case.headers)
        if case.content_type:
            headers["Content-Type"] = case.content_type
        for attempt in range(2):
            if headend:
                if self.head is None:
                    self.head = http.client.HTTPConnection("127.0.0.1", self.running.headend_port, timeout=30)
                connection: http.client.HTTPConnection = self.head
            else:
                if self.api is None:
                    self.api = http.client.HTTPSConnection(
                        "127.0.0.1", self.running.port, context=self.context, timeout=30
                    )
                connection = self.api
            try:
                connection.request(case.method, case.path, body=case.body, headers=headers)
                reply = connection.getresponse()
                body = reply.read()
                if reply.getheader("Connection", "").lower() == "close":
                    connection.close()
                    self.head, self.api = (None, self.api) if headend else (self.head, None)
                return reply.status, {k.lower(): v for k, v in reply.getheaders()}, body
            except (http.client.HTTPException, OSError):
                connection.close()
                self.head, self.api = (None, self.api) if headend else (self.head, None)
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def stop(self) -> None:
        for connection in (self.api, self.head):
            if connection is not None:
                connection.close()
        self.call(self.running.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def live(pki, tmp_path):
    server = LiveServer(pki, tmp_path / "data")
    try:
        yield server
    finally:
        server.stop()


def _populate(live: LiveServer) -> str:
    """A registered site with a DER, a control and a MUP; returns the control's mRID."""
    admin = live.running.store.admin
    mrid = live.call(
        admin.create_control("doe", "all", duration=3600, base=build_control_base(export_limit_w=1000))
    )
    case = Bad("setup", "POST", "/edev", to_xml(end_device(live.lfdi)), "application/sep+xml")
    assert live.request(case, headend=False)[0] == 201
    put = Bad("setup", "PUT", "/edev/1/der/1/derg", to_xml(derg()), "application/sep+xml")
    assert live.request(put, headend=False)[0] in (201, 204)
    return mrid


def test_generated_bad_requests_are_refused_and_change_nothing(live):
    mrid = _populate(live)
    documents = {
        ("POST", "/edev"): to_xml(end_device(live.lfdi)),
        ("PUT", "/edev/1/der/1/derg"): to_xml(derg(updated=1_700_000_500)),
        ("POST", "/mup"): to_xml(mup(live.lfdi, "AB" * 16)),
        ("POST", "/edev/1/sub"): to_xml(subscription("/edev/1/derp/1/derc", "https://127.0.0.1:9/n")),
        ("POST", "/rsps/1/rsp"): to_xml(response(live.lfdi, mrid)),
    }
    recorder = Recorder()
    logging.getLogger().addHandler(recorder)
    before = live.dump()
    seen: Counter[str] = Counter()
    problems: list[Any] = []
    common = settings(
        max_examples=EXAMPLES_PER_API,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )

    @common
    @given(bad_2030_5(documents))
    def on_2030_5(case: Bad) -> None:
        status, headers, body = live.request(case, headend=False)
        seen["2030.5 " + case.kind] += 1
        try:
            error = from_xml(body, r.Error) if case.method != "HEAD" else None
        except Exception as exc:
            error = exc
        if not 400 <= status < 500 or isinstance(error, Exception):
            problems.append((case, status, headers.get("x-error-detail"), body[:200]))

    @common
    @given(bad_headend(TOKEN))
    def on_headend(case: Bad) -> None:
        status, _headers, body = live.request(case, headend=True)
        seen["head-end " + case.kind] += 1
        try:
            payload = json.loads(body)
            ok = isinstance(payload, dict) and isinstance(payload.get("error"), str)
        except ValueError:
            ok = False
        if not 400 <= status < 500 or not ok:
            problems.append((case, status, body[:200]))

    try:
        on_2030_5()
        on_headend()
    finally:
        logging.getLogger().removeHandler(recorder)
    assert not problems, problems[:10]
    total = sum(seen.values())
    assert total >= 500, seen
    # Every class of bad input is exercised (the strategies' kinds).
    kinds = {k.split(" ", 1)[1].split(" ")[0] for k in seen}
    assert {"path", "paging", "method", "xml", "content", "json", "token", "unknown", "control"} <= kinds, (
        seen
    )
    assert live.dump() == before
    tracebacks = [r for r in recorder.records if r.exc_info or "Traceback" in r.getMessage()]
    assert not tracebacks, [r.getMessage() for r in tracebacks[:5]]
