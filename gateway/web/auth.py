"""Browser sessions for the gateway's pages: a one-time PIN (or the gateway's local token) is exchanged for
a random session cookie (HttpOnly, SameSite=Strict, Secure over TLS); every write carries the session's
CSRF token. Sessions live in memory: restarting the process logs everyone out, which is what a page on
a roof wants."""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

COOKIE = "derlink_gw_session"
CSRF_FIELD = "csrf"
CSRF_HEADER = "X-CSRF-Token"
LIFETIME_S = 8 * 3600
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "frame-ancestors 'none'; form-action 'self'"
)


@dataclass(frozen=True, slots=True)
class Session:
    who: str
    csrf: str
    expires: float


class OneTimePin:
    """A 6-digit PIN shown on the gateway's console; it works once, and a fresh one replaces it after a
    successful login or after ``attempts`` wrong ones (so guessing 10^6 PINs five at a time goes nowhere)."""

    def __init__(self, announce: Callable[[str], None], attempts: int = 5) -> None:
        self.announce = announce
        self.attempts = attempts
        self.rotate()

    def rotate(self) -> None:
        self.pin = f"{secrets.randbelow(10**6):06d}"
        self.failures = 0
        self.announce(self.pin)

    def check(self, given: str) -> bool:
        if hmac.compare_digest(self.pin.encode(), given.strip().encode()):
            self.rotate()
            return True
        self.failures += 1
        if self.failures >= self.attempts:
            self.rotate()
        return False


class Sessions:
    def __init__(self) -> None:
        self._live: dict[str, Session] = {}

    def issue(self, who: str) -> str:
        now = time.time()
        self._live = {k: s for k, s in self._live.items() if s.expires > now}
        cookie = secrets.token_urlsafe(32)
        self._live[cookie] = Session(who, secrets.token_urlsafe(24), now + LIFETIME_S)
        return cookie

    def get(self, request: web.Request) -> Session | None:
        session = self._live.get(request.cookies.get(COOKIE, ""))
        return session if session is not None and session.expires > time.time() else None

    def end(self, request: web.Request) -> None:
        self._live.pop(request.cookies.get(COOKIE, ""), None)


def csrf_ok(session: Session, given: object) -> bool:
    return isinstance(given, str) and bool(given) and hmac.compare_digest(session.csrf, given)


def set_cookie(response: web.StreamResponse, request: web.Request, value: str) -> None:
    response.set_cookie(COOKIE, value, max_age=LIFETIME_S, path="/", httponly=True, secure=request.secure,
                        samesite="Strict")  # fmt: skip


def html_response(text: str, status: int = 200) -> web.Response:
    return web.Response(
        text=text, status=status, content_type="text/html",
        headers={"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                 "Referrer-Policy": "same-origin", "Cache-Control": "no-store"},
    )  # fmt: skip
