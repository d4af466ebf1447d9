"""Durable file writes and one-line OS error messages, shared by the PKI, the gateway and the server."""

from __future__ import annotations

import errno
import os
import re
import tempfile
from pathlib import Path


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves either the old or the new file, never a mix.

    Temp file in the same directory with ``mode`` set before any byte is written (keys are never
    world-readable), fsync, rename over ``path``, fsync the directory. On failure the temp file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def os_error_text(exc: OSError, port_options: str = "") -> str:
    """One line for an OSError met at start: a port in use names the address, a file names the file."""
    if exc.errno == errno.EADDRINUSE:
        # asyncio: "[Errno 98] error while attempting to bind on address ('127.0.0.1', 8443): address ..."
        where = re.search(r"\('?([^',]*)'?, (\d+)", str(exc))
        address = f"{where.group(1)}:{where.group(2)}" if where else "the address"
        hint = f" (choose another with {port_options})" if port_options else ""
        return f"cannot listen on {address}: the port is already in use{hint}"
    if exc.filename:
        return f"{exc.filename}: {exc.strerror}"
    return re.sub(r"^\[Errno \d+\] ", "", str(exc))
