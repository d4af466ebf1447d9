"""Head-end transport and tokens: TLS on the head-end listener, no plain HTTP on a non-loopback address
unless forced, tokens held as digests only and revocable while the server runs."""

from __future__ import annotations

import aiohttp
import pytest

from certs.pki import load_pki
from certs.tls import client_ssl_context
from server.app import start_server
from server.config import ConfigError, check_config, config_from_mapping
from server.headend.tokens import add_token, revoke_token, tokens_path
from tests.test_server_harness import server_config

pytest_plugins = ["tests.test_server_harness"]

ALICE = "alice-operator-token-0123456789"


async def _whoami(session: aiohttp.ClientSession, base: str, token: str) -> int:
    async with session.get(base + "/api/whoami", headers={"Authorization": f"Bearer {token}"}) as reply:
        return reply.status


async def test_tls_head_end_with_tokens_added_and_revoked_at_run_time(pki, tmp_path):
    data_dir = tmp_path / "data"
    config = server_config(
        pki,
        data_dir,
        headend_tls=True,
        headend_tokens=[{"name": "alice", "token": ALICE, "role": "operator"}],
    )
    running = await start_server(config)
    paths = load_pki(pki.directory)
    # The operator's client trusts the PKI's CA; it presents no certificate of its own.
    context = client_ssl_context(
        pki.identities["dev-a"].chain_path, pki.identities["dev-a"].key_path, paths.ca_chain
    )
    context.check_hostname = False
    base = f"https://127.0.0.1:{running.headend_port}"
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
            assert await _whoami(session, base, ALICE) == 200
            bob = add_token(data_dir, "bob", "viewer")  # what `derlink server token add` does
            assert await _whoami(session, base, bob) == 200  # no restart
            async with session.post(
                base + "/api/groups", json={"name": "g"}, headers={"Authorization": f"Bearer {bob}"}
            ) as reply:
                assert reply.status == 403  # a viewer
            revoke_token(data_dir, "alice")  # a configured token, revoked at run time
            assert await _whoami(session, base, ALICE) == 401
            revoke_token(data_dir, "bob")
            assert await _whoami(session, base, bob) == 401
        stored = tokens_path(data_dir).read_bytes()
        assert bob.encode() not in stored and ALICE.encode() not in stored  # digests only
        assert oct(tokens_path(data_dir).stat().st_mode & 0o777) == "0o600"
        async with aiohttp.ClientSession() as plain:  # the listener speaks TLS only
            with pytest.raises(aiohttp.ClientError):
                await _whoami(plain, f"http://127.0.0.1:{running.headend_port}", ALICE)
    finally:
        await running.stop()


def test_plain_http_on_a_non_loopback_head_end_is_refused_unless_forced(pki, tmp_path):
    for host in ("0.0.0.0", "192.0.2.10", "::", "headend.example"):
        with pytest.raises(ConfigError, match="headend_host"):
            check_config(config_from_mapping({"headend_host": host}))
        check_config(config_from_mapping({"headend_host": host, "headend_tls": True}))
        check_config(config_from_mapping({"headend_host": host, "headend_insecure_http": True}))
    for host in ("127.0.0.1", "::1", "localhost"):
        check_config(config_from_mapping({"headend_host": host}))


async def test_start_server_refuses_it_too(pki, tmp_path):
    with pytest.raises(ConfigError, match="headend_tls"):
        await start_server(server_config(pki, tmp_path / "data", headend_host="0.0.0.0"))
