"""The server's store: tables, the request scope, scoped 2030.5 queries, and the operator (admin) API.

One module on purpose: the table definitions, the scope filter and every query that uses them sit
together, so it is easy to check that each 2030.5-side query is filtered by the caller's identity.

Two entry points:

* :class:`Store` — used by the 2030.5 handlers. Every public method takes a :class:`RequestScope` first;
  a site (EndDevice) is reachable only through :meth:`Store._site`, which applies the scope filter.
* :class:`Admin` — the operator side (head-end, tests, demos): sites, aggregators, groups, programs,
  controls, defaults, revocation, rates. Every write is audited and commits before returning.

Targets of controls are stored as one string key: ``"all"``, ``"g:<group id>"`` or ``"s:<site id>"``. A
site sees the controls whose target is in {all, its own key, its groups and their ancestors}, which is a
single ``IN`` over an index.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from sep2 import resources as r
from sep2 import time as sep2time
from sep2.base import resolve_type
from sep2.identity import IdentityError, normalise_lfdi, sfdi_from_lfdi
from sep2.mrid import new_mrid
from sep2.xml import from_xml, to_xml
from server.errors import BadRequest, Conflict, Forbidden, NotFound

log = logging.getLogger("derlink.server.store")

metadata = sa.MetaData()
# A 64-bit autoincrementing id; on SQLite it must stay INTEGER to remain the (64-bit) rowid alias.
_BIGINT_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

# ---------------------------------------------------------------------------------------------- tables

aggregators = sa.Table(
    "aggregators",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", sa.BigInteger, nullable=False),
)

# Every client certificate we know of: its kind, its aggregator, revocation, last contact.
clients = sa.Table(
    "clients",
    metadata,
    sa.Column("lfdi", sa.String(40), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("aggregator_id", sa.Integer, sa.ForeignKey("aggregators.id", ondelete="CASCADE")),
    sa.Column("revoked", sa.Boolean, nullable=False, default=False),
    sa.Column("first_seen", sa.BigInteger),
    sa.Column("last_seen", sa.BigInteger),
)

sites = sa.Table(
    "sites",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("lfdi", sa.String(40), nullable=False, unique=True),
    sa.Column("sfdi", sa.BigInteger, nullable=False),
    sa.Column("aggregator_id", sa.Integer, sa.ForeignKey("aggregators.id", ondelete="SET NULL"), index=True),
    sa.Column("device_category", sa.String(8)),
    sa.Column("enabled", sa.Boolean, nullable=False, default=True),
    sa.Column("changed_time", sa.BigInteger, nullable=False),
    sa.Column("registered_time", sa.BigInteger, nullable=False),
    sa.Column("pin", sa.Integer),
    sa.Column("nmi", sa.String(32), index=True),
    sa.Column("label", sa.String(128)),
)

groups = sa.Table(
    "groups",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(64), nullable=False, unique=True),
    sa.Column("parent_id", sa.Integer, sa.ForeignKey("groups.id", ondelete="CASCADE"), index=True),
    sa.Column("description", sa.String(128)),
)

memberships = sa.Table(
    "memberships",
    metadata,
    sa.Column("site_id", sa.Integer, sa.ForeignKey("sites.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("group_id", sa.Integer, sa.ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True),
    sa.Index("ix_memberships_group", "group_id"),
)

programs = sa.Table(
    "programs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("key", sa.String(32), nullable=False, unique=True),
    sa.Column("mrid", sa.String(32), nullable=False, unique=True),
    sa.Column("description", sa.String(32), nullable=False),
    sa.Column("primacy", sa.Integer, nullable=False),
    # None: every site sees the program (FSA 0); otherwise members of this group (FSA = group id).
    sa.Column("group_id", sa.Integer, sa.ForeignKey("groups.id", ondelete="CASCADE")),
    sa.Column("version", sa.Integer, nullable=False, default=0),
)

controls = sa.Table(
    "controls",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("mrid", sa.String(32), nullable=False, unique=True),
    sa.Column("program_id", sa.Integer, sa.ForeignKey("programs.id", ondelete="CASCADE"), nullable=False),
    sa.Column("target", sa.String(24), nullable=False),
    sa.Column("start", sa.BigInteger, nullable=False),
    sa.Column("duration", sa.BigInteger, nullable=False),  # UInt32: beyond PostgreSQL's 32-bit INTEGER
    sa.Column("randomize_start", sa.Integer),
    sa.Column("randomize_duration", sa.Integer),
    sa.Column("response_required", sa.String(2)),
    sa.Column("base", sa.Text, nullable=False),  # DERControlBase as compact JSON
    sa.Column("description", sa.String(32)),
    sa.Column("creation_time", sa.BigInteger, nullable=False),
    sa.Column("version", sa.Integer, nullable=False, default=0),
    sa.Column("cancelled_at", sa.BigInteger),
    sa.Column("superseded_at", sa.BigInteger),
    sa.Index("ix_controls_program_target_start", "program_id", "target", "start"),
)

default_controls = sa.Table(
    "default_controls",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("mrid", sa.String(32), nullable=False, unique=True),
    sa.Column("program_id", sa.Integer, sa.ForeignKey("programs.id", ondelete="CASCADE"), nullable=False),
    sa.Column("target", sa.String(24), nullable=False),
    sa.Column("base", sa.Text, nullable=False),
    sa.Column("set_grad_w", sa.Integer),
    sa.Column("description", sa.String(32)),
    sa.Column("version", sa.Integer, nullable=False, default=0),
    sa.Column("changed_time", sa.BigInteger, nullable=False),
    sa.UniqueConstraint("program_id", "target", name="uq_default_controls_program_target"),
)

ders = sa.Table(
    "ders",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column(
        "site_id", sa.Integer, sa.ForeignKey("sites.id", ondelete="CASCADE"), nullable=False, index=True
    ),
)

# DERCapability / DERSettings / DERStatus / DERAvailability as PUT by the client (canonical XML).
der_documents = sa.Table(
    "der_documents",
    metadata,
    sa.Column("der_id", sa.Integer, sa.ForeignKey("ders.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("kind", sa.String(8), primary_key=True),
    sa.Column("xml", sa.Text, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
)

mups = sa.Table(
    "mups",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("site_id", sa.Integer, sa.ForeignKey("sites.id", ondelete="CASCADE"), nullable=False),
    sa.Column("mrid", sa.String(32), nullable=False),
    sa.Column("description", sa.String(32)),
    sa.Column("role_flags", sa.String(4), nullable=False),
    sa.Column("service_category", sa.Integer, nullable=False),
    sa.Column("status", sa.Integer, nullable=False),
    sa.Column("version", sa.Integer),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.UniqueConstraint("site_id", "mrid", name="uq_mups_site_mrid"),
)

meter_readings = sa.Table(
    "meter_readings",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("mup_id", sa.Integer, sa.ForeignKey("mups.id", ondelete="CASCADE"), nullable=False),
    sa.Column("mrid", sa.String(32), nullable=False),
    sa.Column("description", sa.String(32)),
    sa.Column("reading_type", sa.Text, nullable=False),  # ReadingType XML
    sa.Column("last_update", sa.BigInteger),
    sa.UniqueConstraint("mup_id", "mrid", name="uq_meter_readings_mup_mrid"),
)

readings = sa.Table(
    "readings",
    metadata,
    # The high-volume table: 64-bit ids on PostgreSQL (SQLite's INTEGER rowid is 64-bit already).
    sa.Column("id", _BIGINT_ID, primary_key=True),
    sa.Column(
        "meter_reading_id", sa.Integer, sa.ForeignKey("meter_readings.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("time_start", sa.BigInteger),
    sa.Column("duration", sa.BigInteger),  # UInt32
    sa.Column("value", sa.BigInteger, nullable=False),
    sa.Column("quality_flags", sa.String(4)),
    sa.Column("received_at", sa.BigInteger, nullable=False),
    # A reading re-sent for the same interval replaces the earlier value.
    sa.UniqueConstraint("meter_reading_id", "time_start", name="uq_readings_meter_time"),
)

responses = sa.Table(
    "responses",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column(
        "site_id", sa.Integer, sa.ForeignKey("sites.id", ondelete="CASCADE"), nullable=False, index=True
    ),
    sa.Column(
        "control_id", sa.Integer, sa.ForeignKey("controls.id", ondelete="CASCADE"), nullable=False, index=True
    ),
    sa.Column("status", sa.Integer, nullable=False),
    sa.Column("created_time", sa.BigInteger),
    sa.Column("received_at", sa.BigInteger, nullable=False),
)

subscriptions = sa.Table(
    "subscriptions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column(
        "site_id", sa.Integer, sa.ForeignKey("sites.id", ondelete="CASCADE"), nullable=False, index=True
    ),
    # What is watched, parsed from subscribedResource by the API layer:
    # kind in edev | fsa | derp | derc | actderc | dderc; program_id / fsa_key when relevant.
    sa.Column("kind", sa.String(8), nullable=False),
    sa.Column("program_id", sa.Integer, sa.ForeignKey("programs.id", ondelete="CASCADE")),
    sa.Column("fsa_key", sa.Integer),
    sa.Column("subscribed_href", sa.String(256), nullable=False),
    sa.Column("notification_uri", sa.String(512), nullable=False),
    sa.Column("limit", sa.Integer, nullable=False),
    sa.Column("level", sa.String(16), nullable=False),
    sa.Column("owner_lfdi", sa.String(40), nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Index("ix_subscriptions_kind_program", "kind", "program_id"),
)

# Durable notification outbox: at most one pending row per subscription. ``seq`` counts changes queued
# while a delivery may be in flight, so a success only clears the row if nothing changed meanwhile.
outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column(
        "subscription_id",
        sa.Integer,
        sa.ForeignKey("subscriptions.id", ondelete="CASCADE"),
        nullable=False,
        unique=True,
    ),
    sa.Column("seq", sa.Integer, nullable=False, default=0),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("next_attempt_at", sa.Float, nullable=False, index=True),
    sa.Column("last_error", sa.String(256)),
)

# Runtime pollRate/postRate overrides: resource in RATE_RESOURCES, target "all" | "g:<id>" | "s:<id>".
rate_settings = sa.Table(
    "rate_settings",
    metadata,
    sa.Column("resource", sa.String(16), primary_key=True),
    sa.Column("target", sa.String(24), primary_key=True),
    sa.Column("value", sa.BigInteger, nullable=False),  # UInt32 seconds
)

audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("at", sa.BigInteger, nullable=False, index=True),
    sa.Column("actor", sa.String(64), nullable=False),
    sa.Column("action", sa.String(48), nullable=False),
    sa.Column("target", sa.String(128)),
    sa.Column("reason", sa.String(256)),
    sa.Column("detail", sa.Text),
)

RATE_RESOURCES = ("dcap", "edev", "fsa", "derp", "der", "mup", "rsps", "sub", "rg", "tm", "post")
DER_DOCUMENT_TYPES: dict[str, type] = {
    "dercap": r.DERCapability,
    "derg": r.DERSettings,
    "ders": r.DERStatus,
    "dera": r.DERAvailability,
}
# Response status codes accepted from clients (2030.5 Table 27 for DER, plus the rejection codes).
VALID_RESPONSE_STATUSES = frozenset(range(1, 16)) | frozenset(range(251, 255))
SUBSCRIPTION_KINDS = ("edev", "fsa", "derp", "derc", "actderc", "dderc")

# ------------------------------------------------------------------------------------------- the scope


@dataclass(frozen=True, slots=True)
class RequestScope:
    """Who is asking. Built once per request from the authenticated certificate.

    A device client reaches only the site whose LFDI is its own; an aggregator client reaches the sites
    registered to its aggregator.
    """

    lfdi: str
    kind: Literal["device", "aggregator"]
    aggregator_id: int | None = None

    def site_condition(self) -> sa.ColumnElement[bool]:
        if self.kind == "aggregator":
            return sites.c.aggregator_id == self.aggregator_id
        return sites.c.lfdi == self.lfdi


@dataclass(frozen=True, slots=True)
class Page:
    """List paging from the ``s``/``a``/``l`` query parameters."""

    start: int = 0
    limit: int = 1
    after: int | None = None


# ------------------------------------------------------------------------------- sep2 object <-> JSON


def to_jsonable(obj: Any) -> dict[str, Any]:
    """A sep2 dataclass as a compact dict (None and empty lists dropped)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if value is None or value == []:
            continue
        if dataclasses.is_dataclass(value):
            out[f.name] = to_jsonable(value)
        elif isinstance(value, list):
            out[f.name] = [to_jsonable(v) if dataclasses.is_dataclass(v) else v for v in value]
        else:
            out[f.name] = value
    return out


def from_jsonable(cls: type, data: dict[str, Any]) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        xsd_type = fields[name].metadata.get("xsd_type")
        if isinstance(value, dict):
            kwargs[name] = from_jsonable(resolve_type(xsd_type), value)
        elif isinstance(value, list):
            kwargs[name] = [
                from_jsonable(resolve_type(xsd_type), v) if isinstance(v, dict) else v for v in value
            ]
        else:
            kwargs[name] = value
    return cls(**kwargs)


def control_base_from_json(text: str) -> r.DERControlBase:
    return from_jsonable(r.DERControlBase, json.loads(text))


class AdminError(ValueError):
    """An operator request that cannot be applied; the message names the field. Nothing was changed."""


_POWER_FIELDS = {
    "import_limit_w": "opModImpLimW",
    "export_limit_w": "opModExpLimW",
    "generation_limit_w": "opModGenLimW",
    "load_limit_w": "opModLoadLimW",
    "target_w": "opModTargetW",
}


def build_control_base(
    *,
    import_limit_w: float | None = None,
    export_limit_w: float | None = None,
    generation_limit_w: float | None = None,
    load_limit_w: float | None = None,
    target_w: float | None = None,
    connect: bool | None = None,
    energize: bool | None = None,
    fixed_w_percent: int | None = None,
    max_lim_w_percent: int | None = None,
    ramp_tms: int | None = None,
) -> r.DERControlBase:
    """A DERControlBase from operator units (watts, percent, 1/100 s). Errors name the argument."""
    kwargs: dict[str, Any] = {}
    given = dict(
        import_limit_w=import_limit_w,
        export_limit_w=export_limit_w,
        generation_limit_w=generation_limit_w,
        load_limit_w=load_limit_w,
        target_w=target_w,
    )
    for arg, value in given.items():
        if value is None:
            continue
        if arg != "target_w" and value < 0:
            raise AdminError(f"{arg}: must not be negative, got {value}")
        try:
            kwargs[_POWER_FIELDS[arg]] = r.ActivePower.from_watts(float(value))
        except ValueError as exc:
            raise AdminError(
                f"{arg}: {value} W cannot be expressed as a 2030.5 ActivePower ({exc})"
            ) from None
    if connect is not None:
        kwargs["opModConnect"] = bool(connect)
    if energize is not None:
        kwargs["opModEnergize"] = bool(energize)
    for arg, field_name, low, high in (
        ("fixed_w_percent", "opModFixedW", -10000, 10000),
        ("max_lim_w_percent", "opModMaxLimW", 0, 10000),
        ("ramp_tms", "rampTms", 0, 65535),
    ):
        value = locals()[arg]
        if value is None:
            continue
        if not isinstance(value, int) or not low <= value <= high:
            raise AdminError(f"{arg}: must be an integer in [{low}, {high}], got {value!r}")
        kwargs[field_name] = value
    if not kwargs:
        raise AdminError("control: at least one limit or mode must be given")
    return r.DERControlBase(**kwargs)


# ----------------------------------------------------------------------------------------- the engine


# How long a SQLite writer waits for another (e.g. a multi-million-row DOE upload) before giving up; the
# API then answers 503 with Retry-After rather than failing the request as a server error.
SQLITE_BUSY_TIMEOUT_MS = 10_000


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")  # committed means on disk before we acknowledge
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_MS)}")
    cursor.close()


def make_engine(url: str) -> AsyncEngine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(url, pool_size=10, max_overflow=20)


_MIGRATION_LOCK_KEY = 0x6465726C696E6B  # "derlink": the PostgreSQL advisory lock serialising migrations


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to the newest alembic revision (shipped in ``server/migrations``)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))

    def upgrade(sync_connection: Any) -> None:
        cfg.attributes["connection"] = sync_connection
        command.upgrade(cfg, "head")

    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Server processes started together on one database: the first migrates, the others wait
            # here (lock held until this transaction commits) and then find the schema at head.
            await conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
        await conn.run_sync(upgrade)


def _insert(conn: AsyncConnection, table: sa.Table) -> Any:
    """A dialect insert supporting ON CONFLICT (SQLite and PostgreSQL share the syntax)."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table)


# ------------------------------------------------------------------------------------- shared queries


async def _own_site(conn: AsyncConnection, scope: RequestScope, lfdi: str | None, field: str) -> Any:
    """This client's EndDevice row for ``lfdi``; otherwise a 400 naming ``field``."""
    try:
        device_lfdi = normalise_lfdi(lfdi or "")
    except IdentityError as exc:
        raise BadRequest(f"{field}: {exc}") from None
    site = (
        await conn.execute(sa.select(sites.c.id).where(sites.c.lfdi == device_lfdi, scope.site_condition()))
    ).first()
    if site is None:
        raise BadRequest(f"{field}: {device_lfdi} is not an EndDevice of this client")
    return site


async def _site_targets(conn: AsyncConnection, site_id: int) -> list[tuple[str, int]]:
    """The target keys a site answers to, with a depth (site 1000, groups by nesting depth, all 0)."""
    direct = sa.select(groups.c.id, groups.c.parent_id, sa.literal(1).label("hop")).where(
        groups.c.id.in_(sa.select(memberships.c.group_id).where(memberships.c.site_id == site_id))
    )
    tree = direct.cte("tree", recursive=True)
    tree = tree.union(
        sa.select(groups.c.id, groups.c.parent_id, (tree.c.hop + 1).label("hop")).where(
            groups.c.id == tree.c.parent_id
        )
    )
    rows = (await conn.execute(sa.select(tree.c.id, sa.func.min(tree.c.hop)).group_by(tree.c.id))).all()
    # A group's specificity: shallower hops from the site are more specific.
    targets = [(f"s:{site_id}", 1000)] + [(f"g:{gid}", 500 - hop) for gid, hop in rows] + [("all", 0)]
    return targets


async def _visible_programs(conn: AsyncConnection, group_keys: Iterable[str]) -> list[sa.Row]:
    group_ids = [int(k[2:]) for k in group_keys if k.startswith("g:")]
    query = (
        sa.select(programs)
        .where(sa.or_(programs.c.group_id.is_(None), programs.c.group_id.in_(group_ids)))
        .order_by(programs.c.primacy, programs.c.id)
    )
    return list((await conn.execute(query)).all())


def event_status(row: Any, now: int) -> tuple[int, int]:
    """(currentStatus, dateTime) of a control row at ``now``: 0 scheduled, 1 active, 2 cancelled,
    4 superseded."""
    if row.cancelled_at is not None:
        return (3 if row.randomize_start or row.randomize_duration else 2), row.cancelled_at
    if row.superseded_at is not None:
        return 4, row.superseded_at
    if row.start <= now < row.start + row.duration:
        return 1, row.start
    return 0, row.creation_time


# ------------------------------------------------------------------------------------------- the store


class Store:
    """Scoped data access for the 2030.5 API. ``generation`` increases on every committed write; caches
    key on it. ``admin`` is the operator API over the same engine."""

    def __init__(self, engine: AsyncEngine, *, pen: int = 0, clock: Any = sep2time.now) -> None:
        self.engine = engine
        self.pen = pen
        self.clock = clock
        self.generation = 0
        self.outbox_event = asyncio.Event()
        self.admin = Admin(self)
        self._pending_contacts: dict[str, int] = {}

    @classmethod
    async def open(cls, url: str, *, pen: int = 0, run_migrations: bool = True) -> Store:
        engine = make_engine(url)
        if run_migrations:
            await migrate(engine)
        return cls(engine, pen=pen)

    async def close(self) -> None:
        await self.flush_contacts()
        await self.engine.dispose()

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction; commits on exit, then bumps the cache generation."""
        async with self.engine.begin() as conn:
            yield conn
        self.generation += 1
        self.outbox_event.set()

    def read(self) -> Any:
        return self.engine.connect()

    # --------------------------------------------------------------------------------- identity

    async def scope_for(self, lfdi: str, role: str) -> RequestScope:
        """Resolve a certificate to a scope; a revoked certificate is refused (403).

        An aggregator-role certificate seen for the first time gets its own aggregator, so it can start
        registering sites at once; the operator can attach further certificates to it for rotation.
        """
        async with self.read() as conn:
            row = (await conn.execute(sa.select(clients).where(clients.c.lfdi == lfdi))).first()
        if row is None:
            try:
                row = await self._first_contact(lfdi, role)
            except sa.exc.IntegrityError:  # a concurrent first request registered it: use that
                async with self.read() as conn:
                    row = (await conn.execute(sa.select(clients).where(clients.c.lfdi == lfdi))).first()
        if row.revoked:
            raise Forbidden("client certificate access has been revoked")
        if row.kind == "aggregator":
            return RequestScope(lfdi=lfdi, kind="aggregator", aggregator_id=row.aggregator_id)
        return RequestScope(lfdi=lfdi, kind="device")

    async def _first_contact(self, lfdi: str, role: str) -> sa.Row:
        now = self.clock()
        async with self.write() as conn:
            row = (await conn.execute(sa.select(clients).where(clients.c.lfdi == lfdi))).first()
            if row is None:
                aggregator_id = None
                if role == "aggregator":
                    aggregator_id = (
                        await conn.execute(
                            aggregators.insert().values(name=f"aggregator-{lfdi[:12]}", created_at=now)
                        )
                    ).inserted_primary_key[0]
                await conn.execute(
                    clients.insert().values(
                        lfdi=lfdi,
                        kind=role,
                        aggregator_id=aggregator_id,
                        revoked=False,
                        first_seen=now,
                        last_seen=now,
                    )
                )
                row = (await conn.execute(sa.select(clients).where(clients.c.lfdi == lfdi))).first()
        return row

    def note_contact(self, lfdi: str) -> None:
        """Remember a client's last contact; written in batches by :meth:`flush_contacts`."""
        self._pending_contacts[lfdi] = self.clock()

    async def flush_contacts(self) -> None:
        if not self._pending_contacts:
            return
        pending, self._pending_contacts = self._pending_contacts, {}
        async with self.engine.begin() as conn:  # not a content change: no generation bump
            await conn.execute(
                clients.update()
                .where(clients.c.lfdi == sa.bindparam("k"))
                .values(last_seen=sa.bindparam("t")),
                [{"k": k, "t": t} for k, t in pending.items()],
            )

    # --------------------------------------------------------------------------------- sites

    async def _site(self, conn: AsyncConnection, scope: RequestScope, site_id: int) -> sa.Row:
        row = (
            await conn.execute(sa.select(sites).where(sites.c.id == site_id, scope.site_condition()))
        ).first()
        if row is None:
            raise NotFound(f"no EndDevice {site_id} for this client")
        return row

    async def site(self, scope: RequestScope, site_id: int) -> sa.Row:
        async with self.read() as conn:
            return await self._site(conn, scope, site_id)

    async def list_sites(self, scope: RequestScope, page: Page) -> tuple[int, list[sa.Row]]:
        cond = scope.site_condition()
        async with self.read() as conn:
            total = (
                await conn.execute(sa.select(sa.func.count()).select_from(sites).where(cond))
            ).scalar_one()
            rows = (
                await conn.execute(
                    sa.select(sites)
                    .where(cond)
                    .order_by(sites.c.sfdi, sites.c.id)
                    .offset(page.start)
                    .limit(page.limit)
                )
            ).all()
        return total, list(rows)

    async def register_site(
        self,
        scope: RequestScope,
        *,
        lfdi: str | None,
        sfdi: int | None,
        device_category: str | None,
        inband_allowed: bool,
    ) -> tuple[int, bool]:
        """In-band registration (POST EndDevice). Returns (site id, created). A repeat of an LFDI this
        client already owns returns the existing site."""
        if lfdi is None:
            if scope.kind == "aggregator":
                raise BadRequest("EndDevice.lFDI: required when an aggregator registers a device")
            lfdi = scope.lfdi
        try:
            lfdi = normalise_lfdi(lfdi)
        except IdentityError as exc:
            raise BadRequest(f"EndDevice.lFDI: {exc}") from None
        if scope.kind == "device" and lfdi != scope.lfdi:
            raise Forbidden("EndDevice.lFDI: does not match the client certificate's LFDI")
        expected_sfdi = sfdi_from_lfdi(lfdi)
        if sfdi is not None and sfdi != expected_sfdi:
            raise BadRequest(f"EndDevice.sFDI: {sfdi} is not the SFDI of lFDI {lfdi} ({expected_sfdi})")
        async with self.read() as conn:
            existing = (await conn.execute(sa.select(sites).where(sites.c.lfdi == lfdi))).first()
        if existing is not None:
            async with self.read() as conn:
                mine = (
                    await conn.execute(
                        sa.select(sites.c.id).where(sites.c.id == existing.id, scope.site_condition())
                    )
                ).first()
            if mine is None:
                raise Conflict(f"EndDevice.lFDI: {lfdi} is registered to another client")
            return existing.id, False
        if not inband_allowed:
            raise Forbidden("in-band registration is disabled; ask the operator to register this device")
        now = self.clock()
        async with self.write() as conn:
            site_id = (
                await conn.execute(
                    sites.insert().values(
                        lfdi=lfdi,
                        sfdi=expected_sfdi,
                        aggregator_id=scope.aggregator_id,
                        device_category=device_category,
                        enabled=True,
                        changed_time=now,
                        registered_time=now,
                    )
                )
            ).inserted_primary_key[0]
            await conn.execute(ders.insert().values(site_id=site_id))
            await _enqueue(conn, now, kinds=("edev",), owner_scope=scope)
        return site_id, True

    async def set_connection_point(self, scope: RequestScope, site_id: int, nmi: str) -> None:
        nmi = nmi.strip()
        if not nmi or len(nmi) > 32:
            raise BadRequest("ConnectionPoint.connectionPointId: must be 1 to 32 characters")
        async with self.write() as conn:
            await self._site(conn, scope, site_id)
            await conn.execute(
                sites.update().where(sites.c.id == site_id).values(nmi=nmi, changed_time=self.clock())
            )

    async def client_targets(self, scope: RequestScope) -> list[tuple[str, int]]:
        """Rate targets for client-level resources: a device client's own site, else everyone."""
        if scope.kind == "aggregator":
            return [("all", 0)]
        async with self.read() as conn:
            row = (await conn.execute(sa.select(sites.c.id).where(sites.c.lfdi == scope.lfdi))).first()
            return await _site_targets(conn, row.id) if row else [("all", 0)]

    async def client_counts(self, scope: RequestScope) -> dict[str, int]:
        async with self.read() as conn:
            edev = (
                await conn.execute(
                    sa.select(sa.func.count()).select_from(sites).where(scope.site_condition())
                )
            ).scalar_one()
            mup = (
                await conn.execute(
                    sa.select(sa.func.count()).select_from(mups).where(self._mup_condition(scope))
                )
            ).scalar_one()
        return {"edev": edev, "mup": mup}

    async def group_names(self, group_ids: list[int]) -> dict[int, str]:
        if not group_ids:
            return {}
        async with self.read() as conn:
            rows = (
                await conn.execute(sa.select(groups.c.id, groups.c.name).where(groups.c.id.in_(group_ids)))
            ).all()
        return {row.id: row.name for row in rows}

    # --------------------------------------------------------------------------------- programs & controls

    async def site_view(self, scope: RequestScope, site_id: int) -> SiteView:
        """Everything a site's FSA/program/control resources depend on, read in one go."""
        async with self.read() as conn:
            site = await self._site(conn, scope, site_id)
            targets = await _site_targets(conn, site_id)
            keys = [k for k, _ in targets]
            progs = await _visible_programs(conn, keys)
        return SiteView(site=site, targets=targets, programs=progs)

    async def program_controls(
        self, view: SiteView, program_id: int, page: Page, *, active_only: bool = False
    ) -> tuple[int, list[sa.Row], int | None]:
        """(total, rows, next change time) for the DERControls of a program that the site sees."""
        self.program_row(view, program_id)
        now = self.clock()
        keys = [k for k, _ in view.targets]
        cond = [
            controls.c.program_id == program_id,
            controls.c.target.in_(keys),
            controls.c.start + controls.c.duration > (page.after if page.after is not None else now),
        ]
        if active_only:
            cond += [
                controls.c.start <= now,
                controls.c.cancelled_at.is_(None),
                controls.c.superseded_at.is_(None),
            ]
        # The DOE program also lists the site's bulk DOE intervals (head-end); they are merged by start.
        with_does = any(p.id == program_id and p.key == "doe" for p in view.programs)
        async with self.read() as conn:
            total = (
                await conn.execute(sa.select(sa.func.count()).select_from(controls).where(*cond))
            ).scalar_one()
            rows = list(
                (
                    await conn.execute(
                        sa.select(controls)
                        .where(*cond)
                        .order_by(controls.c.start, controls.c.creation_time.desc(), controls.c.mrid.desc())
                        .offset(0 if with_does else page.start)
                        .limit(page.start + page.limit if with_does else page.limit)
                    )
                ).all()
            )
            doe_next = None
            if with_does:
                from server.headend.doe import doe_controls

                doe_total, doe_rows, doe_next = await doe_controls(
                    conn,
                    self.pen,
                    view.site.id,
                    program_id,
                    after=page.after if page.after is not None else now,
                    now=now,
                    active_only=active_only,
                    limit=page.start + page.limit,
                )
                total += doe_total
                merged = sorted(rows + doe_rows, key=lambda row: row.mrid, reverse=True)
                merged.sort(key=lambda row: (row.start, -row.creation_time))
                rows = merged[page.start : page.start + page.limit]
            # The list changes by itself when the next control starts or ends.
            next_change = (
                await conn.execute(
                    sa.select(
                        sa.func.min(
                            sa.case(
                                (controls.c.start > now, controls.c.start),
                                else_=controls.c.start + controls.c.duration,
                            )
                        )
                    ).where(*cond)
                )
            ).scalar_one()
        if doe_next is not None and (next_change is None or doe_next < next_change):
            next_change = doe_next
        return total, rows, next_change

    def program_row(self, view: SiteView, program_id: int) -> sa.Row:
        for p in view.programs:
            if p.id == program_id:
                return p
        raise NotFound(f"no DERProgram {program_id} for EndDevice {view.site.id}")

    async def control(self, view: SiteView, program_id: int, control_id: int) -> sa.Row:
        program = self.program_row(view, program_id)
        keys = [k for k, _ in view.targets]
        async with self.read() as conn:
            if program.key == "doe" and control_id >= 10**12:  # a bulk DOE interval (server.headend.doe)
                from server.headend.doe import doe_control

                found = await doe_control(conn, self.pen, view.site.id, program_id, control_id)
                if found is None:
                    raise NotFound(f"no DERControl {control_id} in DERProgram {program_id}")
                return found  # type: ignore[return-value]
            row = (
                await conn.execute(
                    sa.select(controls).where(
                        controls.c.id == control_id,
                        controls.c.program_id == program_id,
                        controls.c.target.in_(keys),
                    )
                )
            ).first()
        if row is None:
            raise NotFound(f"no DERControl {control_id} in DERProgram {program_id}")
        return row

    async def default_control(self, view: SiteView, program_id: int) -> sa.Row | None:
        """The most specific DefaultDERControl of the program for the site: site, nearest group, all."""
        self.program_row(view, program_id)
        rank = dict(view.targets)
        async with self.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(default_controls).where(
                        default_controls.c.program_id == program_id, default_controls.c.target.in_(list(rank))
                    )
                )
            ).all()
        if not rows:
            return None
        return max(rows, key=lambda row: (rank[row.target], -row.id))

    async def programs_with_default(self, view: SiteView) -> set[int]:
        """Programs that have a DefaultDERControl this site sees (so only those link to one)."""
        async with self.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(default_controls.c.program_id)
                    .where(default_controls.c.target.in_([k for k, _ in view.targets]))
                    .distinct()
                )
            ).all()
        return {row.program_id for row in rows}

    async def rate(
        self, view_or_targets: SiteView | list[tuple[str, int]] | None, resource: str, default: int
    ) -> int:
        """The pollRate/postRate for ``resource`` as seen by a site (site > nearest group > all > default)."""
        targets = (
            view_or_targets.targets if isinstance(view_or_targets, SiteView) else (view_or_targets or [])
        )
        rank = dict(targets) if targets else {"all": 0}
        async with self.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(rate_settings).where(
                        rate_settings.c.resource == resource, rate_settings.c.target.in_(list(rank))
                    )
                )
            ).all()
        if not rows:
            return default
        return max(rows, key=lambda row: rank[row.target]).value

    # --------------------------------------------------------------------------------- DER documents

    async def der_ids(self, scope: RequestScope, site_id: int, page: Page) -> tuple[int, list[int]]:
        async with self.read() as conn:
            await self._site(conn, scope, site_id)
            ids = [
                row.id
                for row in (
                    await conn.execute(
                        sa.select(ders.c.id).where(ders.c.site_id == site_id).order_by(ders.c.id)
                    )
                ).all()
            ]
        return len(ids), ids[page.start : page.start + page.limit]

    async def _der(self, conn: AsyncConnection, scope: RequestScope, site_id: int, der_id: int) -> None:
        await self._site(conn, scope, site_id)
        found = (
            await conn.execute(sa.select(ders.c.id).where(ders.c.id == der_id, ders.c.site_id == site_id))
        ).first()
        if found is None:
            raise NotFound(f"no DER {der_id} on EndDevice {site_id}")

    async def der_exists(self, scope: RequestScope, site_id: int, der_id: int) -> None:
        async with self.read() as conn:
            await self._der(conn, scope, site_id, der_id)

    async def der_document(self, scope: RequestScope, site_id: int, der_id: int, kind: str) -> Any | None:
        async with self.read() as conn:
            await self._der(conn, scope, site_id, der_id)
            row = (
                await conn.execute(
                    sa.select(der_documents.c.xml).where(
                        der_documents.c.der_id == der_id, der_documents.c.kind == kind
                    )
                )
            ).first()
        if row is None:
            return None
        return from_xml(row.xml.encode(), DER_DOCUMENT_TYPES[kind])

    async def put_der_document(
        self, scope: RequestScope, site_id: int, der_id: int, kind: str, doc: Any
    ) -> None:
        doc = dataclasses.replace(doc, href=None)
        xml = to_xml(doc).decode()
        now = self.clock()
        async with self.write() as conn:
            await self._der(conn, scope, site_id, der_id)
            stmt = _insert(conn, der_documents).values(der_id=der_id, kind=kind, xml=xml, updated_at=now)
            await conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["der_id", "kind"], set_={"xml": xml, "updated_at": now}
                )
            )

    # --------------------------------------------------------------------------------- telemetry

    def _mup_condition(self, scope: RequestScope) -> sa.ColumnElement[bool]:
        return mups.c.site_id.in_(sa.select(sites.c.id).where(scope.site_condition()))

    async def list_mups(self, scope: RequestScope, page: Page) -> tuple[int, list[sa.Row]]:
        cond = self._mup_condition(scope)
        async with self.read() as conn:
            total = (
                await conn.execute(sa.select(sa.func.count()).select_from(mups).where(cond))
            ).scalar_one()
            rows = (
                await conn.execute(
                    sa.select(mups, sites.c.lfdi)
                    .join(sites, sites.c.id == mups.c.site_id)
                    .where(cond)
                    .order_by(mups.c.id)
                    .offset(page.start)
                    .limit(page.limit)
                )
            ).all()
        return total, list(rows)

    async def mup(self, scope: RequestScope, mup_id: int) -> tuple[sa.Row, list[sa.Row]]:
        async with self.read() as conn:
            row = (
                await conn.execute(
                    sa.select(mups, sites.c.lfdi)
                    .join(sites, sites.c.id == mups.c.site_id)
                    .where(mups.c.id == mup_id, self._mup_condition(scope))
                )
            ).first()
            if row is None:
                raise NotFound(f"no MirrorUsagePoint {mup_id} for this client")
            mmrs = (
                await conn.execute(
                    sa.select(meter_readings)
                    .where(meter_readings.c.mup_id == mup_id)
                    .order_by(meter_readings.c.id)
                )
            ).all()
        return row, list(mmrs)

    async def upsert_mup(self, scope: RequestScope, mup: r.MirrorUsagePoint) -> tuple[int, bool]:
        """POST MirrorUsagePoint: the same mRID for the same device updates it. Returns (id, created)."""
        now = self.clock()
        async with self.write() as conn:
            site = await _own_site(conn, scope, mup.deviceLFDI, "MirrorUsagePoint.deviceLFDI")
            values = dict(
                description=mup.description,
                role_flags=mup.roleFlags,
                service_category=mup.serviceCategoryKind,
                status=mup.status,
                version=mup.version,
            )
            existing = (
                await conn.execute(
                    sa.select(mups.c.id).where(mups.c.site_id == site.id, mups.c.mrid == mup.mRID.upper())
                )
            ).first()
            if existing is None:
                mup_id = (
                    await conn.execute(
                        mups.insert().values(site_id=site.id, mrid=mup.mRID.upper(), created_at=now, **values)
                    )
                ).inserted_primary_key[0]
            else:
                mup_id = existing.id
                await conn.execute(mups.update().where(mups.c.id == mup_id).values(**values))
            for mmr in mup.MirrorMeterReading:
                await self._store_meter_reading(conn, mup_id, mmr, now)
        return mup_id, existing is None

    async def post_meter_readings(
        self, scope: RequestScope, mup_id: int, items: list[r.MirrorMeterReading]
    ) -> list[tuple[int, bool]]:
        now = self.clock()
        async with self.write() as conn:
            found = (
                await conn.execute(
                    sa.select(mups.c.id).where(mups.c.id == mup_id, self._mup_condition(scope))
                )
            ).first()
            if found is None:
                raise NotFound(f"no MirrorUsagePoint {mup_id} for this client")
            return [await self._store_meter_reading(conn, mup_id, mmr, now) for mmr in items]

    async def _store_meter_reading(
        self, conn: AsyncConnection, mup_id: int, mmr: r.MirrorMeterReading, now: int
    ) -> tuple[int, bool]:
        mrid = (mmr.mRID or "").upper()
        existing = (
            await conn.execute(
                sa.select(meter_readings.c.id).where(
                    meter_readings.c.mup_id == mup_id, meter_readings.c.mrid == mrid
                )
            )
        ).first()
        if existing is None:
            if mmr.ReadingType is None:
                raise BadRequest(f"MirrorMeterReading.ReadingType: required for a new reading (mRID {mrid})")
            mmr_id = (
                await conn.execute(
                    meter_readings.insert().values(
                        mup_id=mup_id,
                        mrid=mrid,
                        description=mmr.description,
                        reading_type=to_xml(dataclasses.replace(mmr.ReadingType, href=None)).decode(),
                        last_update=mmr.lastUpdateTime,
                    )
                )
            ).inserted_primary_key[0]
        else:
            mmr_id = existing.id
            values: dict[str, Any] = {"last_update": mmr.lastUpdateTime}
            if mmr.ReadingType is not None:
                values["reading_type"] = to_xml(dataclasses.replace(mmr.ReadingType, href=None)).decode()
            if mmr.description is not None:
                values["description"] = mmr.description
            await conn.execute(meter_readings.update().where(meter_readings.c.id == mmr_id).values(**values))
        batch = []
        single = [mmr.Reading] if mmr.Reading is not None else []
        for reading in single + [rd for rs in mmr.MirrorReadingSet for rd in rs.Reading]:
            if reading.value is None:
                raise BadRequest(f"Reading.value: required (MirrorMeterReading {mrid})")
            period = reading.timePeriod
            batch.append(
                dict(
                    meter_reading_id=mmr_id,
                    value=reading.value,
                    quality_flags=reading.qualityFlags,
                    time_start=period.start if period else None,
                    duration=period.duration if period else None,
                    received_at=now,
                )
            )
        if batch:
            stmt = _insert(conn, readings)
            stmt = stmt.on_conflict_do_update(
                index_elements=["meter_reading_id", "time_start"],
                set_={
                    "value": stmt.excluded.value,
                    "quality_flags": stmt.excluded.quality_flags,
                    "duration": stmt.excluded.duration,
                    "received_at": stmt.excluded.received_at,
                },
            )
            await conn.execute(stmt, batch)
        return mmr_id, existing is None

    async def delete_mup(self, scope: RequestScope, mup_id: int) -> None:
        async with self.write() as conn:
            result = await conn.execute(mups.delete().where(mups.c.id == mup_id, self._mup_condition(scope)))
            if result.rowcount == 0:
                raise NotFound(f"no MirrorUsagePoint {mup_id} for this client")

    # --------------------------------------------------------------------------------- responses

    async def post_response(self, scope: RequestScope, response: r.Response) -> int:
        """Store a DERControl Response. The subject must be a control the responding site can see."""
        if response.status is None or response.status not in VALID_RESPONSE_STATUSES:
            raise BadRequest(f"Response.status: {response.status!r} is not a valid DER response status")
        now = self.clock()
        async with self.write() as conn:
            site = await _own_site(conn, scope, response.endDeviceLFDI, "Response.endDeviceLFDI")
            keys = [k for k, _ in await _site_targets(conn, site.id)]
            control = (
                await conn.execute(
                    sa.select(controls.c.id).where(
                        controls.c.mrid == (response.subject or "").upper(), controls.c.target.in_(keys)
                    )
                )
            ).first()
            if control is None:
                raise BadRequest(
                    f"Response.subject: {response.subject} is not a DERControl of this EndDevice"
                )
            return (
                await conn.execute(
                    responses.insert().values(
                        site_id=site.id,
                        control_id=control.id,
                        status=response.status,
                        created_time=response.createdDateTime,
                        received_at=now,
                    )
                )
            ).inserted_primary_key[0]

    def _response_query(self, scope: RequestScope) -> sa.Select:
        return (
            sa.select(responses, sites.c.lfdi, controls.c.mrid.label("subject"))
            .join(sites, sites.c.id == responses.c.site_id)
            .join(controls, controls.c.id == responses.c.control_id)
            .where(scope.site_condition())
        )

    async def list_responses(self, scope: RequestScope, page: Page) -> tuple[int, list[sa.Row]]:
        query = self._response_query(scope)
        if page.after is not None:
            query = query.where(responses.c.received_at >= page.after)
        async with self.read() as conn:
            total = (
                await conn.execute(sa.select(sa.func.count()).select_from(query.subquery()))
            ).scalar_one()
            rows = (
                await conn.execute(query.order_by(responses.c.id).offset(page.start).limit(page.limit))
            ).all()
        return total, list(rows)

    async def response(self, scope: RequestScope, response_id: int) -> sa.Row:
        async with self.read() as conn:
            row = (
                await conn.execute(self._response_query(scope).where(responses.c.id == response_id))
            ).first()
        if row is None:
            raise NotFound(f"no Response {response_id} for this client")
        return row

    # --------------------------------------------------------------------------------- subscriptions

    async def create_subscription(
        self,
        scope: RequestScope,
        site_id: int,
        *,
        kind: str,
        program_id: int | None,
        fsa_key: int | None,
        subscribed_href: str,
        notification_uri: str,
        limit: int,
        level: str,
    ) -> int:
        if kind not in SUBSCRIPTION_KINDS:
            raise BadRequest(f"Subscription.subscribedResource: {subscribed_href} is not subscribable")
        if len(notification_uri) > 512:
            raise BadRequest("Subscription.notificationURI: at most 512 characters")
        now = self.clock()
        async with self.write() as conn:
            await self._site(conn, scope, site_id)
            return (
                await conn.execute(
                    subscriptions.insert().values(
                        site_id=site_id,
                        kind=kind,
                        program_id=program_id,
                        fsa_key=fsa_key,
                        subscribed_href=subscribed_href,
                        notification_uri=notification_uri,
                        limit=limit,
                        level=level,
                        owner_lfdi=scope.lfdi,
                        created_at=now,
                    )
                )
            ).inserted_primary_key[0]

    async def list_subscriptions(
        self, scope: RequestScope, site_id: int, page: Page
    ) -> tuple[int, list[sa.Row]]:
        async with self.read() as conn:
            await self._site(conn, scope, site_id)
            cond = subscriptions.c.site_id == site_id
            total = (
                await conn.execute(sa.select(sa.func.count()).select_from(subscriptions).where(cond))
            ).scalar_one()
            rows = (
                await conn.execute(
                    sa.select(subscriptions)
                    .where(cond)
                    .order_by(subscriptions.c.id)
                    .offset(page.start)
                    .limit(page.limit)
                )
            ).all()
        return total, list(rows)

    async def subscription(self, scope: RequestScope, site_id: int, sub_id: int) -> sa.Row:
        async with self.read() as conn:
            await self._site(conn, scope, site_id)
            row = (
                await conn.execute(
                    sa.select(subscriptions).where(
                        subscriptions.c.id == sub_id, subscriptions.c.site_id == site_id
                    )
                )
            ).first()
        if row is None:
            raise NotFound(f"no Subscription {sub_id} on EndDevice {site_id}")
        return row

    async def delete_subscription(self, scope: RequestScope, site_id: int, sub_id: int) -> None:
        async with self.write() as conn:
            await self._site(conn, scope, site_id)
            result = await conn.execute(
                subscriptions.delete().where(subscriptions.c.id == sub_id, subscriptions.c.site_id == site_id)
            )
            if result.rowcount == 0:
                raise NotFound(f"no Subscription {sub_id} on EndDevice {site_id}")

    # --------------------------------------------------------------------------------- outbox (internal)

    async def due_notifications(self, now: float, limit: int = 50) -> list[sa.Row]:
        """Outbox rows due for delivery, with their subscription and its owner's scope."""
        async with self.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(
                        outbox.c.id.label("outbox_id"),
                        outbox.c.seq,
                        outbox.c.attempts,
                        subscriptions,
                        clients.c.kind.label("owner_kind"),
                        clients.c.aggregator_id.label("owner_aggregator"),
                    )
                    .join(subscriptions, subscriptions.c.id == outbox.c.subscription_id)
                    .join(clients, clients.c.lfdi == subscriptions.c.owner_lfdi, isouter=True)
                    .where(outbox.c.next_attempt_at <= now)
                    .order_by(outbox.c.next_attempt_at)
                    .limit(limit)
                )
            ).all()
        return list(rows)

    async def next_notification_time(self) -> float | None:
        async with self.read() as conn:
            return (await conn.execute(sa.select(sa.func.min(outbox.c.next_attempt_at)))).scalar_one()

    async def claim_notification(self, outbox_id: int, due_by: float, lease_until: float) -> bool:
        """Take a due outbox row for delivery. Server processes sharing a database all see it due; this
        compare-and-set lets exactly one send it. The claim moves its next attempt to ``lease_until``,
        so a sender that dies mid-delivery only delays the notification, never drops it."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                outbox.update()
                .where(outbox.c.id == outbox_id, outbox.c.next_attempt_at <= due_by)
                .values(next_attempt_at=lease_until)
            )
            return result.rowcount == 1

    async def notification_delivered(self, outbox_id: int, seq: int) -> None:
        async with self.engine.begin() as conn:
            result = await conn.execute(outbox.delete().where(outbox.c.id == outbox_id, outbox.c.seq == seq))
            if result.rowcount == 0:  # changed again while in flight: deliver the newer state now
                await conn.execute(
                    outbox.update().where(outbox.c.id == outbox_id).values(attempts=0, next_attempt_at=0.0)
                )

    async def notification_failed(self, outbox_id: int, next_attempt_at: float, error: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                outbox.update()
                .where(outbox.c.id == outbox_id)
                .values(
                    attempts=outbox.c.attempts + 1, next_attempt_at=next_attempt_at, last_error=error[:256]
                )
            )


@dataclass(frozen=True, slots=True)
class SiteView:
    site: sa.Row
    targets: list[tuple[str, int]]
    programs: list[sa.Row]

    def fsa_keys(self) -> list[int]:
        return sorted({p.group_id or 0 for p in self.programs})


async def _enqueue(
    conn: AsyncConnection,
    now: int,
    *,
    kinds: tuple[str, ...],
    program_id: int | None = None,
    target: str | None = None,
    site_ids: list[int] | None = None,
    owner_scope: RequestScope | None = None,
) -> None:
    """Queue a notification for every subscription watching ``kinds`` that the change reaches.

    ``target`` ("all" / "g:<id>" / "s:<id>") selects the affected sites as controls do; ``owner_scope``
    selects EndDeviceList subscriptions of that client.
    """
    cond: list[Any] = [subscriptions.c.kind.in_(kinds)]
    if program_id is not None:
        cond.append(subscriptions.c.program_id == program_id)
    if site_ids is not None:
        cond.append(subscriptions.c.site_id.in_(site_ids))
    if target is not None and target != "all":
        if target.startswith("s:"):
            cond.append(subscriptions.c.site_id == int(target[2:]))
        else:
            cond.append(subscriptions.c.site_id.in_(_group_member_sites(int(target[2:]))))
    if owner_scope is not None:
        cond.append(subscriptions.c.site_id.in_(sa.select(sites.c.id).where(owner_scope.site_condition())))
    select = sa.select(
        subscriptions.c.id, sa.literal(0), sa.literal(now), sa.literal(0), sa.literal(float(now))
    ).where(*cond)
    stmt = _insert(conn, outbox).from_select(
        ["subscription_id", "seq", "created_at", "attempts", "next_attempt_at"], select
    )
    stmt = stmt.on_conflict_do_update(index_elements=["subscription_id"], set_={"seq": outbox.c.seq + 1})
    await conn.execute(stmt)


def _group_member_sites(group_id: int) -> sa.Select:
    """Sites in a group or any group nested below it."""
    tree = sa.select(groups.c.id).where(groups.c.id == group_id).cte("subtree", recursive=True)
    tree = tree.union(sa.select(groups.c.id).where(groups.c.parent_id == tree.c.id))
    return sa.select(memberships.c.site_id).where(memberships.c.group_id.in_(sa.select(tree.c.id)))


# ------------------------------------------------------------------------------------------- admin API


class Admin:
    """The operator side of the store: what the head-end API, tests and demos call.

    Targets are written ``"all"``, ``"group:<name>"``, ``"site:<LFDI>"`` or ``"nmi:<NMI>"``. Every write
    records an audit entry (``actor``, ``reason``) in the same transaction and commits before returning.
    Notifications for affected subscriptions are queued in that transaction too.
    """

    def __init__(self, store: Store) -> None:
        self.store = store

    # -- helpers

    async def _audit(
        self,
        conn: AsyncConnection,
        actor: str,
        action: str,
        target: str | None,
        reason: str | None,
        **detail: Any,
    ) -> None:
        if len(actor) > 64:
            raise AdminError("actor: at most 64 characters")
        if reason is not None and len(reason) > 256:
            raise AdminError("reason: at most 256 characters")
        await conn.execute(
            audit_log.insert().values(
                at=self.store.clock(),
                actor=actor,
                action=action,
                target=target,
                reason=reason,
                detail=json.dumps(detail, default=str) if detail else None,
            )
        )

    async def _resolve_target(self, conn: AsyncConnection, target: str) -> str:
        if target == "all":
            return "all"
        kind, _, value = target.partition(":")
        if kind == "group":
            row = (await conn.execute(sa.select(groups.c.id).where(groups.c.name == value))).first()
            if row is None:
                raise AdminError(f"target: no group named {value!r}")
            return f"g:{row.id}"
        if kind in ("site", "nmi"):
            if kind == "site":
                try:
                    cond = sites.c.lfdi == normalise_lfdi(value)
                except IdentityError as exc:
                    raise AdminError(f"target: {exc}") from None
            else:
                cond = sites.c.nmi == value
            row = (await conn.execute(sa.select(sites.c.id).where(cond))).first()
            if row is None:
                raise AdminError(f"target: no site {target!r}")
            return f"s:{row.id}"
        raise AdminError(f"target: {target!r} is not 'all', 'group:NAME', 'site:LFDI' or 'nmi:NMI'")

    async def _program_id(self, conn: AsyncConnection, program: str) -> int:
        row = (await conn.execute(sa.select(programs.c.id).where(programs.c.key == program))).first()
        if row is None:
            raise AdminError(f"program: no program {program!r}")
        return row.id

    async def _group_id(self, conn: AsyncConnection, name: str) -> int:
        row = (await conn.execute(sa.select(groups.c.id).where(groups.c.name == name))).first()
        if row is None:
            raise AdminError(f"group: no group named {name!r}")
        return row.id

    # -- clients, aggregators, sites

    async def create_aggregator(
        self, name: str, *, lfdis: Iterable[str] = (), actor: str = "system", reason: str | None = None
    ) -> int:
        if not name or len(name) > 64:
            raise AdminError("name: must be 1 to 64 characters")
        now = self.store.clock()
        async with self.store.write() as conn:
            if (await conn.execute(sa.select(aggregators.c.id).where(aggregators.c.name == name))).first():
                raise AdminError(f"name: aggregator {name!r} already exists")
            agg_id = (
                await conn.execute(aggregators.insert().values(name=name, created_at=now))
            ).inserted_primary_key[0]
            for lfdi in lfdis:
                await self._attach_client(conn, agg_id, lfdi)
            await self._audit(conn, actor, "aggregator.create", name, reason, lfdis=list(lfdis))
        return agg_id

    async def _attach_client(self, conn: AsyncConnection, aggregator_id: int, lfdi: str) -> None:
        try:
            lfdi = normalise_lfdi(lfdi)
        except IdentityError as exc:
            raise AdminError(f"lfdi: {exc}") from None
        stmt = _insert(conn, clients).values(
            lfdi=lfdi, kind="aggregator", aggregator_id=aggregator_id, revoked=False
        )
        await conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["lfdi"], set_={"kind": "aggregator", "aggregator_id": aggregator_id}
            )
        )

    async def add_aggregator_certificate(
        self, aggregator: str, lfdi: str, *, actor: str = "system", reason: str | None = None
    ) -> None:
        """Attach another certificate to an aggregator (rotation: add new, later revoke/remove old)."""
        async with self.store.write() as conn:
            row = (
                await conn.execute(sa.select(aggregators.c.id).where(aggregators.c.name == aggregator))
            ).first()
            if row is None:
                raise AdminError(f"aggregator: no aggregator named {aggregator!r}")
            await self._attach_client(conn, row.id, lfdi)
            await self._audit(conn, actor, "aggregator.add_certificate", aggregator, reason, lfdi=lfdi)

    async def aggregator_of(self, lfdi: str) -> str | None:
        async with self.store.read() as conn:
            row = (
                await conn.execute(
                    sa.select(aggregators.c.name)
                    .join(clients, clients.c.aggregator_id == aggregators.c.id)
                    .where(clients.c.lfdi == lfdi.upper())
                )
            ).first()
        return row.name if row else None

    async def set_revoked(
        self, lfdi: str, revoked: bool = True, *, actor: str = "system", reason: str | None = None
    ) -> None:
        """Revoke (or restore) a certificate; effective on its next request."""
        try:
            lfdi = normalise_lfdi(lfdi)
        except IdentityError as exc:
            raise AdminError(f"lfdi: {exc}") from None
        async with self.store.write() as conn:
            stmt = _insert(conn, clients).values(lfdi=lfdi, kind="device", revoked=revoked)
            await conn.execute(stmt.on_conflict_do_update(index_elements=["lfdi"], set_={"revoked": revoked}))
            await self._audit(conn, actor, "client.revoke" if revoked else "client.restore", lfdi, reason)

    async def register_site(
        self,
        lfdi: str,
        *,
        sfdi: int | None = None,
        nmi: str | None = None,
        pin: int | None = None,
        aggregator: str | None = None,
        groups_: Iterable[str] = (),
        label: str | None = None,
        device_category: str | None = None,
        actor: str = "system",
        reason: str | None = None,
    ) -> int:
        """Out-of-band registration of a site (EndDevice). Returns the site id."""
        try:
            lfdi = normalise_lfdi(lfdi)
        except IdentityError as exc:
            raise AdminError(f"lfdi: {exc}") from None
        expected = sfdi_from_lfdi(lfdi)
        if sfdi is not None and sfdi != expected:
            raise AdminError(f"sfdi: {sfdi} does not match lfdi {lfdi} (expected {expected})")
        if pin is not None and not 0 <= pin <= 999999:
            raise AdminError(f"pin: must be 0..999999, got {pin}")
        if nmi is not None and not 1 <= len(nmi) <= 32:
            raise AdminError("nmi: must be 1 to 32 characters")
        if label is not None and len(label) > 128:
            raise AdminError("label: at most 128 characters")
        if device_category is not None and len(device_category) > 8:
            raise AdminError("device_category: at most 8 hex digits")
        now = self.store.clock()
        async with self.store.write() as conn:
            if (await conn.execute(sa.select(sites.c.id).where(sites.c.lfdi == lfdi))).first():
                raise AdminError(f"lfdi: site {lfdi} is already registered")
            agg_id = None
            if aggregator is not None:
                row = (
                    await conn.execute(sa.select(aggregators.c.id).where(aggregators.c.name == aggregator))
                ).first()
                if row is None:
                    raise AdminError(f"aggregator: no aggregator named {aggregator!r}")
                agg_id = row.id
            site_id = (
                await conn.execute(
                    sites.insert().values(
                        lfdi=lfdi,
                        sfdi=expected,
                        aggregator_id=agg_id,
                        device_category=device_category,
                        enabled=True,
                        changed_time=now,
                        registered_time=now,
                        pin=pin,
                        nmi=nmi,
                        label=label,
                    )
                )
            ).inserted_primary_key[0]
            await conn.execute(ders.insert().values(site_id=site_id))
            for name in groups_:
                await conn.execute(
                    memberships.insert().values(site_id=site_id, group_id=await self._group_id(conn, name))
                )
            await self._audit(conn, actor, "site.register", lfdi, reason, nmi=nmi, groups=list(groups_))
        return site_id

    async def deregister_site(self, lfdi: str, *, actor: str = "system", reason: str | None = None) -> None:
        """Decommission: the EndDevice and everything under it leave the 2030.5 side (audit keeps history)."""
        async with self.store.write() as conn:
            key = await self._resolve_target(conn, f"site:{lfdi}")
            site_id = int(key[2:])
            await conn.execute(controls.delete().where(controls.c.target == key))
            await conn.execute(default_controls.delete().where(default_controls.c.target == key))
            await conn.execute(rate_settings.delete().where(rate_settings.c.target == key))
            await conn.execute(sites.delete().where(sites.c.id == site_id))
            await self._audit(conn, actor, "site.deregister", lfdi, reason)

    async def site_id(self, lfdi: str) -> int:
        async with self.store.read() as conn:
            return int((await self._resolve_target(conn, f"site:{lfdi}"))[2:])

    # -- groups

    async def create_group(
        self,
        name: str,
        *,
        parent: str | None = None,
        description: str | None = None,
        actor: str = "system",
        reason: str | None = None,
    ) -> int:
        if not name or len(name) > 64 or ":" in name:
            raise AdminError("name: must be 1 to 64 characters without ':'")
        if description is not None and len(description) > 128:
            raise AdminError("description: at most 128 characters")
        async with self.store.write() as conn:
            if (await conn.execute(sa.select(groups.c.id).where(groups.c.name == name))).first():
                raise AdminError(f"name: group {name!r} already exists")
            parent_id = await self._group_id(conn, parent) if parent else None
            gid = (
                await conn.execute(
                    groups.insert().values(name=name, parent_id=parent_id, description=description)
                )
            ).inserted_primary_key[0]
            await self._audit(conn, actor, "group.create", name, reason, parent=parent)
        return gid

    async def set_membership(
        self, lfdi: str, group: str, member: bool = True, *, actor: str = "system", reason: str | None = None
    ) -> None:
        """Add (or remove) a site to a group; its FSAs, programs and controls follow at once."""
        now = self.store.clock()
        async with self.store.write() as conn:
            site_id = int((await self._resolve_target(conn, f"site:{lfdi}"))[2:])
            gid = await self._group_id(conn, group)
            if member:
                stmt = _insert(conn, memberships).values(site_id=site_id, group_id=gid)
                await conn.execute(stmt.on_conflict_do_nothing())
            else:
                await conn.execute(
                    memberships.delete().where(
                        memberships.c.site_id == site_id, memberships.c.group_id == gid
                    )
                )
            await _enqueue(conn, now, kinds=SUBSCRIPTION_KINDS[1:], site_ids=[site_id])
            await self._audit(
                conn, actor, "group.join" if member else "group.leave", f"{lfdi}->{group}", reason
            )

    # -- programs

    async def create_program(
        self,
        key: str,
        *,
        primacy: int,
        description: str | None = None,
        group: str | None = None,
        actor: str = "system",
        reason: str | None = None,
    ) -> int:
        """A DERProgram (lower primacy wins). ``group`` limits it to that group's sites (its own FSA)."""
        if not key or len(key) > 32:
            raise AdminError("key: must be 1 to 32 characters")
        if not isinstance(primacy, int) or not 0 <= primacy <= 255:
            raise AdminError(f"primacy: must be an integer 0..255, got {primacy!r}")
        description = description or key
        if len(description) > 32:
            raise AdminError("description: at most 32 characters")
        now = self.store.clock()
        async with self.store.write() as conn:
            if (await conn.execute(sa.select(programs.c.id).where(programs.c.key == key))).first():
                raise AdminError(f"key: program {key!r} already exists")
            group_id = await self._group_id(conn, group) if group else None
            pid = (
                await conn.execute(
                    programs.insert().values(
                        key=key,
                        mrid=new_mrid(self.store.pen),
                        description=description,
                        primacy=primacy,
                        group_id=group_id,
                        version=0,
                    )
                )
            ).inserted_primary_key[0]
            await _enqueue(conn, now, kinds=("fsa", "derp"), target=f"g:{group_id}" if group_id else "all")
            await self._audit(conn, actor, "program.create", key, reason, primacy=primacy, group=group)
        return pid

    async def ensure_standard_programs(self) -> None:
        """The three programs the head-end uses: emergency (primacy 1) > doe (10) > default (20)."""
        async with self.store.read() as conn:
            existing = {row.key for row in (await conn.execute(sa.select(programs.c.key))).all()}
        for key, primacy, description in (
            ("emergency", 1, "Emergency"),
            ("doe", 10, "Dynamic operating envelope"),
            ("default", 20, "Default limits"),
        ):
            if key not in existing:
                try:
                    await self.create_program(key, primacy=primacy, description=description[:32])
                except (AdminError, sa.exc.IntegrityError):  # another server process just created it
                    pass

    # -- controls

    async def create_control(
        self,
        program: str,
        target: str,
        *,
        start: int | None = None,
        duration: int,
        base: r.DERControlBase,
        randomize_start: int | None = None,
        randomize_duration: int | None = None,
        response_required: str | None = "03",
        description: str | None = None,
        supersede: bool = True,
        actor: str = "system",
        reason: str | None = None,
    ) -> str:
        """Publish a DERControl on ``program`` for ``target``; returns its mRID.

        With ``supersede`` an earlier overlapping control of the same program and target is marked
        superseded (2030.5 event status 4).
        """
        now = self.store.clock()
        start = now if start is None else start
        if not isinstance(duration, int) or not 0 < duration < 2**32:
            raise AdminError(f"duration: must be a positive number of seconds, got {duration!r}")
        if not isinstance(start, int) or start < 0:
            raise AdminError(f"start: must be a Unix time in seconds, got {start!r}")
        for name, value in (("randomize_start", randomize_start), ("randomize_duration", randomize_duration)):
            if value is not None and not -(2**15) <= value < 2**15:
                raise AdminError(f"{name}: must fit in Int16, got {value}")
        if response_required is not None:
            try:
                if not 0 <= int(response_required, 16) <= 255 or len(response_required) != 2:
                    raise ValueError
            except ValueError:
                raise AdminError(f"response_required: two hex digits, got {response_required!r}") from None
        if description is not None and len(description) > 32:
            raise AdminError("description: at most 32 characters")
        if not isinstance(base, r.DERControlBase):
            raise AdminError("base: must be a sep2 DERControlBase (see build_control_base)")
        mrid = new_mrid(self.store.pen)
        async with self.store.write() as conn:
            program_id = await self._program_id(conn, program)
            key = await self._resolve_target(conn, target)
            if supersede:
                await conn.execute(
                    controls.update()
                    .where(
                        controls.c.program_id == program_id,
                        controls.c.target == key,
                        controls.c.cancelled_at.is_(None),
                        controls.c.superseded_at.is_(None),
                        controls.c.start < start + duration,
                        controls.c.start + controls.c.duration > start,
                    )
                    .values(superseded_at=now, version=controls.c.version + 1)
                )
            await conn.execute(
                controls.insert().values(
                    mrid=mrid,
                    program_id=program_id,
                    target=key,
                    start=start,
                    duration=duration,
                    randomize_start=randomize_start,
                    randomize_duration=randomize_duration,
                    response_required=response_required,
                    base=json.dumps(to_jsonable(base), separators=(",", ":")),
                    description=description,
                    creation_time=now,
                    version=0,
                )
            )
            await _enqueue(conn, now, kinds=("derc", "actderc"), program_id=program_id, target=key)
            await self._audit(
                conn,
                actor,
                "control.create",
                target,
                reason,
                program=program,
                mrid=mrid,
                start=start,
                duration=duration,
                base=to_jsonable(base),
            )
        return mrid

    async def cancel_control(self, mrid: str, *, actor: str = "system", reason: str | None = None) -> None:
        now = self.store.clock()
        async with self.store.write() as conn:
            row = (await conn.execute(sa.select(controls).where(controls.c.mrid == mrid.upper()))).first()
            if row is None:
                raise AdminError(f"mrid: no control {mrid}")
            if row.cancelled_at is None:
                await conn.execute(
                    controls.update()
                    .where(controls.c.id == row.id)
                    .values(cancelled_at=now, version=controls.c.version + 1)
                )
                await _enqueue(
                    conn, now, kinds=("derc", "actderc"), program_id=row.program_id, target=row.target
                )
            await self._audit(conn, actor, "control.cancel", mrid, reason)

    async def set_default_control(
        self,
        program: str,
        target: str,
        *,
        base: r.DERControlBase,
        set_grad_w: int | None = None,
        description: str | None = None,
        actor: str = "system",
        reason: str | None = None,
    ) -> str:
        """Create or replace the DefaultDERControl of ``program`` for ``target``; returns its mRID."""
        if set_grad_w is not None and not 0 <= set_grad_w <= 65535:
            raise AdminError(f"set_grad_w: must be 0..65535, got {set_grad_w}")
        if not isinstance(base, r.DERControlBase):
            raise AdminError("base: must be a sep2 DERControlBase (see build_control_base)")
        now = self.store.clock()
        body = json.dumps(to_jsonable(base), separators=(",", ":"))
        async with self.store.write() as conn:
            program_id = await self._program_id(conn, program)
            key = await self._resolve_target(conn, target)
            row = (
                await conn.execute(
                    sa.select(default_controls).where(
                        default_controls.c.program_id == program_id, default_controls.c.target == key
                    )
                )
            ).first()
            if row is None:
                mrid = new_mrid(self.store.pen)
                await conn.execute(
                    default_controls.insert().values(
                        mrid=mrid,
                        program_id=program_id,
                        target=key,
                        base=body,
                        set_grad_w=set_grad_w,
                        description=description,
                        version=0,
                        changed_time=now,
                    )
                )
            else:
                mrid = row.mrid
                await conn.execute(
                    default_controls.update()
                    .where(default_controls.c.id == row.id)
                    .values(
                        base=body,
                        set_grad_w=set_grad_w,
                        description=description,
                        version=(row.version + 1) % 65536,
                        changed_time=now,
                    )
                )
            await _enqueue(conn, now, kinds=("dderc",), program_id=program_id, target=key)
            await self._audit(
                conn, actor, "default.set", target, reason, program=program, base=to_jsonable(base)
            )
        return mrid

    async def set_rate(
        self,
        resource: str,
        value: int,
        target: str = "all",
        *,
        actor: str = "system",
        reason: str | None = None,
    ) -> None:
        """Set a pollRate (resource in RATE_RESOURCES) or the MUP postRate ("post") for a target."""
        if resource not in RATE_RESOURCES:
            raise AdminError(f"resource: {resource!r} is not one of {', '.join(RATE_RESOURCES)}")
        if not isinstance(value, int) or not 1 <= value < 2**32:
            raise AdminError(f"value: a rate is a positive number of seconds, got {value!r}")
        async with self.store.write() as conn:
            key = await self._resolve_target(conn, target)
            stmt = _insert(conn, rate_settings).values(resource=resource, target=key, value=value)
            await conn.execute(
                stmt.on_conflict_do_update(index_elements=["resource", "target"], set_={"value": value})
            )
            await self._audit(conn, actor, "rate.set", target, reason, resource=resource, value=value)

    # -- queries for the head-end

    async def responses_for_control(self, mrid: str) -> list[dict[str, Any]]:
        async with self.store.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(
                        responses.c.status, responses.c.created_time, responses.c.received_at, sites.c.lfdi
                    )
                    .join(controls, controls.c.id == responses.c.control_id)
                    .join(sites, sites.c.id == responses.c.site_id)
                    .where(controls.c.mrid == mrid.upper())
                    .order_by(responses.c.id)
                )
            ).all()
        return [dict(row._mapping) for row in rows]

    async def site_readings(
        self, lfdi: str, *, since: int | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """Telemetry of a site: one dict per reading with its MUP/MMR mRIDs, ReadingType and time."""
        query = (
            sa.select(
                readings.c.time_start,
                readings.c.duration,
                readings.c.value,
                readings.c.quality_flags,
                meter_readings.c.mrid.label("mmr_mrid"),
                meter_readings.c.description,
                meter_readings.c.reading_type,
                mups.c.mrid.label("mup_mrid"),
            )
            .join(meter_readings, meter_readings.c.id == readings.c.meter_reading_id)
            .join(mups, mups.c.id == meter_readings.c.mup_id)
            .join(sites, sites.c.id == mups.c.site_id)
            .where(sites.c.lfdi == lfdi.upper())
        )
        if since is not None:
            query = query.where(readings.c.time_start >= since)
        async with self.store.read() as conn:
            rows = (
                await conn.execute(query.order_by(readings.c.time_start, readings.c.id).limit(limit))
            ).all()
        out = []
        for row in rows:
            item = dict(row._mapping)
            item["reading_type"] = from_xml(item["reading_type"].encode(), r.ReadingType)
            out.append(item)
        return out

    async def site_der_documents(self, lfdi: str) -> dict[str, Any]:
        """The DERCapability/DERSettings/DERStatus/DERAvailability last PUT by a site, by short name."""
        async with self.store.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(der_documents.c.kind, der_documents.c.xml)
                    .join(ders, ders.c.id == der_documents.c.der_id)
                    .join(sites, sites.c.id == ders.c.site_id)
                    .where(sites.c.lfdi == lfdi.upper())
                )
            ).all()
        return {row.kind: from_xml(row.xml.encode(), DER_DOCUMENT_TYPES[row.kind]) for row in rows}

    async def audit(self, *, limit: int = 100) -> list[dict[str, Any]]:
        async with self.store.read() as conn:
            rows = (
                await conn.execute(sa.select(audit_log).order_by(audit_log.c.id.desc()).limit(limit))
            ).all()
        return [dict(row._mapping) for row in rows]

    async def table_dump(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every table except the contact bookkeeping (tests compare before/after)."""
        out: dict[str, list[tuple[Any, ...]]] = {}
        async with self.store.read() as conn:
            for table in metadata.sorted_tables:
                query = sa.select(table)
                if table is clients:
                    query = sa.select(
                        clients.c.lfdi, clients.c.kind, clients.c.aggregator_id, clients.c.revoked
                    )
                out[table.name] = [
                    tuple(row) for row in (await conn.execute(query.order_by(*table.primary_key)))
                ]
        return out


# The head-end's tables share this metadata (bulk DOE intervals); imported last, it only needs ``metadata``.
import server.headend.tables  # noqa: E402, F401
