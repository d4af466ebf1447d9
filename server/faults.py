"""Start-up faults as one clear line: which path or address, what is wrong, what to do next.

``derlink server run`` and ``migrate`` print :func:`describe_startup_error` instead of a traceback for the
faults an operator can fix (read-only or missing directory, full disk, corrupt database, port in use);
anything else is a real bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import tempfile
from pathlib import Path
from typing import Any


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        orig = getattr(current, "orig", None)  # SQLAlchemy's DBAPI error
        current = orig if isinstance(orig, BaseException) else (current.__cause__ or current.__context__)
    return seen


def _probe_write(folder: Path) -> str | None:
    """Why ``folder`` cannot take a new file (e.g. "Read-only file system"), or None if it can."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return None
    except OSError as exc:
        return f"{folder}: {exc.strerror}"


def describe_startup_error(exc: BaseException, config: Any) -> str | None:
    """One line for an operator-fixable start-up fault, or None for a real bug."""
    data_dir = Path(config.data_dir).resolve()
    database = (
        config.resolved_database_url.split("///", 1)[-1] if config.is_sqlite else "the configured database"
    )
    for item in _chain(exc):
        text = str(getattr(item, "orig", None) or item)
        lowered = text.lower()
        if "database or disk is full" in lowered or getattr(item, "errno", None) == errno.ENOSPC:
            return (
                f"the disk holding {database} is full ({text.splitlines()[0]}); the schema change was "
                "rolled back: free some space and start again"
            )
        if (
            "readonly database" in lowered
            or "read-only" in lowered
            or getattr(item, "errno", None)
            in (
                errno.EROFS,
                errno.EACCES,
                errno.EPERM,
            )
        ):
            where = getattr(item, "filename", None) or data_dir
            return (
                f"cannot write to {where} (read-only or permission denied: {text.splitlines()[0]}); "
                "make the data directory writable or choose another with --data-dir"
            )
        if "unable to open database file" in lowered:
            folder = Path(database).parent if config.is_sqlite else data_dir
            why = _probe_write(folder)
            return (
                f"cannot open or create {database} ({why or 'unable to open database file'}); make "
                f"{folder} writable or choose another data directory with --data-dir"
            )
        if "file is not a database" in lowered or "malformed" in lowered:
            return (
                f"the database {database} is corrupt ({text.splitlines()[0]}); restore a backup "
                "(derlink server restore --from BACKUP) or move the file aside to start with an empty "
                "database"
            )
        if getattr(item, "errno", None) == errno.EADDRINUSE:
            where = text.split("] ", 1)[-1]
            return f"cannot listen: {where} (another process holds the port: stop it or choose another)"
        if getattr(item, "errno", None) == errno.EADDRNOTAVAIL:
            return f"cannot listen: {text.split('] ', 1)[-1]} (that address is not on this machine)"
    return None
