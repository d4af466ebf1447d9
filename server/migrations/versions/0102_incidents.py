"""incidents: the seed 002 referral workflow (incidents and their timeline)

Revision ID: i0102
Revises: h0101
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "i0102"
down_revision = "h0101"
branch_labels = None
depends_on = None

OPEN = "state IN ('open', 'triaged', 'referred', 'responded', 'ready_to_verify')"


def upgrade() -> None:
    op.create_table(
        "incidents",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("subject", sa.String(length=96), nullable=False),
        sa.Column("kind", sa.String(length=24), nullable=False),
        sa.Column("severity", sa.String(length=12), nullable=False),
        sa.Column("reporter", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("referred_to", sa.String(length=64), nullable=True),
        sa.Column("root_cause", sa.String(length=512), nullable=True),
        sa.Column("opened_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("incidents_one_open", "incidents", ["subject", "kind"], unique=True,
                    sqlite_where=sa.text(OPEN), postgresql_where=sa.text(OPEN))  # fmt: skip
    op.create_table(
        "incident_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("incident_id", sa.Integer(), nullable=False),
        sa.Column("at", sa.BigInteger(), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=True),
        sa.Column("from_state", sa.String(length=16), nullable=True),
        sa.Column("to_state", sa.String(length=16), nullable=True),
        sa.Column("text", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["incident_id"], ["incidents.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_incident_events_incident_id", "incident_events", ["incident_id"])


def downgrade() -> None:
    op.drop_index("ix_incident_events_incident_id", table_name="incident_events")
    op.drop_table("incident_events")
    op.drop_index("incidents_one_open", table_name="incidents")
    op.drop_table("incidents")
