"""The head-end operator API: JSON over HTTP on its own listener (loopback by default).

* Authentication: ``Authorization: Bearer <token>``; tokens come from the server config with a role,
  ``operator`` (read and write) or ``viewer`` (read only). Missing or unknown token: 401. A viewer
  writing: 403.
* Every write goes through the store's admin API or the route modules' functions, which audit it (who =
  token name, what, target, when, reason) in the same transaction and queue notifications for subscribers.
* Errors are JSON ``{"error": ..., "field": ...}``; the message names the field. Nothing changes on error.
* Bodies, query strings and answers are pydantic models (server.headend.models), checked by the router
  (server.headend.routing); the OpenAPI document at ``/api/openapi.json`` (browsable at ``/api/docs``) is
  generated from the same routes and models, so it cannot drift from what is served.

The routes live by noun in the modules imported below; this module puts them on one listener.
"""

from __future__ import annotations

import functools
import logging
from types import ModuleType
from typing import Any

from aiohttp import web

from server.config import ServerConfig
from server.headend import (
    audit,
    clients,
    controls,
    core,
    does,
    emergencies,
    groups,
    incidents_api,
    outcomes,
    programs,
    sites,
    standing,
)
from server.headend.core import HeadEnd, Operator
from server.headend.doe import doe_mrid
from server.headend.routing import Route
from server.headend.sites import bulk_register
from server.store import Store

log = logging.getLogger("derlink.headend")

MODULES: tuple[ModuleType, ...] = (
    core, sites, standing, groups, programs, controls, outcomes, emergencies, does, clients, audit
)  # fmt: skip
ROUTES: list[Route] = [route for module in MODULES for route in module.ROUTES]  # incidents_api has its own


def create_headend_app(store: Store, config: ServerConfig) -> web.Application:
    head = HeadEnd(store, config)
    # Large bodies (DOE uploads) are streamed by their handler; JSON bodies are bounded here.
    app = web.Application(middlewares=[head.middleware], client_max_size=64 * 1024 * 1024)
    app.router.add_get("/api/openapi.json", head.openapi)
    app.router.add_get("/api/docs", head.docs)
    for module in MODULES:
        handlers = {r.handler: functools.partial(getattr(module, r.handler), head) for r in module.ROUTES}
        head.mount(app, module.ROUTES, handlers)
    incidents_api.register(head, app)
    from server.console import mount_console

    mount_console(app, head)
    return app


async def start_headend(store: Store, config: ServerConfig) -> tuple[web.AppRunner, int]:
    from server.config import check_headend_transport

    check_headend_transport(config)  # also for configs built without load_config
    context = headend_ssl(config) if config.headend_tls else None
    runner = web.AppRunner(create_headend_app(store, config), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.headend_host, config.headend_port, ssl_context=context)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    port = runner.addresses[0][1]
    scheme = "https" if context else "http"
    log.info("head-end API listening on %s://%s:%d/api", scheme, config.headend_host, port)
    return runner, port


def headend_ssl(config: ServerConfig) -> Any:
    """TLS with the server's own certificate; operators authenticate with bearer tokens, not certificates."""
    import ssl

    from certs.tls import server_ssl_context

    chain, key, ca = config.tls_files()
    context = server_ssl_context(chain, key, ca, require_client_cert=False)
    context.verify_mode = ssl.CERT_NONE
    return context


__all__ = [
    "ROUTES", "HeadEnd", "Operator", "bulk_register", "create_headend_app", "doe_mrid", "start_headend"
]  # fmt: skip
