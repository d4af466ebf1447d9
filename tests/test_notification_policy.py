"""Notification target policy (server.netpolicy): a client cannot make the server contact loopback,
link-local, private or multicast addresses, or the server itself, and a name that is re-pointed after the
subscription was accepted (DNS rebinding) is refused inside the connector, before any connection.

2030.5 clause 12.6 (Subscription/Notification): the server POSTs to the subscriber's notificationURI; the
CSIP-AUS profile requires https. Which hosts a server agrees to contact is the server's policy."""

from __future__ import annotations

import asyncio
import io
import logging
import socket

import pytest
from aiohttp.abc import AbstractResolver

from sep2 import resources as r
from sep2.xml import from_xml
from server.app import start_server
from server.logsafe import SafeFormatter, escape_control
from server.netpolicy import parse_allow_entry
from server.store import build_control_base
from tests.test_server_harness import Client, end_device, server_config, subscription

pytest_plugins = ["tests.test_server_harness"]

DERC = "/edev/1/derp/2/derc"


class SwitchingResolver(AbstractResolver):
    """Answers a fixed address per name; the test re-points names between subscribe and delivery."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET):
        self.asked.append(host)
        if host not in self.answers:
            raise OSError(f"{host} does not resolve")
        return [
            {
                "hostname": host,
                "host": self.answers[host],
                "port": port,
                "family": socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
        ]

    async def close(self) -> None:
        pass


async def _subs(store) -> list:
    return (await store.admin.table_dump())["subscriptions"]


async def test_every_forbidden_target_class_is_refused_at_subscribe_time(pki, tmp_path):
    running = await start_server(server_config(pki, tmp_path / "data", notify_allow=[]))
    running.target_policy.resolver = SwitchingResolver(
        {"localhost.test": "127.0.0.1", "public.test": "93.184.216.34"}
    )
    client = Client(running.base_url, pki.ssl("dev-a"), pki.identities["dev-a"].lfdi)
    try:
        assert (await client.post("/edev", end_device(client.lfdi))).status == 201
        refused = {
            "loopback": "https://127.0.0.1:4443/n",
            "loopback v6": "https://[::1]:4443/n",
            "v4-mapped loopback": "https://[::ffff:127.0.0.1]:4443/n",
            "link-local metadata": "https://169.254.169.254/latest/meta-data",
            "private 10/8": "https://10.1.2.3/n",
            "private 192.168/16": "https://192.168.1.20:8443/n",
            "shared 100.64/10": "https://100.64.0.1/n",
            "multicast": "https://224.0.0.251/n",
            "unspecified": "https://0.0.0.0:4443/n",
            "name resolving to loopback": "https://localhost.test/n",
            "name not resolving": "https://nowhere.test/n",
            "server's own 2030.5 port": f"https://127.0.0.1:{running.port}/edev",
            "admin /metrics": f"https://127.0.0.1:{running.admin_port}/metrics",
            "plain http": "http://93.184.216.34/n",
            "port out of range": "https://93.184.216.34:99999/n",
            "port zero": "https://93.184.216.34:0/n",
            "user info": "https://user:pw@93.184.216.34/n",
            "CRLF inside": "https://93.184.216.34/n\r\nX-Forged: 1",
        }
        for name, uri in refused.items():
            reply = await client.post("/edev/1/sub", subscription(DERC, uri))
            assert reply.status == 400, (name, reply.status)
            assert from_xml(reply.body, r.Error).reasonCode == 1, name
            assert "Subscription.notificationURI" in reply.headers["X-Error-Detail"], name
        assert await _subs(running.store) == []  # nothing stored
        # A public address, by number or by name, is accepted.
        for uri in ("https://93.184.216.34:8443/n", "https://public.test/n"):
            assert (await client.post("/edev/1/sub", subscription(DERC, uri))).status == 201, uri
        assert len(await _subs(running.store)) == 2
    finally:
        await client.close()
        await running.stop()


async def test_allow_lists_are_global_or_per_client_and_never_cover_the_server_itself(pki, tmp_path):
    dev_a, dev_b = pki.identities["dev-a"].lfdi, pki.identities["dev-b"].lfdi
    config = server_config(
        pki,
        tmp_path / "data",
        notify_allow=["127.0.0.0/8", "*.gw.example"],
        notify_allow_by_client={dev_a: ["10.0.0.0/8"]},
    )
    running = await start_server(config)
    running.target_policy.resolver = SwitchingResolver({"site7.gw.example": "192.168.7.7"})
    a = Client(running.base_url, pki.ssl("dev-a"), dev_a)
    b = Client(running.base_url, pki.ssl("dev-b"), dev_b)
    try:
        assert (await a.post("/edev", end_device(dev_a))).status == 201
        assert (await b.post("/edev", end_device(dev_b))).status == 201
        assert (await a.post("/edev/1/sub", subscription(DERC, "https://10.9.9.9/n"))).status == 201
        reply = await b.post("/edev/2/sub", subscription("/edev/2/derp/2/derc", "https://10.9.9.9/n"))
        assert reply.status == 400  # dev-a's allow-list is dev-a's only
        for client, site in ((a, 1), (b, 2)):
            ok = subscription(f"/edev/{site}/derp/2/derc", "https://site7.gw.example/n")
            assert (await client.post(f"/edev/{site}/sub", ok)).status == 201  # allowed by host name
            ok = subscription(f"/edev/{site}/derp/2/derc", "https://127.0.0.1:9/n")
            assert (await client.post(f"/edev/{site}/sub", ok)).status == 201  # loopback allow-listed
        for port in (running.port, running.admin_port, running.headend_port):
            bad = subscription(DERC, f"https://127.0.0.1:{port}/")
            reply = await a.post("/edev/1/sub", bad)
            assert reply.status == 400 and "this server itself" in reply.headers["X-Error-Detail"]
    finally:
        await a.close()
        await b.close()
        await running.stop()


async def test_a_name_re_pointed_to_a_forbidden_address_is_never_contacted(pki, tmp_path):
    """DNS rebinding: public at subscribe time, loopback at delivery. A real listener on that loopback
    port must see no connection; once the name is allow-listed, the same listener does see one (so the
    listener would have noticed)."""
    connections: list[object] = []
    arrived = asyncio.Event()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer.get_extra_info("peername"))
        arrived.set()
        writer.close()

    listener = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    resolver = SwitchingResolver({"rebind.test": "93.184.216.34"})
    running = await start_server(server_config(pki, tmp_path / "data", notify_allow=[]))
    running.target_policy.resolver = resolver
    client = Client(running.base_url, pki.ssl("dev-a"), pki.identities["dev-a"].lfdi)
    try:
        assert (await client.post("/edev", end_device(client.lfdi))).status == 201
        reply = await client.post("/edev/1/sub", subscription(DERC, f"https://rebind.test:{port}/n"))
        assert reply.status == 201
        resolver.answers["rebind.test"] = "127.0.0.1"  # re-pointed after the check
        await running.store.admin.create_control(
            "doe", "all", duration=600, base=build_control_base(export_limit_w=1000)
        )
        for _ in range(100):
            rows = (await running.store.admin.table_dump())["outbox"]
            if rows and rows[0][4] >= 1:  # attempts
                break
            await asyncio.sleep(0.05)
        row = (await running.store.admin.table_dump())["outbox"][0]
        assert row[4] >= 1 and "refused by the notification policy" in row[6], row
        assert "127.0.0.1 is a loopback address" in row[6]
        assert resolver.asked.count("rebind.test") >= 2  # resolved again at delivery
        await asyncio.sleep(0.3)
        assert connections == []
        # Control: allow the name, and the very same delivery now reaches the listener.
        running.target_policy.allow.append(parse_allow_entry("rebind.test"))
        await running.store.admin.create_control(
            "doe", "all", duration=600, base=build_control_base(export_limit_w=900)
        )
        await asyncio.wait_for(arrived.wait(), 10)
        assert connections
    finally:
        await client.close()
        await running.stop()
        listener.close()
        await listener.wait_closed()


def test_logged_values_cannot_forge_lines():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(SafeFormatter("%(levelname)s %(message)s"))
    log = logging.getLogger("derlink.test.logsafe")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("notification to %s failed", "https://x/n\r\nINFO forged line\x1b[2J\x00")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("real fault with %s", "a\nb")
    finally:
        log.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "WARNING notification to https://x/n\\r\\nINFO forged line\\x1b[2J\\x00 failed"
    assert not any(line.startswith("INFO forged") for line in lines)
    assert lines[1] == "ERROR real fault with a\\nb"
    assert lines[2].startswith("Traceback")  # the traceback of a real fault keeps its lines
    assert escape_control("plain é text") == "plain é text"


@pytest.mark.parametrize("entry", ["10.0.0.0/33", "bad host!", "", "a..b"])
def test_bad_allow_list_entries_are_config_errors_naming_the_field(entry):
    from server.config import ConfigError, config_from_mapping

    with pytest.raises(ConfigError, match="notify_allow"):
        config_from_mapping({"notify_allow": [entry]})
    with pytest.raises(ConfigError, match="notify_allow_by_client"):
        config_from_mapping({"notify_allow_by_client": {"ab" * 20: [entry]}})
