"""The installer's commissioning page: ``derlink gateway commission`` in a browser on the local network.

    derlink gateway installer --dir /var/lib/derlink/commissioning --listen 0.0.0.0:8711

The page is the non-interactive flow of :mod:`gateway.commissioning` with its flags filled in by forms:
each form stores its inputs (``installer-inputs.json`` beside the commissioning state) and runs the very
same ``run_commissioning`` as far as it can go. A step that still needs an input stops the flow with the
message the CLI gives ("--export-limit-w: required"), and the page shows it next to that field. Progress
and results come from the commissioning state file, so the CLI and the page can take turns on one site.

Access: a one-time PIN shown on the gateway's console (a new one after each login and after 5 wrong
tries), or the gateway's local API token once commissioning wrote it. Forms carry the session's CSRF token.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

from gateway.commissioning.common import Options
from gateway.commissioning.discover import parse_scan_targets, parse_units
from gateway.commissioning.flow import Outcome, run_commissioning
from gateway.commissioning.state import STEP_TITLES, STEPS, CommissioningState, StateError
from gateway.web.auth import (
    COOKIE,
    CSRF_FIELD,
    ENV,
    HERE,
    SAFE_METHODS,
    OneTimePin,
    Sessions,
    csrf_ok,
    html_response,
    set_cookie,
    token_ok,
)
from sep2.files import write_atomic

MAX_UPLOAD = 64 * 1024
ROLES = ("pv", "battery", "meter", "ignore")


@dataclass(frozen=True)
class Field:
    name: str  # the Options field
    label: str
    kind: str  # text | list | units | number | int | pin | file | path | check | mode
    hint: str = ""

    @property
    def flag(self) -> str:
        return "--" + self.name.removesuffix("_s").replace("_", "-")  # comms_timeout_s -> --comms-timeout


FORM: dict[str, list[Field]] = {
    "discover": [
        Field("scan", "Modbus addresses to scan", "list", "HOST[:PORT[-PORT]] or CIDR, comma separated"),
        Field("units", "Modbus unit IDs", "units", "e.g. 1-3,126 (default 1-3)"),
    ],
    "identity": [
        Field("cert", "Certificate issued for this gateway (PEM)", "file", "from the DNSP's CA, for the CSR"),
        Field("key", "Its private key (only if made elsewhere)", "file"),
        Field("sign_with_ca", "Or sign with a local CA (test lab): PKI directory", "path"),
        Field("name", "Certificate common name", "text", "default derlink-gateway-<random>"),
        Field("pin", "Registration PIN", "pin", "default: generated, with a check digit"),
    ],
    "site": [
        Field("nmi", "NMI", "text", "10 characters from the customer's bill (11 with checksum)"),
        Field("export_limit_w", "Static export limit (W)", "number", "connection agreement"),
        Field("import_limit_w", "Static import limit (W)", "number", "optional"),
        Field("generation_limit_w", "Static generation limit (W)", "number", "optional"),
        Field("fallback_export_w", "Comms-loss fallback export limit (W)", "number"),
        Field("fallback_import_w", "Comms-loss fallback import limit (W)", "number", "optional"),
        Field("fallback_generation_w", "Comms-loss fallback generation limit (W)", "number", "optional"),
        Field("comms_timeout_s", "Seconds without the server before the fallback", "int", "default 300"),
    ],
    "register": [
        Field("dcap_url", "Utility server DeviceCapability URL", "text", "https://host:port/dcap"),
        Field("server_ca", "The DNSP's CA chain (PEM)", "file"),
        Field("register_inband", "Register in-band if the server does not know this gateway", "check"),
        Field("server_mode", "Follow the server by", "mode"),
    ],
}
FLAGS = {f.flag: f for fs in FORM.values() for f in fs}
PATH_FIELDS = {"cert", "key", "sign_with_ca", "server_ca", "site_toml"}
OPTION_NAMES = {f.name for f in fields(Options)}


class BadField(ValueError):
    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


def _parse(f: Field, text: str) -> Any:
    """The Options value of one form field (None = not given); BadField names the field."""
    text = text.strip()
    if not text:
        return None
    try:
        if f.kind == "list":
            entries = [e.strip() for e in text.split(",") if e.strip()]
            parse_scan_targets(entries)
            return entries
        if f.kind == "units":
            parse_units(text)
            return text
        if f.kind == "number":
            value = float(text)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"must be a number of watts >= 0, got {text!r}")
            return value
        if f.kind == "int":
            if not text.isdigit() or int(text) <= 0:
                raise ValueError(f"must be a whole number of seconds > 0, got {text!r}")
            return int(text)
        if f.kind == "pin":
            if not text.isdigit() or len(text) > 6:
                raise ValueError(f"must be up to 6 digits, got {text!r}")
            return int(text)
        if f.kind == "mode":
            if text not in ("poll", "subscribe"):
                raise ValueError(f"must be poll or subscribe, got {text!r}")
            return text
        if f.kind == "text" and len(text) > 256:
            raise ValueError("at most 256 characters")
    except ValueError as exc:
        message = str(exc)
        if message.startswith("could not convert"):
            message = f"expected a number, got {text!r}"
        raise BadField(f.name, f"{f.label}: {message}") from None
    return text


class WebUI:
    """The flow's UI protocol, non-interactive: what the flow shows goes to the job's log."""

    interactive = False

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines

    def heading(self, text: str) -> None:
        self.lines.append(f"== {text}")

    def info(self, text: str) -> None:
        self.lines.append(text)

    def warn(self, text: str) -> None:
        self.lines.append(f"! {text}")

    def table(self, title: str, columns: list[str], rows: list[list[str]]) -> None:
        self.lines += [title, " | ".join(columns), *(" | ".join(str(c) for c in row) for row in rows)]

    def panel(self, title: str, lines: list[str]) -> None:
        self.lines += [f"[{title}]", *lines]

    def ask(self, prompt: str, default: str | None = None) -> str:  # pragma: no cover - never interactive
        raise EOFError(prompt)

    def confirm(self, prompt: str, default: bool = True) -> bool:  # pragma: no cover
        raise EOFError(prompt)


@dataclass
class Job:
    lines: list[str] = field(default_factory=list)
    started_at: float = field(default_factory=time.time)
    outcome: Outcome | None = None
    task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()


def field_of(message: str | None, next_action: str | None) -> str | None:
    """The form field a failure is about: the first flag named in the message, else in what to do next."""
    for text in (message or "", next_action or ""):
        for flag in re.findall(r"--[a-z][a-z-]*", text):
            if flag in FLAGS:
                return FLAGS[flag].name
    return None


def qr_svg(text: str) -> str:
    import segno

    return segno.make(text, error="m").svg_inline(scale=5, title="gateway identity for the DNSP")


class Installer:
    def __init__(self, work_dir: Path, *, announce: Callable[[str], None] = print,
                 defaults: dict[str, Any] | None = None, token: str | None = None) -> None:  # fmt: skip
        self.work_dir = work_dir
        self.defaults = dict(defaults or {})  # Options tuning (timeouts) that has no form field
        self.token = token
        self.pin = OneTimePin(announce)
        self.sessions = Sessions()
        self.job: Job | None = None
        self.live_conns: dict[str, Any] = {}
        self.live_cache: tuple[float, dict[str, Any]] = (0.0, {})
        self.inputs_path = work_dir / "installer-inputs.json"

    # -- inputs, options, state

    def inputs(self) -> dict[str, Any]:
        try:
            data = json.loads(self.inputs_path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def save_inputs(self, data: dict[str, Any]) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.inputs_path, json.dumps(data, indent=2, sort_keys=True).encode(), 0o600)

    def options(self, redo: str | None = None) -> Options:
        values = {**self.defaults, **self.inputs()}
        values = {k: Path(v) if k in PATH_FIELDS and v else v for k, v in values.items() if k in OPTION_NAMES}
        values.update(work_dir=self.work_dir, interactive=False, redo=redo)
        return Options(**values)

    def state(self) -> CommissioningState | None:
        try:
            return CommissioningState.load(self.work_dir / "commissioning.json")
        except StateError:
            return None

    def local_token(self) -> str | None:
        state = self.state()
        return self.token or ((state.get("local_api") or {}).get("token") if state else None)

    # -- sessions

    @web.middleware
    async def guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith(("/installer/static/", "/installer/login")) or request.path == "/":
            return await handler(request)
        session = self.sessions.get(request)
        if session is None:
            if request.path.endswith(".json"):
                return web.json_response({"error": "log in first", "field": "session"}, status=401)
            raise web.HTTPSeeOther("/installer/login")
        if request.method not in SAFE_METHODS:
            given = request.headers.get("X-CSRF-Token")
            if given is None and request.content_type in ("multipart/form-data",
                                                          "application/x-www-form-urlencoded"):  # fmt: skip
                given = (await request.post()).get(CSRF_FIELD)
            if not csrf_ok(session, given):
                return web.json_response({"error": "csrf: missing or wrong CSRF token", "field": "csrf"},
                                         status=403)  # fmt: skip
        return await handler(request)

    def render(self, request: web.Request, template: str, status: int = 200, **ctx: Any) -> web.Response:
        session = self.sessions.get(request)
        ctx.setdefault("prompt", "One-time PIN (shown on the gateway) or the gateway's local token")
        html = ENV.get_template(template).render(session=session, static="/installer/static",
                                                 logout="/installer/logout", **ctx)  # fmt: skip
        return html_response(html, status)

    async def root(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/installer/")

    async def login_form(self, request: web.Request) -> web.Response:
        return self.render(request, "login.html", action="/installer/login", what="installer")

    async def login(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        given = str(form.get("pin", ""))
        token = self.local_token()
        if token and len(given) > 6 and token_ok(token, given):
            who = "local token"
        elif self.pin.check(given):
            who = "one-time PIN"
        else:
            return self.render(request, "login.html", status=401, action="/installer/login", what="installer",
                               error="pin: wrong PIN or token (a new PIN after 5 wrong tries)")  # fmt: skip
        resp = web.HTTPSeeOther("/installer/")
        set_cookie(resp, request, self.sessions.issue(who))
        raise resp

    async def logout(self, request: web.Request) -> web.StreamResponse:
        self.sessions.end(request)
        resp = web.HTTPSeeOther("/installer/login")
        resp.del_cookie(COOKIE, path="/")
        raise resp

    # -- the page

    def step_views(self, state: CommissioningState | None) -> list[dict[str, Any]]:
        out = []
        for index, name in enumerate(STEPS):
            rec = state.step(name) if state else {"status": "pending"}
            status = str(rec.get("status", "pending"))
            error = rec.get("error") or {}
            message, next_action = error.get("message"), error.get("next")
            needs = (
                status == "failed"
                and bool(message)
                and ("required (not running interactively)" in message or message.startswith("waiting for"))
            )
            if message:
                message = message.replace(" (not running interactively)", "")
            out.append({
                "name": name, "n": index + 1, "title": STEP_TITLES[name],
                "status": "needs input" if needs else status, "finished_at": rec.get("finished_at"),
                "message": message if status == "failed" else None,
                "next": next_action if status == "failed" else None,
                "field": field_of(message, next_action) if status == "failed" else None,
                "fields": FORM.get(name, []),
            })  # fmt: skip
        return out

    async def page(self, request: web.Request, errors: dict[str, str] | None = None, status: int = 200,
                   submitted: dict[str, str] | None = None) -> web.Response:  # fmt: skip
        state = self.state()
        data = state.data if state else {}
        identity = data.get("identity")
        inputs = self.inputs()
        return self.render(
            request, "installer.html", status=status, steps=self.step_views(state), data=data,
            inputs=inputs, errors=errors or {}, submitted=submitted or {}, job=self.job, roles=ROLES,
            csrf=self.sessions.get(request).csrf,  # type: ignore[union-attr]
            qr=jinja2.utils.markupsafe.Markup(qr_svg(
                f"LFDI={identity['lfdi']};SFDI={identity['sfdi']};PIN={int(identity['pin']):06d}"
            )) if identity else None,
            csr=(self.work_dir / "identity" / "gateway.csr").exists(),
        )  # fmt: skip

    async def index(self, request: web.Request) -> web.Response:
        return await self.page(request)

    async def submit(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["step"]
        if name not in FORM and name != "verify":
            raise web.HTTPNotFound()
        if self.job is not None and self.job.running:
            return await self.page(request, {"_": "a step is running: wait for it to finish"}, status=409)
        form = await request.post()
        inputs = self.inputs()
        errors: dict[str, str] = {}
        for f in FORM.get(name, []):
            raw = form.get(f.name)
            try:
                if f.kind == "file":
                    if isinstance(raw, web.FileField):
                        content = raw.file.read(MAX_UPLOAD + 1)
                        if content:
                            inputs[f.name] = str(self.store_upload(f, content))
                    continue
                if f.kind == "check":
                    inputs[f.name] = raw == "on" or None
                    continue
                value = _parse(f, str(raw or ""))
            except BadField as exc:
                errors[exc.name] = str(exc)
                continue
            if value is None:
                inputs.pop(f.name, None)
            else:
                inputs[f.name] = value
        redo = None
        if name == "discover":
            roles = {str(k)[5:]: str(v) for k, v in form.items() if str(k).startswith("role:")}
            bad = sorted(k for k, v in roles.items() if v not in ROLES)
            if bad:
                errors["roles"] = f"role of {bad[0]}: must be one of {', '.join(ROLES)}"
            state = self.state()
            found = (state.get("devices") if state else None) or []
            detected = {d["key"]: d["info"]["kind"] for d in found}
            inputs["roles"] = {k: v for k, v in roles.items() if detected.get(k) != v} or None
            redo = "discover"  # scanning again is what the button says
        if name == "verify":
            redo = "verify"
        if errors:  # nothing stored, nothing run: the page shows each error next to its field
            typed = {k: v for k, v in form.items() if isinstance(v, str) and k != CSRF_FIELD}
            return await self.page(request, errors, status=400, submitted=typed)
        self.save_inputs({k: v for k, v in inputs.items() if v is not None})
        self.start(redo)
        raise web.HTTPSeeOther(f"/installer/#step-{name if name in STEPS else 'discover'}")

    def store_upload(self, f: Field, content: bytes) -> Path:
        if len(content) > MAX_UPLOAD:
            raise BadField(f.name, f"{f.label}: at most {MAX_UPLOAD // 1024} KiB")
        if b"-----BEGIN " not in content:
            raise BadField(f.name, f"{f.label}: not a PEM file (no -----BEGIN line)")
        directory = self.work_dir / "uploads"
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{f.name}.pem"
        write_atomic(path, content, 0o600)
        return path

    def start(self, redo: str | None = None) -> Job:
        job = Job()
        opts = self.options(redo)

        async def run() -> None:
            try:
                job.outcome = await run_commissioning(opts, WebUI(job.lines))
            except Exception as exc:  # run_commissioning keeps the state; show what broke
                job.outcome = Outcome(False, None, f"{type(exc).__name__}: {exc}", "try again")

        job.task = asyncio.create_task(run())
        self.job = job
        return job

    async def job_json(self, request: web.Request) -> web.Response:
        job = self.job
        if job is None:
            return web.json_response({"running": False, "lines": [], "outcome": None})
        out = job.outcome
        return web.json_response({
            "running": job.running, "lines": job.lines[-200:], "started_at": job.started_at,
            "outcome": None if out is None else {"ok": out.ok, "failed_step": out.failed_step,
                                                 "message": out.message, "next": out.next_action},
        })  # fmt: skip

    async def live_json(self, request: web.Request) -> web.Response:
        """Live readings of the confirmed devices (Modbus TCP), at most once a second."""
        at, cached = self.live_cache
        if time.monotonic() - at < 1.0 and cached:
            return web.json_response(cached)
        from gateway.devices import DeviceConnection

        state = self.state()
        found = (state.get("devices") if state else None) or []
        devices = [d for d in found if not d["host"].startswith("rtu:")]
        readings = []
        for d in devices:
            conn = self.live_conns.get(d["key"])
            try:
                if conn is None:
                    conn = DeviceConnection(d["host"], d["port"], d["unit"], None, timeout=1.0, retries=0)
                    await conn.scan()
                    self.live_conns[d["key"]] = conn
                m = await conn.read_measurements()
                readings.append({"name": d["name"], "role": d["role"], "w": m.w, "limit_pct": m.limit_pct,
                                 "soc_pct": getattr(m, "soc_pct", None)})  # fmt: skip
            except Exception as exc:  # a device that stopped answering shows as such
                self.live_conns.pop(d["key"], None)
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close()
                readings.append({"name": d["name"], "role": d["role"], "error": str(exc)[:120]})
        data = {"at": time.time(), "devices": readings}
        self.live_cache = (time.monotonic(), data)
        return web.json_response(data)

    async def download(self, request: web.Request) -> web.StreamResponse:
        what = request.match_info["file"]
        paths = {"report.html": self.work_dir / "report.html", "report.json": self.work_dir / "report.json",
                 "gateway.csr": self.work_dir / "identity" / "gateway.csr"}  # fmt: skip
        path = paths.get(what)
        if path is None or not path.exists():
            raise web.HTTPNotFound(text=f"{what}: not written yet")
        return web.Response(body=path.read_bytes(), content_type="application/octet-stream",
                            headers={"Content-Disposition": f'attachment; filename="{what}"',
                                     "X-Content-Type-Options": "nosniff"})  # fmt: skip

    async def close(self, app: web.Application) -> None:
        if self.job is not None and self.job.task is not None:
            self.job.task.cancel()
            with contextlib.suppress(BaseException):
                await self.job.task
        for conn in self.live_conns.values():
            with contextlib.suppress(Exception):
                await conn.close()


def create_installer_app(installer: Installer) -> web.Application:
    app = web.Application(middlewares=[installer.guard], client_max_size=4 * MAX_UPLOAD)
    r = app.router
    r.add_get("/", installer.root)
    r.add_get("/installer/login", installer.login_form)
    r.add_post("/installer/login", installer.login)
    r.add_post("/installer/logout", installer.logout)
    r.add_get("/installer/", installer.index)
    r.add_post("/installer/step/{step}", installer.submit)
    r.add_get("/installer/job.json", installer.job_json)
    r.add_get("/installer/live.json", installer.live_json)
    r.add_get("/installer/download/{file}", installer.download)
    r.add_static("/installer/static/", HERE / "static")
    app.on_cleanup.append(installer.close)
    return app


# ------------------------------------------------------------------------------------------------ CLI


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host or "0.0.0.0", int(port)


def add_installer_parser(gateway_subparsers: argparse._SubParsersAction) -> None:
    p = gateway_subparsers.add_parser(
        "installer",
        help="serve the commissioning flow as a web page on the local network (one-time PIN)",
        description="The installer's web page: the same steps as `derlink gateway commission`, in a browser.",
    )
    p.add_argument("--dir", type=Path, default=Path("commissioning"), help="commissioning directory")
    p.add_argument("--listen", type=_listen, default=("0.0.0.0", 8711), metavar="HOST:PORT",
                   help="address to serve the page on (default 0.0.0.0:8711: the local network)")  # fmt: skip
    p.add_argument(
        "--tls",
        action="store_true",
        help="serve HTTPS with a self-signed certificate made on first start (kept in --dir); "
        "its SHA-256 fingerprint is printed, also as a QR code, to check in the browser",
    )
    p.add_argument("--tls-cert", type=Path, metavar="PEM", help="serve HTTPS with this certificate (chain)")
    p.add_argument("--tls-key", type=Path, metavar="PEM", help="the private key of --tls-cert")
    p.set_defaults(handler=installer_command)


def tls_for(args: argparse.Namespace) -> tuple[Any, str] | None:
    """The page's SSL context and certificate fingerprint, or None for plain HTTP (TlsError: which flag)."""
    from gateway.web.tls import TlsError, fingerprint, self_signed, server_context

    if (args.tls_cert is None) != (args.tls_key is None):
        raise TlsError("--tls-cert and --tls-key: give both, or --tls for a self-signed certificate")
    if args.tls_cert is not None:
        cert, key = args.tls_cert, args.tls_key
    elif args.tls:
        cert, key = self_signed(args.dir, args.listen[0])
    else:
        return None
    ctx = server_context(cert, key)
    return ctx, fingerprint(cert.read_bytes())


def installer_command(args: argparse.Namespace) -> int:
    import socket
    import sys

    from gateway.web.tls import TlsError

    host, port = args.listen
    try:
        tls = tls_for(args)
        sock = socket.create_server((host, port))
    except TlsError as exc:
        print(f"derlink gateway installer: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        from sep2.files import os_error_text

        print(f"derlink gateway installer: {os_error_text(exc, '--listen')}", file=sys.stderr)
        return 2
    port = sock.getsockname()[1]
    url = f"{'https' if tls else 'http'}://{host}:{port}/installer/"
    if tls is not None:
        import segno

        print(f"installer page certificate SHA-256 fingerprint: {tls[1]}", flush=True)
        print("check it against the one your browser shows for the page; or scan:", flush=True)
        segno.make(f"{url}#sha256={tls[1].replace(':', '')}", error="m").terminal(compact=True)

    def announce(pin: str) -> None:
        print(f"installer page {url} — one-time PIN: {pin}", flush=True)

    installer = Installer(args.dir, announce=announce)
    ssl_context = tls[0] if tls else None
    web.run_app(create_installer_app(installer), sock=sock, ssl_context=ssl_context, print=None,
                access_log=None)  # fmt: skip
    return 0
