"""head-end: DOE intervals of different lengths may start at the same time

Revision ID: o0103
Revises: i0102

The key of ``doe_intervals`` becomes (site, start, duration): a re-upload of the same interval still
replaces it, while a 5-minute row that starts with a 30-minute row no longer erases the other 25 minutes.
The 2030.5 side publishes the non-overlapping result (``server.headend.doe.published_pieces``).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "o0103"
down_revision = "i0102"
branch_labels = None
depends_on = None

COLUMNS = "site_id, start, duration, import_w, export_w, generation_w, load_w, upload_id"


def _create(name: str, key: tuple[str, ...], pk: str) -> None:
    op.create_table(
        name,
        sa.Column("site_id", sa.Integer(), nullable=False),
        sa.Column("start", sa.BigInteger(), nullable=False),
        sa.Column("duration", sa.Integer(), nullable=False),
        sa.Column("import_w", sa.BigInteger(), nullable=True),
        sa.Column("export_w", sa.BigInteger(), nullable=True),
        sa.Column("generation_w", sa.BigInteger(), nullable=True),
        sa.Column("load_w", sa.BigInteger(), nullable=True),
        sa.Column("upload_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["site_id"], ["sites.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint(*key, name=pk),
        sqlite_with_rowid=False,
    )


def _rebuild(key: tuple[str, ...], pk: str) -> None:
    _create("doe_intervals_new", key, pk)
    op.execute(f"INSERT INTO doe_intervals_new ({COLUMNS}) SELECT {COLUMNS} FROM doe_intervals")
    op.drop_table("doe_intervals")
    op.rename_table("doe_intervals_new", "doe_intervals")


def upgrade() -> None:
    _rebuild(("site_id", "start", "duration"), "pk_doe_intervals")


def downgrade() -> None:
    # Keep the newest row per (site, start), as the old key allowed only one.
    op.execute(
        "DELETE FROM doe_intervals WHERE EXISTS (SELECT 1 FROM doe_intervals d WHERE "
        "d.site_id = doe_intervals.site_id AND d.start = doe_intervals.start "
        "AND d.upload_id > doe_intervals.upload_id)"
    )
    _rebuild(("site_id", "start"), "doe_intervals_pkey")
