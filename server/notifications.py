"""Delivery of the durable notification outbox.

Writes that change a subscribed list queue one outbox row per affected subscription in the same
transaction (``server.store._enqueue``). This sender renders the subscribed resource as it is *now*
(honouring the subscription's ``limit``), wraps it in a Notification and POSTs it over mutual TLS to the
``notificationURI``. A failure keeps the row and schedules a retry with exponential backoff (capped, never
dropped); rows survive restarts because they live in the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from typing import Any

import aiohttp

from sep2 import resources as r
from sep2.xml import to_xml
from server.api import SEP_XML, Renderer
from server.config import ServerConfig
from server.errors import BadRequest, NotFound
from server.netpolicy import CURRENT_TARGET, PolicyResolver, Target, TargetPolicy
from server.store import RequestScope, Store

log = logging.getLogger("derlink.server.notifications")


def notification_client_ssl(config: ServerConfig) -> ssl.SSLContext:
    """The server acts as a TLS client towards subscribers, presenting a clientAuth certificate.

    Subscribers (gateways, aggregators) are usually addressed by IP with device certificates, so the
    chain is verified against our CA but the host name is not checked.
    """
    from certs.tls import client_ssl_context

    chain, key, ca = config.notify_files()
    return client_ssl_context(chain, key, ca, check_hostname=False)


class NotificationSender:
    def __init__(
        self, store: Store, config: ServerConfig, metrics: Any = None, policy: TargetPolicy | None = None
    ) -> None:
        self.store = store
        self.config = config
        self.metrics = metrics
        self.policy = policy or TargetPolicy.from_config(config)
        self.renderer = Renderer(store, config)
        self.concurrency = 16

    def backoff(self, attempts: int) -> float:
        return min(self.config.notify_retry_initial * (2**attempts), self.config.notify_retry_max)

    async def run(self) -> None:
        context = notification_client_ssl(self.config)
        timeout = aiohttp.ClientTimeout(total=self.config.notify_timeout)
        # The policy sees every address the connector is about to connect to (names re-resolved per
        # connection, no DNS cache), so a subscription whose name now points somewhere forbidden is
        # refused before any packet leaves.
        connector = aiohttp.TCPConnector(
            ssl=context,
            limit=self.concurrency,
            use_dns_cache=False,
            resolver=PolicyResolver(self.policy),
            socket_factory=self.policy.socket_factory,
        )
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            while True:
                try:
                    await self.deliver_due(session)
                except Exception:
                    log.exception("notification pass failed")
                await self._sleep_until_due()

    async def _sleep_until_due(self) -> None:
        next_due = await self.store.next_notification_time()
        delay = 5.0 if next_due is None else max(0.0, min(5.0, next_due - time.time()))
        self.store.outbox_event.clear()
        if delay > 0:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation that
            # arrives as the event fires, and then RunningServer.stop() would wait forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self.store.outbox_event.wait()

    async def deliver_due(self, session: aiohttp.ClientSession) -> int:
        now = time.time()
        rows = await self.store.due_notifications(now, limit=self.concurrency * 4)
        semaphore = asyncio.Semaphore(self.concurrency)

        async def one(row: Any) -> None:
            async with semaphore:
                # Another server process on the same database may have taken it meanwhile.
                lease = time.time() + self.config.notify_timeout + 5.0
                if await self.store.claim_notification(row.outbox_id, now, lease):
                    await self.deliver(session, row)

        await asyncio.gather(*(one(row) for row in rows))
        return len(rows)

    async def deliver(self, session: aiohttp.ClientSession, row: Any) -> None:
        scope = RequestScope(
            lfdi=row.owner_lfdi,
            kind="aggregator" if row.owner_kind == "aggregator" else "device",
            aggregator_id=row.owner_aggregator,
        )
        subscription_href = f"/edev/{row.site_id}/sub/{row.id}"
        try:
            resource = await self.renderer.subscribed_resource(row, scope)
            status = 0
        except NotFound:
            resource, status = None, 4  # the watched resource no longer exists
        note = r.Notification(
            subscribedResource=row.subscribed_href,
            Resource=resource,
            status=status,
            subscriptionURI=subscription_href,
        )
        body = to_xml(note)
        try:
            host, _port = self.policy.check_uri(row.notification_uri)
            CURRENT_TARGET.set(Target(owner_lfdi=row.owner_lfdi, host=host))
            async with session.post(
                row.notification_uri, data=body, headers={"Content-Type": SEP_XML}
            ) as response:
                await response.read()
                if 200 <= response.status < 300:
                    await self.store.notification_delivered(row.outbox_id, row.seq)
                    self._count("delivered")
                    log.info(
                        "notification delivered subscription=%s uri=%s",
                        subscription_href,
                        row.notification_uri,
                    )
                    return
                error = f"HTTP {response.status}"
        except BadRequest as exc:  # the policy has changed since the subscription was accepted
            error = f"refused by the notification policy: {exc.detail}"
        except (aiohttp.ClientError, TimeoutError, OSError, ssl.SSLError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        retry_in = self.backoff(row.attempts)
        await self.store.notification_failed(row.outbox_id, time.time() + retry_in, error)
        self._count("failed")
        log.warning("notification to %s failed (%s); retry in %.1fs", row.notification_uri, error, retry_in)

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.notifications.labels(outcome).inc()
