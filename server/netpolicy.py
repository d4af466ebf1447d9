"""Where the server may send notifications: the target policy for ``Subscription.notificationURI``.

A client chooses the URI the server POSTs to, with the server's own client certificate. Unchecked, that
lets a device make the server contact loopback services, the cloud metadata address (169.254.169.254),
the private network behind it, or the server's own listeners. The policy:

- ``https`` only, a host, a port in 1..65535, no user info, at most 512 characters;
- the target address must be globally routable: no loopback, link-local, private, shared, reserved,
  unspecified or multicast address (IPv4-mapped IPv6 forms included) unless an allow-list entry covers it:
  a CIDR containing the address, or the host name (``name`` or ``*.domain``). ``notify_allow`` applies to
  every client, ``notify_allow_by_client[lfdi]`` to one client certificate (e.g. an aggregator's own
  network);
- never the server itself (a local address on one of its own listening ports), whatever the allow-list.

The URI is checked when the subscription is made (a host name must resolve, and every address it
resolves to must pass) and again at delivery: the sender's connector calls :meth:`check_socket` with the
exact address it is about to connect to, so a name that has since been re-pointed (DNS rebinding) is
refused before any packet is sent.
"""

from __future__ import annotations

import contextvars
import errno
import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver
from aiohttp.resolver import DefaultResolver

from server.errors import BadRequest

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_URI_LENGTH = 512
_HOST_ENTRY = re.compile(r"(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


class TargetRefused(OSError):
    """A notification target the policy does not allow (an OSError so the connector reports it)."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EACCES, message)


def parse_allow_entry(entry: str) -> IpNetwork | str:
    """A CIDR/address as a network, or a host name (``*.domain`` allowed) in lower case; ValueError else."""
    try:
        return ipaddress.ip_network(entry, strict=False)
    except ValueError:
        pass
    name = entry.strip().lower().rstrip(".")
    if not name or len(name) > 253 or not _HOST_ENTRY.fullmatch(name):
        raise ValueError(f"{entry!r} is neither an IP address/network nor a host name")
    return name


def forbidden_class(address: IpAddress) -> str | None:
    """Why ``address`` is not a public unicast address, or None when it is."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for name in ("loopback", "link_local", "multicast", "unspecified", "private", "reserved"):
        if getattr(address, f"is_{name}"):
            return name.replace("_", "-")
    if not address.is_global:
        return "non-global"
    return None


@dataclass(frozen=True)
class Target:
    """The subscription being delivered: whose allow-list applies and which host name was asked for."""

    owner_lfdi: str
    host: str


CURRENT_TARGET: contextvars.ContextVar[Target | None] = contextvars.ContextVar("notify_target", default=None)


class TargetPolicy:
    def __init__(
        self,
        allow: Iterable[str] = (),
        allow_by_client: dict[str, list[str]] | None = None,
        local_hosts: Iterable[str] = (),
        resolver: AbstractResolver | None = None,
    ) -> None:
        self.allow = [parse_allow_entry(e) for e in allow]
        self.allow_by_client = {
            lfdi.lower(): [parse_allow_entry(e) for e in entries]
            for lfdi, entries in (allow_by_client or {}).items()
        }
        # The server's own listening ports; filled in once the listeners are bound (port 0 picks one).
        self.own_ports: set[int] = set()
        self.local_addresses: set[IpAddress] = set()
        for host in local_hosts:
            self._add_local(host)
        self._resolver = resolver

    @classmethod
    def from_config(cls, config: Any) -> TargetPolicy:
        return cls(
            config.notify_allow,
            config.notify_allow_by_client,
            local_hosts=(config.host, config.admin_host, config.headend_host),
        )

    @property
    def resolver(self) -> AbstractResolver:
        if self._resolver is None:
            self._resolver = DefaultResolver()
        return self._resolver

    @resolver.setter
    def resolver(self, resolver: AbstractResolver) -> None:
        self._resolver = resolver

    def _add_local(self, host: str) -> None:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return
        if address.is_unspecified:  # a wildcard listener answers on every address of this host
            try:
                infos = socket.getaddrinfo(socket.gethostname(), None)
            except OSError:
                infos = []
            for info in infos:
                self.local_addresses.add(ipaddress.ip_address(info[4][0].split("%")[0]))
        else:
            self.local_addresses.add(address)

    def _entries(self, owner_lfdi: str) -> list[IpNetwork | str]:
        return self.allow + self.allow_by_client.get(owner_lfdi.lower(), [])

    def host_allowed(self, host: str, owner_lfdi: str) -> bool:
        host = host.lower().rstrip(".")
        for entry in self._entries(owner_lfdi):
            if isinstance(entry, str) and (
                host == entry or (entry.startswith("*.") and host.endswith(entry[1:]))
            ):
                return True
        return False

    def address_problem(self, address: IpAddress, port: int, host: str, owner_lfdi: str) -> str | None:
        """Why connecting to ``address``:``port`` for ``host`` is refused, or None when it is allowed."""
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if port in self.own_ports and (address.is_loopback or address in self.local_addresses):
            return f"{address} port {port} is this server itself"
        why = forbidden_class(address)
        if why is None or self.host_allowed(host, owner_lfdi):
            return None
        if any(
            isinstance(e, ipaddress.IPv4Network | ipaddress.IPv6Network) and address in e
            for e in self._entries(owner_lfdi)
        ):
            return None
        return f"{address} is a {why} address and not in the notification allow-list"

    def check_uri(self, uri: str) -> tuple[str, int]:
        """(host, port) of a syntactically acceptable URI; BadRequest naming the field otherwise."""
        field = "Subscription.notificationURI"
        if len(uri) > MAX_URI_LENGTH:
            raise BadRequest(f"{field}: at most {MAX_URI_LENGTH} characters")
        if any(ord(c) < 0x21 or ord(c) == 0x7F for c in uri):
            raise BadRequest(f"{field}: must not contain spaces or control characters")
        try:
            parts = urlsplit(uri)
            port = 443 if parts.port is None else parts.port
        except ValueError:
            raise BadRequest(f"{field}: not a valid URL (bad port?)") from None
        if parts.scheme != "https" or not parts.hostname:
            raise BadRequest(f"{field}: must be an https:// URL")
        if parts.username is not None or parts.password is not None:
            raise BadRequest(f"{field}: must not carry user information")
        if not 1 <= port <= 65535:
            raise BadRequest(f"{field}: port {port} is not a TCP port")
        return parts.hostname, port

    async def check_subscription(self, uri: str, owner_lfdi: str) -> None:
        """Subscription time: the URI and every address its host resolves to now must be allowed."""
        host, port = self.check_uri(uri)
        field = "Subscription.notificationURI"
        addresses = await self._addresses(host, port)
        if not addresses:
            raise BadRequest(f"{field}: host {host!r} does not resolve")
        for address in addresses:
            problem = self.address_problem(address, port, host, owner_lfdi)
            if problem:
                raise BadRequest(f"{field}: refused, {problem}")

    async def _addresses(self, host: str, port: int) -> list[IpAddress]:
        try:
            return [ipaddress.ip_address(host)]
        except ValueError:
            pass
        try:
            resolved = await self.resolver.resolve(host, port, family=socket.AF_UNSPEC)
        except OSError:
            return []
        return [ipaddress.ip_address(str(res["host"]).split("%")[0]) for res in resolved]

    def check_socket(self, addr_info: Any) -> None:
        """Delivery time, inside the connector: refuse the exact address about to be connected to."""
        target = CURRENT_TARGET.get()
        sockaddr = addr_info[4]
        if target is None:
            raise TargetRefused(f"no notification target set for a connection to {sockaddr[0]}")
        address = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
        problem = self.address_problem(address, int(sockaddr[1]), target.host, target.owner_lfdi)
        if problem:
            raise TargetRefused(f"refused by the notification policy: {problem}")

    def socket_factory(self, addr_info: Any) -> socket.socket:
        """For ``aiohttp.TCPConnector(socket_factory=...)``: check, then make the socket."""
        self.check_socket(addr_info)
        family, type_, proto, _, _ = addr_info
        sock = socket.socket(family=family, type=type_, proto=proto)
        sock.setblocking(False)
        return sock
