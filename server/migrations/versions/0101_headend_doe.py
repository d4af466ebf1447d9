"""head-end: bulk DOE intervals and their uploads

Revision ID: h0101
Revises: 0001

``doe_intervals`` is deliberately lean (integer columns, one clustered key, no rowid) so that a day-ahead
upload of 100k sites x 48 intervals is a sequence of B-tree appends. The 2030.5 DERControls are rendered
from it on read; their mRIDs are derived from (site, start, upload), never stored.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "h0101"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "doe_uploads",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.BigInteger(), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("sites", sa.Integer(), nullable=False),
        sa.Column("first_start", sa.BigInteger(), nullable=True),
        sa.Column("last_end", sa.BigInteger(), nullable=True),
        sa.Column("reason", sa.String(length=256), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "doe_intervals",
        sa.Column("site_id", sa.Integer(), nullable=False),
        sa.Column("start", sa.BigInteger(), nullable=False),
        sa.Column("duration", sa.Integer(), nullable=False),
        sa.Column("import_w", sa.BigInteger(), nullable=True),
        sa.Column("export_w", sa.BigInteger(), nullable=True),
        sa.Column("generation_w", sa.BigInteger(), nullable=True),
        sa.Column("load_w", sa.BigInteger(), nullable=True),
        sa.Column("upload_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["site_id"], ["sites.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("site_id", "start"),
        sqlite_with_rowid=False,
    )


def downgrade() -> None:
    op.drop_table("doe_intervals")
    op.drop_table("doe_uploads")
