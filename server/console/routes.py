"""Console routes: server-rendered pages (Jinja2, autoescape) over the head-end's own read handlers and
the views module; writes go from the page's small script to the JSON API itself (session cookie + CSRF
header), so a form validates exactly as the API does and shows the API's errors next to the field."""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
from aiohttp import web

from server.console import views
from server.console.auth import (
    COOKIE,
    CSRF_FIELD,
    CSRF_HEADER,
    LOGIN_COOKIE,
    SAFE_METHODS,
    Sessions,
    csrf_ok,
    set_session_cookie,
)
from server.console.plot import site_svg
from server.headend.errors import HeadEndError, Operator
from server.incidents import ACTIONS, KINDS, SEVERITIES, TRANSITIONS
from server.incidents.repo import IncidentNotFound, Incidents

HERE = Path(__file__).parent
SESSIONS = web.AppKey("console_sessions", Sessions)


def _fmt_time(value: Any) -> str:
    if value is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(int(value)))


def _ago(value: Any) -> str:
    if value is None:
        return "never"
    s = int(time.time() - int(value))
    return f"{s} s ago" if s < 120 else f"{s // 60} min ago" if s < 7200 else f"{s // 3600} h ago"


ENV = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True)
ENV.filters["t"] = _fmt_time
ENV.filters["ago"] = _ago
ENV.filters["words"] = views.response_words
ENV.filters["limits"] = lambda d: (
    ", ".join(
        f"{k.removesuffix('_w').replace('_', ' ')} {v:g} W"
        if k.endswith("_w")
        else f"{k.replace('_', ' ')} {v}"
        for k, v in (d or {}).items()
    )
    or "—"
)


class Console:
    def __init__(self, head: Any) -> None:
        self.head = head
        self.store = head.store
        self.sessions = Sessions(head.tokens)
        self.threshold = views.silent_after(head.config)

    # -- sessions

    def session_operator(self, request: web.Request) -> Operator | None:
        """The head-end's cookie authentication: a valid session, and for writes a matching CSRF header."""
        session = self.sessions.from_request(request)
        if session is None:
            return None
        if request.method not in SAFE_METHODS and not csrf_ok(session, request.headers.get(CSRF_HEADER)):
            raise HeadEndError(403, f"{CSRF_HEADER}: missing or wrong CSRF token", CSRF_HEADER)
        return Operator(session.name, session.role)

    def render(self, request: web.Request, template: str, status: int = 200, **ctx: Any) -> web.Response:
        session = self.sessions.from_request(request)
        html = ENV.get_template(template).render(
            session=session, path=request.path, now=self.store.clock(), **ctx
        )
        return web.Response(
            text=html,
            status=status,
            content_type="text/html",
            headers={
                "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
                "script-src 'self'; frame-ancestors 'none'; form-action 'self'",
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "same-origin",
                "Cache-Control": "no-store",
            },
        )

    async def api(self, request: web.Request, handler: str) -> dict[str, Any]:
        """Run one of the head-end's read handlers on this request (its query and match_info)."""
        return await self.head.answer(request, handler)

    @web.middleware
    async def guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        path = request.path
        if not path.startswith("/console/") or path.startswith(("/console/static/", "/console/login")):
            return await handler(request)
        if self.sessions.from_request(request) is None:
            raise web.HTTPSeeOther(f"/console/login?next={quote(request.path_qs)}")
        try:
            return await handler(request)
        except HeadEndError as exc:
            return self.render(request, "error.html", status=exc.status, error=exc.detail)

    # -- login

    async def login_form(self, request: web.Request) -> web.Response:
        nonce = secrets.token_urlsafe(24)
        resp = self.render(request, "login.html", nonce=nonce, next=request.query.get("next", "/console/"))
        resp.set_cookie(
            LOGIN_COOKIE,
            nonce,
            httponly=True,
            samesite="Strict",
            secure=request.secure,
            path="/console/login",
            max_age=600,
        )
        return resp

    async def login(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        nonce = request.cookies.get(LOGIN_COOKIE)
        if not nonce or not secrets.compare_digest(nonce, str(form.get(CSRF_FIELD, ""))):
            return self.render(
                request,
                "login.html",
                status=403,
                nonce="",
                error="csrf: the login form expired; reload the page",
                next="/console/",
            )
        operator = self.sessions.operator_for_token(str(form.get("token", "")))
        if operator is None:
            nonce = secrets.token_urlsafe(24)
            resp = self.render(
                request,
                "login.html",
                status=401,
                nonce=nonce,
                error="token: unknown token",
                next=str(form.get("next", "/console/")),
            )
            resp.set_cookie(
                LOGIN_COOKIE,
                nonce,
                httponly=True,
                samesite="Strict",
                secure=request.secure,
                path="/console/login",
                max_age=600,
            )
            return resp
        target = str(form.get("next", "/console/"))
        if not target.startswith("/console/") or target.startswith("//"):
            target = "/console/"
        resp = web.HTTPSeeOther(target)
        set_session_cookie(resp, request, self.sessions.issue(operator))
        resp.del_cookie(LOGIN_COOKIE, path="/console/login")
        raise resp

    async def logout(self, request: web.Request) -> web.StreamResponse:
        session = self.sessions.from_request(request)
        form = await request.post()
        if session is None or not csrf_ok(session, str(form.get(CSRF_FIELD, ""))):
            raise web.HTTPForbidden(text="csrf: missing or wrong CSRF token")
        resp = web.HTTPSeeOther("/console/login")
        resp.del_cookie(COOKIE, path="/")
        raise resp

    # -- pages

    async def overview(self, request: web.Request) -> web.Response:
        now = self.store.clock()
        acks = [await views.ack_summary(self.store, m) for m in await views.recent_controls(self.store, 6)]
        return self.render(
            request,
            "overview.html",
            counts=await views.site_counts(self.store, now, self.threshold),
            programs=await views.live_by_program(self.store, now),
            emergencies=await views.live_emergencies(self.store, now),
            acks=[a for a in acks if a],
            audit=await views.recent_audit(self.store, 10),
            threshold=self.threshold,
        )

    async def sites(self, request: web.Request) -> web.Response:
        offset = (
            max(0, int(request.query.get("offset", "0") or 0))
            if request.query.get("offset", "0").isdigit()
            else 0
        )
        result = await views.search_sites(
            self.store,
            self.store.clock(),
            self.threshold,
            q=request.query.get("q", ""),
            group=request.query.get("group", ""),
            offset=offset,
            limit=25,
        )
        return self.render(
            request,
            "sites.html",
            result=result,
            q=request.query.get("q", ""),
            group=request.query.get("group", ""),
        )

    async def site(self, request: web.Request) -> web.Response:
        site = await self.api(request, "site_detail")
        now = self.store.clock()
        # The last hour, or since registration for a new site (so the plot is not all "no telemetry").
        window = max(120, min(3600, now - int(site["registered"] or 0) + 30))
        series = await views.site_plot_series(self.store, site, now, window)
        state = views.comms_state(site["comms"]["last_contact"], now, self.threshold)
        return self.render(
            request,
            "site.html",
            site=site,
            svg=jinja2.utils.markupsafe.Markup(site_svg(series, gap_s=self.threshold)),
            state=state,
        )

    async def groups(self, request: web.Request) -> web.Response:
        return self.render(request, "groups.html", tree=await views.group_tree(self.store))

    async def group(self, request: web.Request) -> web.Response:
        return self.render(request, "group.html", group=await self.api(request, "group_detail"))

    async def controls(self, request: web.Request) -> web.Response:
        data = await self.api(request, "controls_list")
        progs = await self.api(request, "programs_list")
        return self.render(request, "controls.html", controls=data, programs=progs["items"])

    async def control(self, request: web.Request) -> web.Response:
        ctl = await self.api(request, "control_detail")
        acks = await views.ack_summary(self.store, ctl["mrid"])
        return self.render(request, "control.html", c=ctl, acks=acks)

    async def control_acks(self, request: web.Request) -> web.Response:
        acks = await views.ack_summary(self.store, request.match_info["mrid"])
        if acks is None:
            raise web.HTTPNotFound()
        return web.json_response(acks)

    async def emergency(self, request: web.Request) -> web.Response:
        now = self.store.clock()
        return self.render(
            request,
            "emergency.html",
            emergencies=await views.live_emergencies(self.store, now),
            waves=await views.restore_progress(self.store, now),
            tree=await views.group_tree(self.store),
        )

    async def emergency_scope(self, request: web.Request) -> web.Response:
        return web.json_response(await views.emergency_scope(self.store, request.query.get("target", "all")))

    async def emergency_state(self, request: web.Request) -> web.Response:
        now = self.store.clock()
        return web.json_response(
            {
                "emergencies": await views.live_emergencies(self.store, now),
                "waves": await views.restore_progress(self.store, now),
            }
        )

    async def does(self, request: web.Request) -> web.Response:
        return self.render(request, "does.html", uploads=(await self.api(request, "doe_uploads"))["items"])

    async def compliance(self, request: web.Request) -> web.StreamResponse:
        now = self.store.clock()
        hours = request.query.get("hours", "24")
        hours_n = int(hours) if hours.isdigit() and 0 < int(hours) <= 24 * 31 else 24
        report = await views.compliance(
            self.store,
            now,
            self.threshold,
            group=request.query.get("group", ""),
            since=now - hours_n * 3600,
            until=now + 1,
        )
        if request.query.get("format") == "csv":
            return web.Response(
                text=_compliance_csv(report),
                content_type="text/csv",
                headers={"Content-Disposition": 'attachment; filename="derlink-compliance.csv"'},
            )
        return self.render(
            request,
            "compliance.html",
            r=report,
            hours=hours_n,
            group=request.query.get("group", ""),
            groups=await views.group_tree(self.store),
        )

    async def audit(self, request: web.Request) -> web.Response:
        data = await self.api(request, "audit")
        return self.render(request, "audit.html", audit=data, f=request.query)

    async def incidents(self, request: web.Request) -> web.Response:
        open_only = request.query.get("open", "1") == "1"
        subject = request.query.get("subject", "").strip()
        offset = int(request.query["offset"]) if request.query.get("offset", "").isdigit() else 0
        repo = Incidents(self.store)
        items = await repo.list(open_only=open_only, subject=subject or None, offset=offset, limit=50)
        return self.render(
            request, "incidents.html", items=items, open_only=open_only, subject=subject, offset=offset,
            total=await repo.count(open_only=open_only, subject=subject or None), kinds=KINDS,
            severities=SEVERITIES,
        )  # fmt: skip

    async def incident(self, request: web.Request) -> web.Response:
        try:
            inc = await Incidents(self.store).get(request.match_info["id"])
        except IncidentNotFound as exc:
            raise HeadEndError(404, str(exc), "id") from None
        allowed = [a for a in ACTIONS if inc.state in TRANSITIONS[a][0]]  # what the state machine allows
        actions = (["note"] if inc.is_open else []) + allowed
        return self.render(request, "incident.html", inc=inc, actions=actions)

    async def root(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/console/")


def _compliance_csv(report: dict[str, Any]) -> str:
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(
        [
            "kind",
            "control",
            "target",
            "recipients",
            "responded",
            "rejected",
            "non_responders",
            "site_lfdi",
            "nmi",
            "last_contact",
        ]
    )
    for c in report.get("controls", []):
        w.writerow(
            [
                "control",
                c["mrid"],
                c["target"],
                c["recipients"],
                c["responded"],
                c["rejected"],
                c["non_responder_count"],
                "",
                "",
                "",
            ]
        )
    for s in report.get("silent", []):
        w.writerow(["silent_site", "", "", "", "", "", "", s["lfdi"], s["nmi"] or "", s["seen"] or ""])
    return buf.getvalue()


def mount_console(app: web.Application, head: Any) -> Console:
    """Add the console to the head-end app: its pages, its assets, and cookie sessions for the API."""
    console = Console(head)
    head.session_auth = console.session_operator
    app.middlewares.append(console.guard)
    r = app.router
    r.add_get("/", console.root)
    r.add_get("/console/login", console.login_form)
    r.add_post("/console/login", console.login)
    r.add_post("/console/logout", console.logout)
    r.add_get("/console/", console.overview)
    r.add_get("/console/sites", console.sites)
    r.add_get("/console/sites/{site}", console.site)
    r.add_get("/console/groups", console.groups)
    r.add_get("/console/groups/{group}", console.group)
    r.add_get("/console/controls", console.controls)
    r.add_get("/console/controls/{mrid}", console.control)
    r.add_get("/console/controls/{mrid}/acks.json", console.control_acks)
    r.add_get("/console/emergency", console.emergency)
    r.add_get("/console/emergency/scope.json", console.emergency_scope)
    r.add_get("/console/emergency/state.json", console.emergency_state)
    r.add_get("/console/does", console.does)
    r.add_get("/console/compliance", console.compliance)
    r.add_get("/console/audit", console.audit)
    r.add_get("/console/incidents", console.incidents)
    r.add_get("/console/incidents/{id}", console.incident)
    r.add_static("/console/static/", HERE / "static")
    return console
