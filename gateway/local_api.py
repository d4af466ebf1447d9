"""The gateway's local HTTP API (aiohttp), on loopback only, every request with ``Authorization: Bearer``.

    GET    /status       effective limits with their sources, regime, comms, next change, site, inputs
    GET    /explain      per limit: value, source, detail (+ requested / clipped_by for setpoints)
    GET    /ui/          the status page for a browser (gateway.web.status_page; log in with the token)
    GET    /metrics      Prometheus text format (gateway.observability); scrape with the bearer token
    PUT    /drm          AS/NZS 4755 modes, {"modes": [0, 5]} (only with [drm] source = "local_api")
    DELETE /drm          no DRM asserted
    POST   /emergency    local emergency input, e.g. {"drm0": true} (= connect false), {"export_limit_w": 0};
                         load side: {"max_consumption_pct": 0} sheds controllable load (and battery
                         charging), {"no_load_increase": true} holds loads at what they draw now
    DELETE /emergency    lift it
    PUT    /aggregator   aggregator/HEMS setpoint: {"export_target_w": 3000, "expires_in_s": 900, ...}
    DELETE /aggregator
    PUT    /customer     customer preferences: {"battery_reserve_pct": 30, "export_limit_w": ...}
    DELETE /customer

Bad input is a 400 ``{"error": "...", "field": "..."}`` and changes nothing. A 2xx means the new input is
decided, applied to the closed loop and persisted (it survives a restart).
"""

from __future__ import annotations

import hmac
import math
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway.core import AggregatorInput, ControlSettings, CustomerPrefs
from gateway.core.drm import mode_errors
from gateway.observability import metrics_registry, render

if TYPE_CHECKING:
    from gateway.ports import RuntimeView

RUNTIME_KEY: web.AppKey[Any] = web.AppKey("runtime", object)

_NUMBER_FIELDS = ("export_limit_w", "import_limit_w", "generation_limit_w", "load_limit_w", "fixed_w_pct",
                  "max_lim_w_pct", "target_w", "ramp_time_s", "set_grad_w")  # fmt: skip
_BOOL_FIELDS = ("connect", "energize", "no_load_increase")


class BadInput(ValueError):
    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


def _number(body: dict[str, Any], key: str) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadInput(key, f"must be a finite number, got {value!r}")
    return float(value)


def _settings(body: dict[str, Any], allowed: tuple[str, ...]) -> ControlSettings:
    values: dict[str, Any] = {}
    for key in allowed:
        if key in _BOOL_FIELDS:
            value = body.get(key)
            if value is not None and not isinstance(value, bool):
                raise BadInput(key, f"must be true or false, got {value!r}")
            values[key] = value
        else:
            values[key] = _number(body, key)
    settings = ControlSettings(**values)
    problems = settings.errors()
    if problems:
        raise BadInput(problems[0].split(" ", 1)[0], problems[0])
    return settings


def _detail(body: dict[str, Any], default: str) -> str:
    detail = body.get("detail", default)
    if not isinstance(detail, str) or len(detail) > 200:
        raise BadInput("detail", "must be a string of at most 200 characters")
    return detail


def _check_keys(body: dict[str, Any], allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise BadInput(unknown[0], f"unknown field (allowed: {', '.join(allowed)})")


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise BadInput("body", "must be a JSON object") from None
    if not isinstance(body, dict):
        raise BadInput("body", "must be a JSON object")
    return body


def emergency_from_body(body: dict[str, Any]) -> tuple[ControlSettings, str]:
    allowed = ("drm0", "detail", "export_limit_w", "import_limit_w", "generation_limit_w", "load_limit_w",
               "connect", "energize", "max_lim_w_pct", "max_consumption_pct", "no_load_increase")  # fmt: skip
    _check_keys(body, allowed)
    drm0 = body.get("drm0")
    if drm0 is not None and not isinstance(drm0, bool):
        raise BadInput("drm0", f"must be true or false, got {drm0!r}")
    settings = _settings(body, allowed[2:])
    if drm0:
        if settings.connect is True:
            raise BadInput("connect", "contradicts drm0 (DRM 0 disconnects)")
        settings = ControlSettings(**{**settings.to_dict(), "connect": False})
    if settings.is_empty():
        raise BadInput("body", "give drm0 or at least one limit (e.g. export_limit_w)")
    default = "local emergency input (DRM 0)" if drm0 else "local emergency input"
    return settings, _detail(body, default)


def aggregator_from_body(body: dict[str, Any], now: float) -> AggregatorInput:
    allowed = ("export_target_w", "expires_in_s", "detail", "target_w", "fixed_w_pct", "export_limit_w",
               "import_limit_w", "generation_limit_w", "load_limit_w")  # fmt: skip
    _check_keys(body, allowed)
    settings = _settings(body, allowed[3:])
    target = _number(body, "export_target_w")
    expires = _number(body, "expires_in_s")
    if expires is not None and expires <= 0:
        raise BadInput("expires_in_s", f"must be > 0, got {expires:g}")
    if target is None and settings.is_empty():
        raise BadInput("body", "give export_target_w, target_w, fixed_w_pct or a limit")
    return AggregatorInput(
        settings=settings,
        export_target_w=target,
        expires_at=int(now + expires) if expires is not None else None,
        detail=_detail(body, "aggregator/HEMS setpoint"),
    )


def customer_from_body(body: dict[str, Any]) -> CustomerPrefs:
    allowed = ("battery_reserve_pct", "detail", "export_limit_w", "import_limit_w", "generation_limit_w",
               "load_limit_w")  # fmt: skip
    _check_keys(body, allowed)
    reserve = _number(body, "battery_reserve_pct")
    if reserve is not None and not 0 <= reserve <= 100:
        raise BadInput("battery_reserve_pct", f"must be within 0..100, got {reserve:g}")
    settings = _settings(body, allowed[2:])
    if reserve is None and settings.is_empty():
        raise BadInput("body", "give battery_reserve_pct or a limit")
    return CustomerPrefs(reserve, settings, _detail(body, "customer preferences"))


def explain(status: dict[str, Any]) -> dict[str, Any]:
    return {"regime": status["regime"], "limits": status["limits"], "lines": status["explain"]}


def create_app(runtime: RuntimeView) -> web.Application:
    token = runtime.settings.local_api.token or ""

    @web.middleware
    async def guard(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith("/ui/"):  # the status page: a session cookie for the same token
            return await handler(request)
        given = request.headers.get("Authorization", "")
        if not (given.startswith("Bearer ") and hmac.compare_digest(given[7:].encode(), token.encode())):
            return web.json_response(
                {"error": "missing or wrong bearer token", "field": "Authorization"},
                status=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        try:
            return await handler(request)
        except BadInput as exc:
            return web.json_response({"error": str(exc), "field": exc.field}, status=400)
        except ValueError as exc:  # the core's check_inputs: "customer.battery_reserve_pct must be ..."
            text = str(exc)
            return web.json_response({"error": text, "field": text.split(" ", 1)[0]}, status=400)

    async def get_status(request: web.Request) -> web.Response:
        return web.json_response(await runtime.status())

    async def get_explain(request: web.Request) -> web.Response:
        return web.json_response(explain(await runtime.status()))

    registry = metrics_registry(runtime)

    async def get_metrics(request: web.Request) -> web.Response:
        await runtime.refresh_outbox_depth()
        return web.Response(body=render(registry), content_type="text/plain", charset="utf-8",
                            headers={"X-Content-Type-Options": "nosniff"})  # fmt: skip

    async def put_drm(request: web.Request) -> web.Response:
        source = runtime.settings.drm.source
        if source != "local_api":
            return web.json_response(
                {"error": f"drm.source is {source!r}: the DRM inputs come from the DRED, not this API",
                 "field": "drm.source"}, status=409,
            )  # fmt: skip
        body = await _body(request) if request.method == "PUT" else {"modes": []}
        _check_keys(body, ("modes",))
        modes = body.get("modes")
        if not isinstance(modes, list):
            raise BadInput("modes", f"must be a list of DRM numbers 0..8, got {modes!r}")
        problems = mode_errors(modes)
        if problems:
            raise BadInput("modes", problems[0])
        await runtime.set_inputs("local", drm_modes=frozenset(modes), drm_source="local API")
        return web.json_response(explain(await runtime.status()))

    async def post_emergency(request: web.Request) -> web.Response:
        settings, detail = emergency_from_body(await _body(request))
        await runtime.set_inputs("local", emergency=settings, emergency_detail=detail)
        return web.json_response(explain(await runtime.status()))

    async def delete_emergency(request: web.Request) -> web.Response:
        await runtime.set_inputs("local", emergency=None)
        return web.json_response(explain(await runtime.status()))

    async def put_aggregator(request: web.Request) -> web.Response:
        agg = aggregator_from_body(await _body(request), runtime.now())
        await runtime.set_inputs("local", aggregator=agg)
        return web.json_response(explain(await runtime.status()))

    async def delete_aggregator(request: web.Request) -> web.Response:
        await runtime.set_inputs("local", aggregator=None)
        return web.json_response(explain(await runtime.status()))

    async def put_customer(request: web.Request) -> web.Response:
        await runtime.set_inputs("local", customer=customer_from_body(await _body(request)))
        return web.json_response(explain(await runtime.status()))

    async def delete_customer(request: web.Request) -> web.Response:
        await runtime.set_inputs("local", customer=CustomerPrefs())
        return web.json_response(explain(await runtime.status()))

    app = web.Application(middlewares=[guard], client_max_size=64 * 1024)
    app[RUNTIME_KEY] = runtime
    app.router.add_get("/status", get_status)
    app.router.add_get("/explain", get_explain)
    app.router.add_get("/metrics", get_metrics)
    app.router.add_put("/drm", put_drm)
    app.router.add_delete("/drm", put_drm)
    app.router.add_post("/emergency", post_emergency)
    app.router.add_delete("/emergency", delete_emergency)
    app.router.add_put("/aggregator", put_aggregator)
    app.router.add_delete("/aggregator", delete_aggregator)
    app.router.add_put("/customer", put_customer)
    app.router.add_delete("/customer", delete_customer)
    from gateway.web.status_page import mount_status_page

    mount_status_page(app, runtime, token)
    return app


async def start_local_api(runtime: RuntimeView) -> web.AppRunner:
    """Bind the API on the configured loopback address; the bound port goes to ``local_api.json``."""
    cfg = runtime.settings.local_api
    runner = web.AppRunner(create_app(runtime), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, cfg.host, cfg.port)
    await site.start()
    port = runner.addresses[0][1]
    runtime.write_local_api_file(port)
    return runner
