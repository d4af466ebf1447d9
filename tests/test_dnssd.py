"""DNS-SD (2030.5 clause 7): the server advertises _smartenergy._tcp on mDNS; py20305's own discovery and
the gateway's commissioning find /dcap by it. Real multicast, kept on the loopback interface (127.0.0.1)."""

from __future__ import annotations

import asyncio
import secrets
import tomllib
from pathlib import Path

import pytest

from certs.pki import issue_device_certificate
from gateway.commissioning import CommissioningState, run_commissioning
from sep2 import resources as r
from sep2.dnssd import Advertiser, discover, server_from_txt
from server.app import start_server
from server.config import ConfigError, load_config
from tests.test_commissioning_harness import Bench, RecordingUI
from tests.test_server_harness import Client, Pki, server_config

pytest_plugins = ["tests.test_server_harness", "tests.test_commissioning_harness"]

LOOPBACK = "127.0.0.1"
GOOD = {"txtvers": "1", "dcap": "/dcap", "https": "8443", "level": "-S1"}


@pytest.mark.parametrize(
    ("change", "port"),
    [
        ({}, 8443),
        ({"https": ""}, 443),  # present without a value: the default https port
        ({"https": None}, 443),
        ({"TXTVERS": "1", "txtvers": None}, 8443),  # keys are case-insensitive
        ({"txtvers": "2"}, None),
        ({"txtvers": None}, None),
        ({"dcap": ""}, None),
        ({"dcap": "dcap"}, None),
        ({"level": ""}, None),
        ({"https": "http"}, None),
        ({"https": "70000"}, None),
    ],
)
def test_clause_7_4_rules_decide_which_records_are_used(change: dict, port: int | None) -> None:
    txt = {**GOOD, **change}
    txt = {k: v for k, v in txt.items() if not (v is None and k == "txtvers")}
    server = server_from_txt("x", "192.0.2.7", txt)
    assert (server.port if server else None) == port
    if server:
        assert server.dcap_url == f"https://192.0.2.7:{port}/dcap"


def test_a_server_offering_plain_http_only_is_not_used() -> None:
    assert server_from_txt("x", "192.0.2.7", {k: v for k, v in GOOD.items() if k != "https"}) is None
    assert server_from_txt("x", "2001:db8::1", GOOD).dcap_url == "https://[2001:db8::1]:8443/dcap"


def test_config_names_the_field_for_an_unusable_advertisement(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="dnssd_address"):
        load_config(overrides={"dnssd": True, "host": "0.0.0.0"})
    with pytest.raises(ConfigError, match="dnssd_address"):
        load_config(overrides={"dnssd": True, "dnssd_address": "gateway.local"})
    config = load_config(overrides={"dnssd": True, "host": "0.0.0.0", "dnssd_address": "192.0.2.1"})
    assert config.dnssd_address == "192.0.2.1"


async def test_py20305_and_our_discovery_find_the_servers_dcap(pki: Pki, tmp_path: Path) -> None:
    from py20305.client.dnssd import MDNS
    from py20305.client.dnssd import discover as py20305_discover

    instance = f"derlink-{secrets.token_hex(3)}"
    running = await start_server(
        server_config(
            pki,
            tmp_path / "data",
            admin_enabled=False,
            headend_enabled=False,
            dnssd=True,
            dnssd_instance=instance,
        )
    )
    expected = f"{running.base_url}/dcap"
    try:
        ours = [s for s in await discover(1.5, LOOPBACK) if s.instance == instance]
        assert [s.dcap_url for s in ours] == [expected] and ours[0].level == "-S1"
        # a client nobody here wrote: py20305 asks with a legacy one-shot query and gets a unicast answer
        theirs = await asyncio.to_thread(py20305_discover, MDNS, timeout=2.0, interface=LOOPBACK)
        theirs = [s for s in theirs if s.instance.startswith(instance)]
        assert [s.dcap_url for s in theirs] == [expected] and theirs[0].is_2018
        # the advertised URL is the real server: a device client reads DeviceCapability from it
        client = Client(running.base_url, pki.ssl("dev-a"), pki.identities["dev-a"].lfdi)
        try:
            reply = await client.get(ours[0].dcap_url)
            assert reply.status == 200 and isinstance(reply.doc(), r.DeviceCapability)
        finally:
            await client.close()
    finally:
        await running.stop()
    # stopping says goodbye: the server is gone from the segment at once, not after the records' TTL
    assert [s for s in await discover(1.0, LOOPBACK) if s.instance == instance] == []


async def test_commissioning_finds_the_server_by_dnssd_and_resumes_after_none_answered(bench: Bench) -> None:
    ident = issue_device_certificate(bench.pki.directory, "gw-dnssd")
    await bench.register_site(ident.lfdi)
    opts = bench.options(
        cert=ident.chain_path,
        key=ident.key_path,
        sign_with_ca=None,
        dcap_url=None,
        discover=True,
        discover_interface=LOOPBACK,
        discover_timeout_s=1.0,
    )
    # Nothing advertises yet: the register step fails with what to do, and the earlier steps stay done.
    ui = RecordingUI()
    outcome = await run_commissioning(opts, ui)
    assert not outcome.ok and "no IEEE 2030.5 server answered DNS-SD" in outcome.message
    assert "--dcap-url" in outcome.next_action
    state = CommissioningState.load(opts.state_path)
    assert state.status("site") == "done" and state.status("register") != "done"

    advertiser = Advertiser(f"dnsp-{secrets.token_hex(3)}", LOOPBACK, bench.server.port)
    await advertiser.start()
    try:
        ui = RecordingUI()
        outcome = await run_commissioning(opts, ui)
    finally:
        await advertiser.stop()
    assert outcome.ok, (outcome.message, outcome.next_action, ui.text)
    assert "found 'dnsp-" in ui.text and bench.dcap_url in ui.text
    assert tomllib.loads(opts.site_toml_path.read_text())["server"]["dcap_url"] == bench.dcap_url
