"""The head-end's own tables, on the store's metadata (``server.store`` imports this module at its end, so
alembic and ``Admin.table_dump`` always see them). Created by migration ``h0101``."""

from __future__ import annotations

import sqlalchemy as sa

from server.store import metadata

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
