"""Backup and restore of the SQLite store (``derlink server backup`` / ``restore``).

Backup uses SQLite's online backup API: a consistent snapshot taken page by page under SQLite's own
locking, so it is safe while the server runs and writes (WAL mode). The copy is written next to the
target, checked with ``PRAGMA integrity_check`` and only then renamed into place, so a failed backup never
leaves a half file under the chosen name.

Restore replaces the database with a checked backup, again through the backup API (so the WAL and shared
memory files stay consistent). It refuses while a server is running on that data directory: the server's
caches would no longer match the database.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from pathlib import Path


class BackupError(ValueError):
    """A backup or restore that cannot be done; the message names the file and what to do."""


def _check(connection: sqlite3.Connection, path: Path) -> None:
    result = connection.execute("PRAGMA integrity_check").fetchone()[0]
    if result != "ok":
        raise BackupError(f"{path}: integrity check failed ({result})")
    tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if "alembic_version" not in tables:
        raise BackupError(f"{path}: not a derlink database (no schema version)")


def backup(database: Path, target: Path) -> int:
    """Copy ``database`` to ``target`` (atomically); returns the size in bytes."""
    database, target = Path(database), Path(target)
    if not database.exists():
        raise BackupError(f"{database}: no such database")
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    source = sqlite3.connect(database, timeout=30)
    try:
        copy = sqlite3.connect(partial)
        try:
            source.backup(copy)
            _check(copy, database)
            copy.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
        finally:
            copy.close()
    except sqlite3.Error as exc:
        partial.unlink(missing_ok=True)
        raise BackupError(f"backup of {database} to {target} failed: {exc}") from None
    finally:
        source.close()
    with open(partial, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(partial, target)
    return target.stat().st_size


def _server_running(data_dir: Path) -> int | None:
    """The pid recorded by a running ``derlink server run`` on this data directory, if it is alive."""
    try:
        pid = int(json.loads((data_dir / "headend.json").read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid


def restore(source: Path, database: Path, data_dir: Path) -> None:
    """Replace ``database`` with the checked backup ``source``; refused while a server runs here."""
    source, database = Path(source), Path(database)
    pid = _server_running(Path(data_dir))
    if pid is not None:
        raise BackupError(f"a server (pid {pid}) is running on {data_dir}: stop it before restoring")
    if not source.exists():
        raise BackupError(f"{source}: no such backup")
    backup_db = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    try:
        _check(backup_db, source)
        database.parent.mkdir(parents=True, exist_ok=True)
        live = sqlite3.connect(database, timeout=5)
        try:
            with contextlib.closing(live.cursor()) as cursor:
                cursor.execute("BEGIN EXCLUSIVE")  # nobody else writes meanwhile (or wait, then fail)
                cursor.execute("ROLLBACK")
            backup_db.backup(live)
            _check(live, database)
        finally:
            live.close()
    except sqlite3.Error as exc:
        raise BackupError(f"restore of {source} into {database} failed: {exc}") from None
    finally:
        backup_db.close()
