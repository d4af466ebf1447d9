"""programs.enabled: the operator can switch a DERProgram off (issue 11 item 9)

Revision ID: p0103
Revises: o0104
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "p0103"
down_revision = "o0104"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("programs", sa.Column("enabled", sa.Boolean(), nullable=False, server_default=sa.true()))


def downgrade() -> None:
    with op.batch_alter_table("programs") as batch:
        batch.drop_column("enabled")
