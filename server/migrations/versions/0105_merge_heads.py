"""Merge the two heads main carried (control pieces o0104 and programs.enabled p0103), so that
``alembic upgrade head`` has one target again. No schema change.

Revision ID: m0105
Revises: o0104, p0103
"""

from __future__ import annotations

revision = "m0105"
down_revision = ("o0104", "p0103")
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
