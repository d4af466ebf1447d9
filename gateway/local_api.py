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
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.core import AggregatorInput, ControlSettings, CustomerPrefs
from gateway.core.drm import mode_errors
from gateway.observability import metrics_registry, render
from sep2.validation import first_error

if TYPE_CHECKING:
    from gateway.ports import RuntimeView

RUNTIME_KEY: web.AppKey[Any] = web.AppKey("runtime", object)
_B = TypeVar("_B", bound=BaseModel)

class BadInput(ValueError):
    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


# ------------------------------------------------------------------------------------------ bodies
# Shape, types and bounds as pydantic models (unknown fields forbidden, no coercion, finite numbers);
# rules that join fields (drm0 and connect, at least one input) follow in the functions below.

_Watts = Annotated[float, Field(ge=0)]
_Pct = Annotated[float, Field(ge=0, le=100)]
_Detail = Annotated[str, Field(max_length=200)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class _Limits(_Body):
    export_limit_w: _Watts | None = None
    import_limit_w: _Watts | None = None
    generation_limit_w: _Watts | None = None
    load_limit_w: _Watts | None = None

    def settings(self, *names: str) -> ControlSettings:
        keys = ("export_limit_w", "import_limit_w", "generation_limit_w", "load_limit_w", *names)
        return ControlSettings(**{k: getattr(self, k) for k in keys})


class EmergencyBody(_Limits):
    drm0: bool | None = None
    detail: _Detail | None = None
    connect: bool | None = None
    energize: bool | None = None
    max_lim_w_pct: _Pct | None = None
    max_consumption_pct: _Pct | None = None
    no_load_increase: bool | None = None


class AggregatorBody(_Limits):
    export_target_w: float | None = None
    expires_in_s: Annotated[float, Field(gt=0)] | None = None
    detail: _Detail | None = None
    target_w: float | None = None
    fixed_w_pct: Annotated[float, Field(ge=-100, le=100)] | None = None


class CustomerBody(_Limits):
    battery_reserve_pct: _Pct | None = None
    detail: _Detail | None = None


class DrmBody(_Body):
    modes: list[int]


def _parse(model: type[_B], body: Any) -> _B:
    if not isinstance(body, dict):
        raise BadInput("body", "must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        where, message = first_error(exc)
        raise BadInput(where or "body", message) from None


async def _body(request: web.Request) -> Any:
    try:
        return await request.json()
    except ValueError:
        raise BadInput("body", "must be a JSON object") from None


def emergency_from_body(body: Any) -> tuple[ControlSettings, str]:
    b = _parse(EmergencyBody, body)
    settings = b.settings("connect", "energize", "max_lim_w_pct", "max_consumption_pct", "no_load_increase")
    if b.drm0:
        if settings.connect is True:
            raise BadInput("connect", "contradicts drm0 (DRM 0 disconnects)")
        settings = ControlSettings(**{**settings.to_dict(), "connect": False})
    if settings.is_empty():
        raise BadInput("body", "give drm0 or at least one limit (e.g. export_limit_w)")
    default = "local emergency input (DRM 0)" if b.drm0 else "local emergency input"
    return settings, b.detail or default


def aggregator_from_body(body: Any, now: float) -> AggregatorInput:
    b = _parse(AggregatorBody, body)
    settings = b.settings("target_w", "fixed_w_pct")
    if b.export_target_w is None and settings.is_empty():
        raise BadInput("body", "give export_target_w, target_w, fixed_w_pct or a limit")
    return AggregatorInput(
        settings=settings,
        export_target_w=b.export_target_w,
        expires_at=int(now + b.expires_in_s) if b.expires_in_s is not None else None,
        detail=b.detail or "aggregator/HEMS setpoint",
    )


def customer_from_body(body: Any) -> CustomerPrefs:
    b = _parse(CustomerBody, body)
    settings = b.settings()
    if b.battery_reserve_pct is None and settings.is_empty():
        raise BadInput("body", "give battery_reserve_pct or a limit")
    return CustomerPrefs(b.battery_reserve_pct, settings, b.detail or "customer preferences")


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
        modes = _parse(DrmBody, body).modes
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
