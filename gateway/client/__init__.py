"""The gateway's IEEE 2030.5 client shell (aiohttp, mutual TLS) around the pure core in ``gateway.core``.

``Sep2Client`` (session) talks to the utility server; ``mapping`` converts documents to and from the core's
dataclasses and builds telemetry; ``Outbox`` makes telemetry and Responses durable until delivered.
"""

from gateway.client.mapping import DeviceSnapshot, MappingError, Measurements, SiteSnapshot
from gateway.client.outbox import Outbox
from gateway.client.session import (
    ClientConfig,
    ClientStatus,
    CommsError,
    RegistrationError,
    Sep2Client,
    ServerRejected,
)

__all__ = [
    "ClientConfig",
    "ClientStatus",
    "CommsError",
    "DeviceSnapshot",
    "MappingError",
    "Measurements",
    "Outbox",
    "RegistrationError",
    "Sep2Client",
    "ServerRejected",
    "SiteSnapshot",
]
