"""sites.last_contact: the console counts online and silent sites from an index (issue 14)

Revision ID: console0106
Revises: p0103
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "console0106"
down_revision = "p0103"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("sites", sa.Column("last_contact", sa.BigInteger(), nullable=True))
    op.create_index("ix_sites_last_contact", "sites", ["last_contact"], unique=False)
    # Backfill with what SitesStore.flush_contacts maintains: the latest of the site's own certificate's
    # contact and its aggregator's.
    op.execute(
        "UPDATE sites SET last_contact ="
        " (SELECT clients.last_seen FROM clients WHERE clients.lfdi = sites.lfdi)"
    )
    conn = op.get_bind()
    seen = conn.execute(
        sa.text(
            "SELECT aggregator_id, MAX(last_seen) FROM clients"
            " WHERE aggregator_id IS NOT NULL AND last_seen IS NOT NULL GROUP BY aggregator_id"
        )
    ).all()
    for aggregator_id, last_seen in seen:
        conn.execute(
            sa.text(
                "UPDATE sites SET last_contact = :t WHERE aggregator_id = :a"
                " AND (last_contact IS NULL OR last_contact < :t)"
            ),
            {"t": last_seen, "a": aggregator_id},
        )


def downgrade() -> None:
    with op.batch_alter_table("sites") as batch:
        batch.drop_index("ix_sites_last_contact")
        batch.drop_column("last_contact")
