"""The running gateway's status page, on its local API under ``/ui/``: the effective limits with the source
that set each one, the comms state, and the next scheduled change (what ``derlink gateway status`` prints).

A browser cannot send the API's bearer token, so ``/ui/login`` exchanges the same token for a session
cookie; the page only reads. The JSON API keeps its bearer authentication unchanged.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway.web.auth import COOKIE, Sessions, csrf_ok, html_response, set_cookie
from gateway.web.installer import ENV, token_ok

if TYPE_CHECKING:
    from gateway.runtime import GatewayRuntime

LIMIT_NAMES = {
    "export_w": "Export at the connection point", "import_w": "Import at the connection point",
    "generation_w": "Generation", "load_w": "Load", "connect": "Connected", "energize": "Energised",
}  # fmt: skip


def _when(t: Any, now: float) -> str:
    if t is None:
        return "none scheduled"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(int(t)))
    delta = int(t - now)
    return f"{stamp} (in {delta} s)" if delta >= 0 else f"{stamp} ({-delta} s ago)"


def limit_rows(limits: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per effective limit or setpoint: what, value, source, why (and what clipped it)."""
    rows = []
    for key, item in limits.items():
        unit = (
            " %"
            if key.endswith("pct")
            else " W"
            if key.endswith("_w")
            else " s"
            if key.endswith("_s")
            else ""
        )
        if not item or item.get("value") is None:
            unset = "unlimited" if key in LIMIT_NAMES or key.endswith("pct") else "not set"
            rows.append({"key": key, "name": LIMIT_NAMES.get(key, key.replace("_", " ")), "value": unset,
                         "source": "—", "detail": ""})  # fmt: skip
            continue
        value = item["value"]
        text = ("yes" if value else "no") if isinstance(value, bool) else f"{value:g}{unit}"
        detail = item.get("detail") or ""
        if item.get("clipped_by"):
            detail += f"; requested {item['requested']:g}{unit}, clipped by {item['clipped_by']}"
        rows.append({"key": key, "name": LIMIT_NAMES.get(key, key.replace("_", " ")), "value": text,
                     "source": item.get("source") or "—", "detail": detail})  # fmt: skip
    return rows


def mount_status_page(app: web.Application, runtime: GatewayRuntime, token: str) -> None:
    sessions = Sessions()

    def render(request: web.Request, template: str, status: int = 200, **ctx: Any) -> web.Response:
        html = ENV.get_template(template).render(
            session=sessions.get(request), static="/ui/static", logout="/ui/logout", **ctx
        )
        return html_response(html, status)

    async def login_form(request: web.Request) -> web.Response:
        return render(request, "login.html", action="/ui/login", what="gateway status",
                      prompt="The gateway's local token (site.toml [local_api])")  # fmt: skip

    async def login(request: web.Request) -> web.StreamResponse:
        form = await request.post()
        if not token or not token_ok(token, str(form.get("pin", ""))):
            return render(request, "login.html", status=401, action="/ui/login", what="gateway status",
                          prompt="The gateway's local token (site.toml [local_api])",
                          error="token: wrong token")  # fmt: skip
        resp = web.HTTPSeeOther("/ui/")
        set_cookie(resp, request, sessions.issue("local token"))
        raise resp

    async def logout(request: web.Request) -> web.StreamResponse:
        session = sessions.get(request)
        form = await request.post()
        if session is None or not csrf_ok(session, form.get("csrf")):
            raise web.HTTPForbidden(text="csrf: missing or wrong CSRF token")
        sessions.end(request)
        resp = web.HTTPSeeOther("/ui/login")
        resp.del_cookie(COOKIE, path="/")
        raise resp

    async def page(request: web.Request) -> web.StreamResponse:
        if sessions.get(request) is None:
            raise web.HTTPSeeOther("/ui/login")
        status = await runtime.status()
        now = float(status["now"])
        comms = status["comms"]
        last = comms.get("last_contact")
        return render(
            request, "status.html", s=status, rows=limit_rows(status["limits"]),
            next_change=_when(status.get("next_change"), now),
            last_contact="never" if last is None else f"{int(now - last)} s ago",
            online=bool(comms.get("comms_ok")) and not status["link_lost"],
        )  # fmt: skip

    app.router.add_get("/ui/login", login_form)
    app.router.add_post("/ui/login", login)
    app.router.add_post("/ui/logout", logout)
    app.router.add_get("/ui/", page)
    from gateway.web.installer import HERE

    app.router.add_static("/ui/static/", HERE / "static")
