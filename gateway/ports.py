"""What the runtime's attachments (local API, MQTT publisher, metrics collector) see of the runtime.

A Protocol below ``gateway.runtime``: the runtime starts its attachments, and they depend only on this
interface, never on the runtime module, so the import graph has no circle.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from gateway.config import GatewaySettings
    from gateway.core import Decision, SiteController


class RuntimeView(Protocol):
    settings: GatewaySettings
    controller: SiteController | None
    decision: Decision | None
    runner: Any  # gateway.site_runner.SiteRunner, which itself reports through gateway.observability
    outbox_depth: int
    changed: asyncio.Condition  # notified after every decision and control-loop step

    def now(self) -> float: ...

    async def status(self) -> dict[str, Any]: ...

    async def set_inputs(self, reason: str, **changes: Any) -> Any: ...

    async def refresh_outbox_depth(self) -> int: ...

    def write_local_api_file(self, port: int) -> None: ...
