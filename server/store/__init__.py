"""The server's store: a package by domain. Read path of a 2030.5 GET: ``server.api`` handler ->
:class:`Store` method (one domain module) -> ``schema`` tables, filtered by the :class:`RequestScope`.

* ``schema``: tables and constants; ``engine``: engine, pragmas, migrations; ``scope``: who asks, paging,
  what a site sees; ``codec``: sep2 <-> JSON, operator units; ``targets``: the targets a site answers to.
* Device-facing domains, each a :class:`StoreBase` subclass owning its queries: ``registry`` (identity,
  sites, registration), ``schedule`` (programs, controls, defaults, rates; ``doe`` for bulk DOE intervals),
  ``der_docs``, ``metering`` (MUPs), ``event_responses``, ``pubsub`` (subscriptions and the outbox).
  Modules are not named after tables: a submodule would shadow the table of that name on the package.
* ``admin``: :class:`Admin`, the operator's audited writes and queries.
* ``versions``: what each cached document depends on and what each write changed (the response cache is
  invalidated per site, target, rate and client, never wholesale); ``StoreBase.grouped``: group commit
  of device writes (prepared statements; on SQLite one call to a writer thread per group).
* ``fast``: prepared statements, and the reads of the hot GETs (on a SQLite file: the stdlib driver).

Every public :class:`Store` method takes a :class:`RequestScope` first; a site (EndDevice) is reachable only
through ``StoreBase._site``, which applies the scope filter. Targets of controls are one string key:
``"all"``, ``"g:<group id>"`` or ``"s:<site id>"``; a site sees the controls whose target is in {all, its
own key, its groups and their ancestors}, a single ``IN`` over an index.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from sep2 import time as sep2time
from server.store.admin import Admin
from server.store.base import StoreBase
from server.store.codec import (
    AdminError,
    build_control_base,
    control_base_from_json,
    from_jsonable,
    to_jsonable,
)
from server.store.der_docs import DersStore
from server.store.engine import SQLITE_BUSY_TIMEOUT_MS, _insert, make_engine, migrate
from server.store.event_responses import ResponsesStore
from server.store.metering import MeteringStore
from server.store.pubsub import SubscriptionsStore, _enqueue
from server.store.registry import SitesStore
from server.store.schedule import ControlsStore, event_status
from server.store.schema import (
    DER_DOCUMENT_TYPES,
    RATE_RESOURCES,
    SUBSCRIPTION_KINDS,
    VALID_RESPONSE_STATUSES,
    aggregators,
    audit_log,
    clients,
    controls,
    default_controls,
    der_documents,
    der_history,
    ders,
    doe_intervals,
    doe_uploads,
    groups,
    incident_events,
    incidents,
    memberships,
    metadata,
    meter_readings,
    mups,
    outbox,
    programs,
    rate_settings,
    readings,
    responses,
    sites,
    subscriptions,
)
from server.store.scope import Page, RequestScope, SiteView
from server.store.targets import _group_member_sites, _site_targets


class Store(SitesStore, ControlsStore, DersStore, MeteringStore, ResponsesStore, SubscriptionsStore):
    """Scoped data access for the 2030.5 API, composed from the domain modules. ``admin`` is the operator
    API over the same engine."""

    def __init__(self, engine: AsyncEngine, *, pen: int = 0, clock: Any = sep2time.now) -> None:
        super().__init__(engine, pen=pen, clock=clock)
        self.admin = Admin(self)


__all__ = [
    "DER_DOCUMENT_TYPES",
    "RATE_RESOURCES",
    "SQLITE_BUSY_TIMEOUT_MS",
    "SUBSCRIPTION_KINDS",
    "VALID_RESPONSE_STATUSES",
    "Admin",
    "AdminError",
    "Page",
    "RequestScope",
    "SiteView",
    "Store",
    "StoreBase",
    "_enqueue",
    "_group_member_sites",
    "_insert",
    "_site_targets",
    "aggregators",
    "audit_log",
    "build_control_base",
    "clients",
    "control_base_from_json",
    "controls",
    "default_controls",
    "der_documents",
    "der_history",
    "ders",
    "doe_intervals",
    "doe_uploads",
    "event_status",
    "from_jsonable",
    "groups",
    "incident_events",
    "incidents",
    "make_engine",
    "memberships",
    "metadata",
    "meter_readings",
    "migrate",
    "mups",
    "outbox",
    "programs",
    "rate_settings",
    "readings",
    "responses",
    "sites",
    "subscriptions",
    "to_jsonable",
]
