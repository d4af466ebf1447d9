"""Log lines that a client cannot forge: control characters in logged values are escaped.

Clients choose many logged values (paths, query strings, notification URIs, error details). A CR or LF
in one of them would otherwise start a fake log line. :class:`SafeFormatter` escapes every control
character of the formatted message (not of the traceback that may follow a real server fault).
"""

from __future__ import annotations

import logging
import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape_control(text: str) -> str:
    """``\\r``, ``\\n``, ``\\t`` and ``\\xNN``/``\\uNNNN`` for every other control character."""

    def one(match: re.Match[str]) -> str:
        c = match.group()
        special = {"\r": "\\r", "\n": "\\n", "\t": "\\t"}
        return special.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")

    return _CONTROL.sub(one, text)


class SafeFormatter(logging.Formatter):
    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape_control(super().formatMessage(record))


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def configure_logging(level: str) -> None:
    """Root logging to stderr through :class:`SafeFormatter` (what ``derlink server run`` uses)."""
    handler = logging.StreamHandler()
    handler.setFormatter(SafeFormatter(LOG_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("alembic").setLevel(logging.WARNING)
