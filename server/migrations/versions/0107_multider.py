"""der_history: every change of a DER's capability, settings, status and availability (issue 13 item 6)

Revision ID: q0106multider
Revises: console0106
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "q0106multider"
down_revision = "console0106"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "der_history",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("der_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("at", sa.BigInteger(), nullable=False),
        sa.Column("changes", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["der_id"], ["ders.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_der_history_der_kind_id", "der_history", ["der_id", "kind", "id"])


def downgrade() -> None:
    op.drop_index("ix_der_history_der_kind_id", table_name="der_history")
    op.drop_table("der_history")
