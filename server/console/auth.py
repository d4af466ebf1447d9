"""Console sessions: a bearer token is exchanged once for a signed session cookie, and every write carries a
CSRF token bound to that session.

Sessions are stateless: the cookie is ``name.expiry.signature``, signed with a key derived from the operator's
own bearer token, so rotating or removing a token in the server config ends its sessions everywhere (also
across several server processes) without a session table. The CSRF token is an HMAC of the cookie value
under the same key (a synchroniser token that needs no storage); it is checked on every unsafe method, for
console forms and for the JSON API alike when the request is authenticated by the cookie.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

COOKIE = "derlink_session"
LOGIN_COOKIE = "derlink_login"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf"
LIFETIME_S = 8 * 3600
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


@dataclass(frozen=True, slots=True)
class Session:
    name: str
    role: str
    cookie: str
    csrf: str

    @property
    def can_write(self) -> bool:
        return self.role == "operator"


def _key(token: bytes) -> bytes:
    return hashlib.sha256(b"derlink-console-session\0" + token).digest()


def _sign(key: bytes, text: str) -> str:
    return (
        base64.urlsafe_b64encode(hmac.new(key, text.encode(), hashlib.sha256).digest()).decode().rstrip("=")
    )


class Sessions:
    """Issues and checks session cookies for the head-end's configured tokens."""

    def __init__(self, tokens: Any) -> None:
        # The head-end's TokenStore: (token digest, Operator) pairs in force, re-read on change, so a
        # revoked token also ends its console sessions.
        self.tokens = tokens

    @property
    def by_name(self) -> dict[str, tuple[bytes, Any]]:
        return {op.name: (_key(known), op) for known, op in self.tokens}

    def operator_for_token(self, given: str) -> object | None:
        return self.tokens.lookup(given.strip())

    def issue(self, operator: object, now: float | None = None) -> str:
        name = operator.name  # type: ignore[attr-defined]
        key, _ = self.by_name[name]
        expiry = int((now or time.time()) + LIFETIME_S)
        encoded = base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")
        payload = f"{encoded}.{expiry}"
        return f"{payload}.{_sign(key, payload)}"

    def check(self, cookie: str | None, now: float | None = None) -> Session | None:
        if not cookie or cookie.count(".") != 2:
            return None
        encoded, expiry, sig = cookie.split(".")
        try:
            name = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
            expires = int(expiry)
        except ValueError:
            return None
        entry = self.by_name.get(name)
        if entry is None or expires < (now or time.time()):
            return None
        key, op = entry
        if not hmac.compare_digest(sig, _sign(key, f"{encoded}.{expiry}")):
            return None
        return Session(name, op.role, cookie, _sign(key, "csrf." + cookie)[:32])  # type: ignore[attr-defined]

    def from_request(self, request: web.Request) -> Session | None:
        return self.check(request.cookies.get(COOKIE))


def csrf_ok(session: Session, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(session.csrf, given or "")


def set_session_cookie(response: web.StreamResponse, request: web.Request, value: str) -> None:
    response.set_cookie(
        COOKIE,
        value,
        max_age=LIFETIME_S,
        path="/",
        httponly=True,
        secure=request.secure,
        samesite="Strict",
    )
