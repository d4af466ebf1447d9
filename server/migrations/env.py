"""Alembic environment: runs on the connection the server hands over (see server.store.migrate)."""

from __future__ import annotations

from alembic import context

from server.store import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through server.store.migrate() / `derlink server migrate`")
if connection.dialect.name == "sqlite":
    # Python's sqlite3 does not open a transaction before DDL, so each CREATE TABLE would commit on its
    # own and a failure (disk full) would leave a half-built schema that never starts again. SQLite's DDL
    # is transactional: open the transaction explicitly and the whole upgrade commits or rolls back.
    connection.exec_driver_sql("BEGIN")
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
