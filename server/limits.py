"""Input limits in one place: what an untrusted number, identifier, query or JSON body may be.

Everything here raises :class:`InputError` (a ``BadRequest`` naming the field) or ``NotFound`` for a path
id that cannot exist, so a bad value becomes a 4xx and never reaches the database or a 500:

- path ids: ASCII digits only, at most :data:`MAX_ID` (PostgreSQL ``integer``), or a DOE interval's
  DERControl id; others are 404;
- 2030.5 list paging (``s``, ``l``, ``a``): ASCII digits, bounded; other query parameters are ignored
  (2030.5 defines none) and never reach the response cache key;
- JSON (head-end): at most ``max_bytes``, nesting at most :data:`MAX_JSON_DEPTH`, integers at most
  :data:`MAX_NUMBER_DIGITS` digits, finite floats, no NaN/Infinity, and no string holding a character
  that XML 1.0 cannot carry (those would break every 2030.5 document the value later appears in).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from server.errors import BadRequest, NotFound

MAX_ID = 2**31 - 1
MAX_ID_DIGITS = 10
MAX_PAGE_START = 10**9
MAX_TIME = 2**63 - 1
MAX_JSON_DEPTH = 32
MAX_NUMBER_DIGITS = 20
PAGING_PARAMETERS = ("s", "a", "l")
# DERControl ids from DOE_ID_BASE on are DOE intervals (id = base + start; server.headend.doe), not rows.
DOE_ID_BASE = 10**12
DOE_ID_MAX = DOE_ID_BASE + 2**36 - 1

_ASCII_DIGITS = re.compile(rf"[0-9]{{1,{MAX_ID_DIGITS}}}")
_PATH_DIGITS = re.compile(r"[0-9]{1,13}")
_TIME = re.compile(r"-?[0-9]{1,19}")
# Characters XML 1.0 cannot carry (the Char production): C0 controls but TAB/LF/CR, surrogates, FFFE/FFFF.
NOT_XML_CHAR = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


class InputError(BadRequest):
    """A bad input value; ``field`` names it (a query parameter, a JSON path such as ``sites[3].nmi``)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


def path_id(raw: str, name: str = "id") -> int:
    """A numeric path segment; anything that is not a possible row id is simply not found."""
    if _PATH_DIGITS.fullmatch(raw):
        value = int(raw)
        if value <= MAX_ID or (name == "c" and DOE_ID_BASE <= value <= DOE_ID_MAX):
            return value
    raise NotFound(f"{name}: no resource with id {raw[:30]!r}")


def query_int(query: Mapping[str, str], name: str, default: int, high: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    if not _ASCII_DIGITS.fullmatch(raw) or int(raw) > high:
        raise InputError(f"query parameter {name}", f"expected an integer 0..{high}, got {raw[:30]!r}")
    return int(raw)


def query_time(query: Mapping[str, str], name: str) -> int | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    if not _TIME.fullmatch(raw) or abs(int(raw)) > MAX_TIME:
        raise InputError(f"query parameter {name}", f"expected a time in seconds, got {raw[:30]!r}")
    return int(raw)


def paging_cache_key(path: str, query: Mapping[str, str]) -> str:
    """The response-cache key: the path and only the paging parameters, in a fixed order."""
    parts = [f"{k}={query[k]}" for k in PAGING_PARAMETERS if k in query]
    return f"{path}?{'&'.join(parts)}" if parts else path


def check_text(value: str, field: str) -> str:
    match = NOT_XML_CHAR.search(value)
    if match:
        raise InputError(field, f"character U+{ord(match.group()):04X} is not allowed")
    return value


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_NUMBER_DIGITS:
        raise ValueError(f"an integer of {len(text)} digits (at most {MAX_NUMBER_DIGITS})")
    return int(text)


def _parse_float(text: str) -> float:
    if len(text) > 64:
        raise ValueError(f"a number of {len(text)} characters")
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{text[:20]} is out of range")
    return value


def _parse_constant(text: str) -> Any:
    raise ValueError(f"{text} is not a number")


def json_decoder() -> json.JSONDecoder:
    """A decoder with the number limits above (for streamed records: ``raw_decode``)."""
    return json.JSONDecoder(parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant)


def load_json(body: bytes, *, max_bytes: int, max_depth: int = MAX_JSON_DEPTH, field: str = "body") -> Any:
    """Decode a JSON body under the limits above; InputError names the offending path."""
    if len(body) > max_bytes:
        raise InputError(field, f"{len(body)} bytes exceeds the limit of {max_bytes}")
    try:
        text = body.decode("utf-8")
        data = json_decoder().decode(text)
    except RecursionError:
        raise InputError(field, f"nested deeper than {max_depth} levels") from None
    except UnicodeDecodeError:
        raise InputError(field, "not UTF-8") from None
    except ValueError as exc:  # JSONDecodeError, or a number refused by the hooks above
        raise InputError(field, f"not valid JSON ({str(exc)[:200]})") from None
    check_json_tree(data, max_depth, field)
    return data


def check_json_tree(data: Any, max_depth: int = MAX_JSON_DEPTH, field: str = "body") -> None:
    """Depth and text checks over a decoded document, without recursion."""
    stack: list[tuple[Any, str, int]] = [(data, "", 0)]
    while stack:
        value, where, depth = stack.pop()
        if depth > max_depth:
            raise InputError(where or field, f"nested deeper than {max_depth} levels")
        if isinstance(value, str):
            check_text(value, where or field)
        elif isinstance(value, dict):
            for key, item in value.items():
                check_text(key, f"{where or field} key")
                stack.append((item, f"{where}.{key}" if where else key, depth + 1))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                stack.append((item, f"{where or field}[{i}]", depth + 1))
