"""controls: pieces of a control split by a later one

Revision ID: o0104
Revises: o0103

A new control replaces earlier controls of its program and target only over its own span: the earlier one
is superseded and what is left of it is published again as pieces, each pointing at the original.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "o0104"
down_revision = "o0103"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain ADD COLUMN, never a table rebuild: on SQLite a rebuild drops the table that responses cascade
    # from. SQLite accepts an inline REFERENCES clause on a column added with a NULL default.
    if op.get_bind().dialect.name == "sqlite":
        op.execute(
            "ALTER TABLE controls ADD COLUMN split_from INTEGER REFERENCES controls (id)"
        )
    else:
        op.add_column(
            "controls",
            sa.Column(
                "split_from",
                sa.Integer(),
                sa.ForeignKey("controls.id", name="fk_controls_split_from"),
                nullable=True,
            ),
        )
    op.create_index("ix_controls_split_from", "controls", ["split_from"])


def downgrade() -> None:
    op.drop_index("ix_controls_split_from", table_name="controls")
    op.drop_column("controls", "split_from")  # SQLite >= 3.35 drops a column without a rebuild
