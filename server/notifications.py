"""Delivery of the durable notification outbox.

Writes that change a subscribed list queue one outbox row per affected subscription in the same
transaction (``server.store._enqueue``). This sender renders the subscribed resource as it is *now*
(honouring the subscription's ``limit``), wraps it in a Notification and POSTs it over mutual TLS to the
``notificationURI``. A failure keeps the row and schedules a retry with exponential backoff (capped, never
dropped); rows survive restarts because they live in the database.

So that nobody waits behind anybody else:

* due rows are claimed in batches (one compare-and-set statement), most urgent first (the watched
  program's primacy: emergency controls before DOEs and defaults), and each claimed row is sent by its own
  task as soon as a slot is free; a slow send never holds a batch;
* every send has its own timeout (``notify_timeout``), ``notify_concurrency`` sends run at once and at most
  ``notify_per_host`` of them to one subscriber (scheme, host, port), so a tarpit holds a few slots at
  most; once a send to a subscriber has timed out, its other due rows are deferred without connecting
  until the retry time;
* a broadcast is rendered once: sites that see the same lists (same groups, nothing aimed at them alone)
  share one rendering, with their own hrefs put in;
* sends go through :class:`~server.notify_client.NotificationClient` (a lean HTTPS client: connections
  to subscribers kept alive, TLS sessions resumed on reconnection);
* outcomes are recorded in batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit
from xml.sax.saxutils import escape

from sep2 import resources as r
from sep2.xml import to_xml
from server.api import SEP_XML, Renderer
from server.config import ServerConfig
from server.errors import BadRequest, NotFound
from server.netpolicy import CURRENT_TARGET, Target, TargetPolicy
from server.notify_client import NotificationClient, ReplyError
from server.store import Page, RequestScope, SiteView, Store

log = logging.getLogger("derlink.server.notifications")

SHARED_KINDS = ("derc", "actderc", "dderc")  # lists that depend only on the site's targets
_SITE = 0  # stand-in site and subscription ids of a shared rendering (ids start at 1)
_SUB = 0
_HREF_MARK = "urn:derlink:subscribed-resource"


def notification_client_ssl(config: ServerConfig) -> ssl.SSLContext:
    """The server acts as a TLS client towards subscribers, presenting a clientAuth certificate.

    Subscribers (gateways, aggregators) are usually addressed by IP with device certificates, so the
    chain is verified against our CA but the host name is not checked. TLS 1.2 only unless
    ``notify_tls13``: the version 2030.5 specifies, and the cheaper one to resume.
    """
    from certs.tls import client_ssl_context

    chain, key, ca = config.notify_files()
    context = client_ssl_context(chain, key, ca, check_hostname=False)
    if not config.notify_tls13:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    return context


def destination(uri: str) -> str:
    """The subscriber a notification goes to: scheme, host and port (limits and health are per subscriber)."""
    try:
        parts = urlsplit(uri)
        return f"{parts.scheme}://{(parts.hostname or '').lower()}:{parts.port or 443}"
    except ValueError:
        return uri


@dataclass(slots=True)
class _Outcomes:
    """Results waiting to be written in one transaction."""

    delivered: list[tuple[int, int]]
    failed: list[tuple[int, float, str]]


class NotificationSender:
    def __init__(
        self, store: Store, config: ServerConfig, metrics: Any = None, policy: TargetPolicy | None = None
    ) -> None:
        self.store = store
        self.config = config
        self.metrics = metrics
        self.policy = policy or TargetPolicy.from_config(config)
        self.renderer = Renderer(store, config)
        self.concurrency = config.notify_concurrency
        self.per_host = config.notify_per_host
        self.in_flight: dict[str, int] = {}  # sends under way, by destination
        self.unresponsive: dict[str, float] = {}  # destination -> until when its rows wait unsent
        self._tasks: set[asyncio.Task[None]] = set()
        self._slot_free = asyncio.Event()
        self._outcomes = _Outcomes([], [])
        self._outcome_event = asyncio.Event()
        self.rendered = 0  # documents rendered (a shared rendering counts once)

    def backoff(self, attempts: int) -> float:
        return min(self.config.notify_retry_initial * (2**attempts), self.config.notify_retry_max)

    async def run(self) -> None:
        # The policy sees every address the client is about to connect to (names re-resolved per
        # connection, no DNS cache), so a subscription whose name now points somewhere forbidden is
        # refused before any packet leaves. Connections stay open for the next notification.
        client = NotificationClient(
            notification_client_ssl(self.config),
            self.policy,
            max_idle=self.config.notify_max_idle,
            keepalive=self.config.notify_keepalive,
            connect_timeout=min(self.config.notify_timeout, 5.0),
        )
        recorder = asyncio.create_task(self._record_outcomes(), name="derlink-notification-outcomes")
        try:
            while True:
                try:
                    started = await self.dispatch(client)
                except Exception:
                    log.exception("notification pass failed")
                    started = 0
                if not started:
                    await self._sleep_until_due()
                else:  # more may be due: claim them in batches, not a slot at a time
                    await self._room_for(max(1, self.concurrency // 2))
        finally:
            for task in [*self._tasks, recorder]:
                task.cancel()
            await asyncio.gather(*self._tasks, recorder, return_exceptions=True)
            await client.close()

    async def _room_for(self, slots: int) -> None:
        """Wait (briefly) until ``slots`` sends could start."""
        deadline = time.monotonic() + 0.05
        while self.concurrency - len(self._tasks) < slots and (left := deadline - time.monotonic()) > 0:
            self._slot_free.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._slot_free.wait()

    async def _sleep_until_due(self) -> None:
        self.store.outbox_event.clear()
        self._slot_free.clear()
        if len(self._tasks) >= self.concurrency:
            delay = 5.0  # woken by a free slot
        else:
            next_due = await self.store.next_notification_time()
            delay = 5.0 if next_due is None else max(0.0, min(5.0, next_due - time.time()))
        if delay <= 0:
            # Due rows that could not start: their subscribers are busy (a send ending sets _slot_free) or
            # unresponsive (until a known time); or the pass failed (try again in a second).
            delay = min([1.0, *(until - time.time() for until in self.unresponsive.values())])
            delay = max(delay, 0.01)
        waits = [
            asyncio.ensure_future(self.store.outbox_event.wait()),
            asyncio.ensure_future(self._slot_free.wait()),
        ]
        try:
            # asyncio.wait with a timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation
            # that arrives as the event fires, and then RunningServer.stop() would wait forever.
            await asyncio.wait(waits, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def dispatch(self, client: NotificationClient) -> int:
        """Claim what there is room for, most urgent first, render it and start its sends."""
        free = self.concurrency - len(self._tasks)
        if free <= 0:
            return 0
        now = time.time()
        self.unresponsive = {d: t for d, t in self.unresponsive.items() if t > now}
        taking: dict[str, int] = dict(self.in_flight)
        chosen: list[Any] = []
        deferred: dict[str, list[int]] = {}
        page, offset = max(64, free * 2), 0
        for _ in range(8):  # rows of busy subscribers are skipped; look a few pages further
            rows = await self.store.due_notifications(now, limit=page, offset=offset)
            for row in rows:
                dest = destination(row.notification_uri)
                if dest in self.unresponsive:
                    deferred.setdefault(dest, []).append(row.outbox_id)
                elif taking.get(dest, 0) < self.per_host:
                    taking[dest] = taking.get(dest, 0) + 1
                    chosen.append(row)
                    if len(chosen) >= free:
                        break
            if len(chosen) >= free or len(rows) < page:
                break
            offset += page
        for dest, ids in deferred.items():
            until = self.unresponsive[dest]
            await self.store.defer_notifications(
                ids,
                now,
                until,
                f"not attempted: {dest} did not answer within {self.config.notify_timeout:g} s",
            )
            self._count("deferred", len(ids))
        if not chosen:
            return 0
        lease = now + self.config.notify_timeout + 30.0
        claimed = await self.store.claim_notifications([row.outbox_id for row in chosen], now, lease)
        chosen = [row for row in chosen if row.outbox_id in claimed]
        bodies = await self.render(chosen)
        for row, body in zip(chosen, bodies, strict=True):
            dest = destination(row.notification_uri)
            self.in_flight[dest] = self.in_flight.get(dest, 0) + 1
            task = asyncio.create_task(self._send(client, row, body, dest))
            self._tasks.add(task)
        return len(chosen)

    # ------------------------------------------------------------------------------------- rendering

    async def render(self, rows: list[Any]) -> list[bytes]:
        """The Notification body of each row; rows that see the same document share one rendering."""
        shareable = [row for row in rows if row.kind in SHARED_KINDS and _visible(row)]
        alone, groups = await self.store.notification_sharing(sorted({row.site_id for row in shareable}))
        templates: dict[tuple[Any, ...], bytes] = {}
        bodies: list[bytes] = []
        for row in rows:
            if row.kind in SHARED_KINDS and _visible(row) and row.site_id not in alone:
                key = (row.kind, row.program_id, row.limit, groups[row.site_id])
                template = templates.get(key)
                if template is None:
                    template = templates[key] = await self._template(row)
                bodies.append(_fill(template, row))
            else:
                bodies.append(await self._render_one(row))
        return bodies

    async def _render_one(self, row: Any) -> bytes:
        self.rendered += 1
        try:
            resource = await self.renderer.subscribed_resource(row, _owner_scope(row))
            status = 0
        except NotFound:
            resource, status = None, 4  # the watched resource no longer exists
        return to_xml(
            r.Notification(
                subscribedResource=row.subscribed_href,
                Resource=resource,
                status=status,
                subscriptionURI=f"/edev/{row.site_id}/sub/{row.id}",
            )
        )

    async def _template(self, row: Any) -> bytes:
        """The row's document for a stand-in site with the same targets (nothing aimed at it alone)."""
        self.rendered += 1
        resource: Any = None
        status = 0
        try:
            real = await self.store.site_view(_owner_scope(row), row.site_id)
            view = SiteView(
                site=_StandIn(_SITE),  # type: ignore[arg-type]
                targets=[(f"s:{_SITE}", 1000)] + [t for t in real.targets if not t[0].startswith("s:")],
                programs=real.programs,
            )
            if row.kind == "dderc":
                resource = await self.renderer.default_control(view, row.program_id)
            else:
                page = Page(start=0, limit=max(1, row.limit))
                resource, _ = await self.renderer.control_list(
                    view, row.program_id, page, active=row.kind == "actderc"
                )
        except NotFound:
            resource, status = None, 4
        return to_xml(
            r.Notification(
                subscribedResource=_HREF_MARK,
                Resource=resource,
                status=status,
                subscriptionURI=f"/edev/{_SITE}/sub/{_SUB}",
            )
        )

    # --------------------------------------------------------------------------------------- sending

    async def _send(self, client: NotificationClient, row: Any, body: bytes, dest: str) -> None:
        try:
            await self.deliver(client, row, body, dest)
        except Exception:
            log.exception("notification to %s failed unexpectedly", row.notification_uri)
        finally:
            self.in_flight[dest] -= 1
            if not self.in_flight[dest]:
                del self.in_flight[dest]
            self._tasks.discard(asyncio.current_task())  # type: ignore[arg-type]
            self._slot_free.set()

    async def deliver(self, client: NotificationClient, row: Any, body: bytes, dest: str) -> None:
        subscription_href = f"/edev/{row.site_id}/sub/{row.id}"
        try:
            host, _port = self.policy.check_uri(row.notification_uri)
            CURRENT_TARGET.set(Target(owner_lfdi=row.owner_lfdi, host=host))
            async with asyncio.timeout(self.config.notify_timeout):
                reply = await client.post(row.notification_uri, body, SEP_XML)
            if 200 <= reply.status < 300:
                self._outcome(delivered=(row.outbox_id, row.seq))
                self._count("delivered")
                log.debug(
                    "notification delivered subscription=%s uri=%s", subscription_href, row.notification_uri
                )
                return
            error = f"HTTP {reply.status}"
        except BadRequest as exc:  # the policy has changed since the subscription was accepted
            error = f"refused by the notification policy: {exc.detail}"
        except TimeoutError:
            error = f"no answer within {self.config.notify_timeout:g} s"
            # Its other rows wait until this one's retry instead of each holding a slot for the timeout.
            self.unresponsive[dest] = max(
                self.unresponsive.get(dest, 0.0), time.time() + self.backoff(row.attempts)
            )
        except (ReplyError, OSError, ssl.SSLError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        retry_in = self.backoff(row.attempts)
        self._outcome(failed=(row.outbox_id, time.time() + retry_in, error))
        self._count("failed")
        log.warning("notification to %s failed (%s); retry in %.1fs", row.notification_uri, error, retry_in)

    def _outcome(self, *, delivered: tuple[int, int] | None = None, failed: Any = None) -> None:
        if delivered is not None:
            self._outcomes.delivered.append(delivered)
        if failed is not None:
            self._outcomes.failed.append(failed)
        self._outcome_event.set()

    async def _record_outcomes(self) -> None:
        while True:
            await self._outcome_event.wait()
            await asyncio.sleep(0.02)  # let the sends finishing together share one transaction
            try:
                await self.flush_outcomes()
            except Exception:
                log.exception("could not record notification outcomes")
                await asyncio.sleep(1.0)

    async def flush_outcomes(self) -> None:
        self._outcome_event.clear()
        # If this fails, the rows stay leased and are sent again when the lease ends (at least once).
        outcomes, self._outcomes = self._outcomes, _Outcomes([], [])
        await self.store.notifications_delivered(outcomes.delivered)
        if outcomes.delivered:
            # A row that changed again while in flight is now due at once (its lease was its due time):
            # the sender may be asleep until the lease, so wake it.
            self.store.outbox_event.set()
        for outbox_id, next_attempt_at, error in outcomes.failed:
            await self.store.notification_failed(outbox_id, next_attempt_at, error)

    def _count(self, outcome: str, n: int = 1) -> None:
        if self.metrics is not None:
            self.metrics.notifications.labels(outcome).inc(n)


@dataclass(frozen=True, slots=True)
class _StandIn:
    id: int


def _owner_scope(row: Any) -> RequestScope:
    return RequestScope(
        lfdi=row.owner_lfdi,
        kind="aggregator" if row.owner_kind == "aggregator" else "device",
        aggregator_id=row.owner_aggregator,
    )


def _visible(row: Any) -> bool:
    """The subscription's owner still reaches the site (``RequestScope.site_condition``)."""
    if row.owner_kind == "aggregator":
        return row.site_aggregator is not None and row.site_aggregator == row.owner_aggregator
    return row.site_lfdi == row.owner_lfdi


def _fill(template: bytes, row: Any) -> bytes:
    site = str(row.site_id).encode()
    return (
        template.replace(f"/edev/{_SITE}/sub/{_SUB}<".encode(), b"/edev/%s/sub/%d<" % (site, row.id))
        .replace(f"/edev/{_SITE}/".encode(), b"/edev/" + site + b"/")
        .replace(_HREF_MARK.encode(), escape(row.subscribed_href).encode())
    )
