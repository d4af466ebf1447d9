"""Incident tables on the store's metadata (created by migration ``i0102``).

One open incident per subject and kind is enforced by a partial unique index, so two assessors racing on
the same finding cannot both raise.
"""

from __future__ import annotations

import sqlalchemy as sa

from server.store import metadata

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
    sa.Index("incidents_one_open", "subject", "kind", unique=True,
             sqlite_where=sa.text(OPEN_STATES_SQL), postgresql_where=sa.text(OPEN_STATES_SQL)),
)

incident_events = sa.Table(
    "incident_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("incident_id", sa.Integer, sa.ForeignKey("incidents.id", ondelete="CASCADE"), nullable=False,
              index=True),
    sa.Column("at", sa.BigInteger, nullable=False),
    sa.Column("actor", sa.String(64), nullable=False),
    sa.Column("action", sa.String(16)),
    sa.Column("from_state", sa.String(16)),
    sa.Column("to_state", sa.String(16)),
    sa.Column("text", sa.Text, nullable=False),
)
