"""Head-end bearer tokens, held only as SHA-256 digests and revocable while the server runs.

Sources, merged:

- ``headend_tokens`` in the configuration (or the bootstrap operator token generated into
  ``data_dir/headend-token`` on first start, for the operator to pick up); hashed when loaded, the
  plaintext is not kept in memory;
- ``data_dir/headend-tokens.json`` (mode 0600): ``{"tokens": [{name, role, sha256}], "revoked": [names]}``,
  written by ``derlink server token add|revoke``. The server re-reads it when it changes (checked on each
  authentication: one ``stat``), so a new or revoked token takes effect on the next request, no restart.

A revoked name is refused whichever source it came from.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger("derlink.headend.tokens")
TOKENS_FILE = "headend-tokens.json"
ROLES = ("operator", "viewer")


def digest(token: str | bytes) -> bytes:
    raw = token.encode("utf-8", "surrogateescape") if isinstance(token, str) else token
    return hashlib.sha256(raw).digest()


def tokens_path(data_dir: Path | str) -> Path:
    return Path(data_dir) / TOKENS_FILE


def _read(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        return {"tokens": [], "revoked": []}
    if not isinstance(document, dict):
        raise ValueError(f"{path}: expected a JSON object")
    document.setdefault("tokens", [])
    document.setdefault("revoked", [])
    return document


def _write(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(document, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def add_token(data_dir: Path | str, name: str, role: str = "operator") -> str:
    """A new random token for ``name``: returned once, only its digest is stored."""
    if role not in ROLES:
        raise ValueError(f"role: must be operator or viewer, got {role!r}")
    if not name or len(name) > 64 or not name.isprintable():
        raise ValueError("name: 1 to 64 printable characters")
    path = tokens_path(data_dir)
    document = _read(path)
    if any(entry.get("name") == name for entry in document["tokens"]):
        raise ValueError(f"name: a token named {name!r} exists already (revoke it first)")
    token = secrets.token_urlsafe(32)
    document["tokens"].append({"name": name, "role": role, "sha256": digest(token).hex()})
    document["revoked"] = [n for n in document["revoked"] if n != name]
    _write(path, document)
    return token


def revoke_token(data_dir: Path | str, name: str) -> None:
    path = tokens_path(data_dir)
    document = _read(path)
    document["tokens"] = [entry for entry in document["tokens"] if entry.get("name") != name]
    if name not in document["revoked"]:
        document["revoked"].append(name)
    _write(path, document)


def list_tokens(data_dir: Path | str) -> dict[str, Any]:
    return _read(tokens_path(data_dir))


class TokenStore:
    """What the head-end authenticates against; iterating yields (digest, operator) pairs in force."""

    def __init__(
        self, configured: list[dict[str, str]], data_dir: Path | str, make_operator: Callable[[str, str], Any]
    ) -> None:
        self.make_operator = make_operator
        self.static = [(digest(t["token"]), t["name"], t["role"]) for t in configured]
        self.path = tokens_path(data_dir)
        self._stamp: tuple[int, int, int] | None = None
        self._file: list[tuple[bytes, str, str]] = []
        self._revoked: set[str] = set()
        self._operators: dict[tuple[str, str], Any] = {}
        self.refresh()

    def refresh(self) -> None:
        """Re-read the token file if it changed; a broken file keeps the previous state (and says so)."""
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            stamp = (0, 0, 0)
        if stamp == self._stamp:
            return
        try:
            document = _read(self.path)
            entries = [(bytes.fromhex(e["sha256"]), e["name"], e["role"]) for e in document["tokens"]]
            revoked = {str(n) for n in document["revoked"]}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring the unreadable token file %s: %s", self.path, exc)
            return
        self._stamp, self._file, self._revoked = stamp, entries, revoked

    def _operator(self, name: str, role: str) -> Any:
        key = (name, role)
        if key not in self._operators:
            self._operators[key] = self.make_operator(name, role)
        return self._operators[key]

    def __iter__(self) -> Iterator[tuple[bytes, Any]]:
        self.refresh()
        for known, name, role in (*self.static, *self._file):
            if name not in self._revoked:
                yield known, self._operator(name, role)

    def lookup(self, given: str | bytes) -> Any:
        """The operator whose token this is, or None. Compares digests in constant time."""
        wanted = digest(given)
        found = None
        for known, operator in self:
            if hmac.compare_digest(known, wanted):
                found = operator
        return found
