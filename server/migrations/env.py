"""Alembic environment: runs on the connection the server hands over (see server.store.migrate)."""

from __future__ import annotations

from alembic import context

from server.store import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through server.store.migrate() / `derlink server migrate`")
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
