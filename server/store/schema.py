"""Tables and schema constants (one ``metadata``: alembic and ``Admin.table_dump`` see every table).

Created by the migrations in ``server/migrations/versions``; changing a table here needs a new revision."""

from __future__ import annotations

import sqlalchemy as sa

from sep2 import resources as r

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
    # Latest contact from the site's own certificate or its aggregator's, to SITE_CONTACT_EVERY seconds
    # (SitesStore.flush_contacts); indexed so that online/silent counts are index range counts.
    sa.Column("last_contact", sa.BigInteger, index=True),
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
    # Switched off by the operator: no site sees it (its controls and defaults are kept).
    sa.Column("enabled", sa.Boolean, nullable=False, default=True, server_default=sa.true()),
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
    # A piece: what is left of the control ``split_from`` (the operator's original) after a later control
    # replaced part of its span (server.store.timeline). Migration o0104.
    sa.Column("split_from", sa.Integer, sa.ForeignKey("controls.id"), index=True),
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

# Standing data over time (issue 13 item 6, migration q0106multider): one row per PUT that changed a DER
# document; ``changes`` = JSON {field path: [old, new]} (timestamps ignored), the first PUT lists all.
der_history = sa.Table(
    "der_history",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("der_id", sa.Integer, sa.ForeignKey("ders.id", ondelete="CASCADE"), nullable=False),
    sa.Column("kind", sa.String(8), nullable=False),
    sa.Column("at", sa.BigInteger, nullable=False),
    sa.Column("changes", sa.Text, nullable=False),
    sa.Index("ix_der_history_der_kind_id", "der_id", "kind", "id"),
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
    # kind in edev | fsa | derp | derc | actderc | dderc; program_id / fsa_key when relevant. The same
    # lists of one DER's own programs (PER_DER_KINDS + "d": derpd, dercd, actdercd, ddercd) hold the DER's
    # id in fsa_key.
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
# Rates that are part of a subscribable list: a change notifies that list's subscribers.
RATE_NOTIFIES: dict[str, tuple[str, ...]] = {"edev": ("edev",), "fsa": ("fsa",), "derp": ("derp",)}
DER_DOCUMENT_TYPES: dict[str, type] = {
    "dercap": r.DERCapability,
    "derg": r.DERSettings,
    "ders": r.DERStatus,
    "dera": r.DERAvailability,
}
# Response status codes accepted from clients: the one definition the decoder also checks (2030.5 Table 27).
VALID_RESPONSE_STATUSES = r.RESPONSE_TYPES
# The lists of one DER's own programs (DER.AssociatedDERProgramListLink): kind + "d", the DER id in fsa_key.
PER_DER_KINDS = ("derp", "derc", "actderc", "dderc")
SUBSCRIPTION_KINDS = ("edev", "fsa", "derp", "derc", "actderc", "dderc", *(f"{k}d" for k in PER_DER_KINDS))

# ---------------------------------------------------------------------- head-end: bulk DOE (migration h0101)

doe_uploads = sa.Table(
    "doe_uploads",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("at", sa.BigInteger, nullable=False),
    sa.Column("actor", sa.String(64), nullable=False),
    sa.Column("rows", sa.Integer, nullable=False),
    sa.Column("sites", sa.Integer, nullable=False),
    sa.Column("first_start", sa.BigInteger),
    sa.Column("last_end", sa.BigInteger),
    sa.Column("reason", sa.String(256)),
)

doe_intervals = sa.Table(
    "doe_intervals",
    metadata,
    sa.Column("site_id", sa.Integer, sa.ForeignKey("sites.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("start", sa.BigInteger, primary_key=True),
    sa.Column("duration", sa.Integer, primary_key=True),  # key (site, start, duration): migration o0103
    sa.Column("import_w", sa.BigInteger),
    sa.Column("export_w", sa.BigInteger),
    sa.Column("generation_w", sa.BigInteger),
    sa.Column("load_w", sa.BigInteger),
    sa.Column("upload_id", sa.Integer, nullable=False),
    sqlite_with_rowid=False,
)

# ----------------------------------------------------------- incidents between parties (migration i0102)
# One open incident per subject and kind is enforced by a partial unique index, so two assessors racing on
# the same finding cannot both raise.

OPEN_STATES_SQL = "state IN ('open', 'triaged', 'referred', 'responded', 'ready_to_verify')"

incidents = sa.Table(
    "incidents",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("subject", sa.String(96), nullable=False),
    sa.Column("kind", sa.String(24), nullable=False),
    sa.Column("severity", sa.String(12), nullable=False),
    sa.Column("reporter", sa.String(64), nullable=False),
    sa.Column("holder", sa.String(64), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("referred_to", sa.String(64)),
    sa.Column("root_cause", sa.String(512)),
    sa.Column("opened_at", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
    sa.Index(
        "incidents_one_open",
        "subject",
        "kind",
        unique=True,
        sqlite_where=sa.text(OPEN_STATES_SQL),
        postgresql_where=sa.text(OPEN_STATES_SQL),
    ),
)

incident_events = sa.Table(
    "incident_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column(
        "incident_id",
        sa.Integer,
        sa.ForeignKey("incidents.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("at", sa.BigInteger, nullable=False),
    sa.Column("actor", sa.String(64), nullable=False),
    sa.Column("action", sa.String(16)),
    sa.Column("from_state", sa.String(16)),
    sa.Column("to_state", sa.String(16)),
    sa.Column("text", sa.Text, nullable=False),
)
