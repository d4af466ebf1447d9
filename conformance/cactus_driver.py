"""Run cactus-client server procedures against derlink, with our admin plugin and our notification sink.

Runs in the cactus venv (Python >= 3.12); ``conformance/run`` starts it once per procedure against a fresh
server. Writes a JSON result: status, steps passed, and for a failure the first failing step and why.

The notification sink speaks the cactus-client-notifications management API (``/manage/endpoint`` to create
a webhook, GET it to collect, PUT ``{"enabled": false}`` to make it answer 500) and accepts the server's
Notifications at ``/webhook/{id}`` over mutual TLS, checking the server's certificate against the lab CA.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import secrets
import ssl
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cactus_plugin import DerlinkAdminPlugin


class NotificationSink:
    """The webhook side of a subscription: one endpoint per cactus subscription alias."""

    def __init__(self, public_base: str) -> None:
        self.public_base = public_base.rstrip("/")
        self.endpoints: dict[str, dict[str, Any]] = {}

    async def create(self, request: web.Request) -> web.Response:
        endpoint_id = secrets.token_hex(8)
        self.endpoints[endpoint_id] = {"enabled": True, "notifications": []}
        return web.json_response(
            {
                "endpoint_id": endpoint_id,
                "fully_qualified_endpoint": f"{self.public_base}/webhook/{endpoint_id}",
            }
        )

    def _endpoint(self, request: web.Request) -> dict[str, Any]:
        found = self.endpoints.get(request.match_info["endpoint_id"])
        if found is None:
            raise web.HTTPNotFound()
        return found

    async def collect(self, request: web.Request) -> web.Response:
        endpoint = self._endpoint(request)
        collected, endpoint["notifications"] = endpoint["notifications"], []
        return web.json_response({"notifications": collected})

    async def configure(self, request: web.Request) -> web.Response:
        self._endpoint(request)["enabled"] = bool((await request.json())["enabled"])
        return web.Response(status=204)

    async def delete(self, request: web.Request) -> web.Response:
        self.endpoints.pop(request.match_info["endpoint_id"], None)
        return web.Response(status=204)

    async def webhook(self, request: web.Request) -> web.Response:
        endpoint = self._endpoint(request)
        if not endpoint["enabled"]:
            return web.Response(status=500, text="endpoint disabled by the test")
        endpoint["notifications"].append(
            {
                "method": request.method,
                "headers": [{"name": k, "value": v} for k, v in request.headers.items()],
                "body": await request.text(),
                "received_at": dt.datetime.now(dt.UTC).isoformat(),
                "remote": request.remote,
            }
        )
        return web.Response(status=201)

    def admin_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/manage/endpoint", self.create)
        app.router.add_get("/manage/endpoint/{endpoint_id}", self.collect)
        app.router.add_put("/manage/endpoint/{endpoint_id}", self.configure)
        app.router.add_delete("/manage/endpoint/{endpoint_id}", self.delete)
        return app

    def webhook_app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/webhook/{endpoint_id}", self.webhook)
        return app


async def start_sink(args: argparse.Namespace) -> web.AppRunner:
    sink = NotificationSink(f"https://127.0.0.1:{args.webhook_port}")
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.minimum_version = ssl.TLSVersion.TLSv1_2
    tls.load_cert_chain(args.sink_cert, args.sink_key)
    tls.load_verify_locations(args.ca)
    tls.verify_mode = ssl.CERT_REQUIRED  # the server presents its certificate when it notifies
    runners = []
    for app, port, context in (
        (sink.admin_app(), args.admin_port, None),
        (sink.webhook_app(), args.webhook_port, tls),
    ):
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
        runners.append(runner)
    return runners  # type: ignore[return-value]


def _failure(context: Any) -> tuple[str | None, str | None]:
    for result in context.progress.all_results:
        if result.is_passed():
            continue
        why = result.failure_result.description if result.failure_result else repr(result.exc)
        return result.step.id, why
    done = {r.step.id for r in context.progress.all_results}
    for step in context.test_procedure.steps:
        if step.id not in done:
            return step.id, "not completed (timed out or aborted)"
    return None, None


async def main(args: argparse.Namespace) -> int:
    import cactus_client.execution.run as cactus_run
    from cactus_client.admin.manager import get_plugin_manager
    from cactus_client.execution.autorun import autorun_entrypoint
    from cactus_client.model.config import load_config

    captured: dict[str, Any] = {}
    original_render = cactus_run.render_console

    def render(console: Any, context: Any, results: Any, *a: Any, **k: Any) -> Any:
        captured["context"], captured["results"] = context, results
        return original_render(console, context, results, *a, **k)

    cactus_run.render_console = render
    get_plugin_manager().register(DerlinkAdminPlugin())
    runners = await start_sink(args)
    try:
        config, _ = load_config(args.config)
        records = await autorun_entrypoint(
            global_config=config,
            include=[args.procedure],
            include_file=None,
            exclude=None,
            headless=True,
            timeout=args.timeout,
            quiet=True,
        )
    finally:
        for runner in runners:  # type: ignore[attr-defined]
            await runner.cleanup()
    record = records[0]
    out: dict[str, Any] = {"procedure": args.procedure, "status": record.status.name, "note": record.note}
    if "context" in captured:
        context, results = captured["context"], captured["results"]
        out["steps_passed"] = results.total_steps_passed
        out["steps"] = results.total_steps
        out["xsd_errors"] = results.total_xsd_errors
        out["warnings"] = [str(w) for w in context.warnings.warnings][:5]
        out["failed_step"], out["why"] = _failure(context) if record.status.name != "PASSED" else (None, None)
        if record.status.name != "PASSED" and results.total_xsd_errors:
            out["xsd"] = [str(e) for r in context.responses.responses for e in (r.xsd_errors or [])][:5]
    Path(args.result).write_text(json.dumps(out, indent=2, default=str))  # noqa: ASYNC240 (once, at the end)
    return 0 if record.status.name == "PASSED" else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True)
    parser.add_argument("--procedure", required=True)
    parser.add_argument("--result", required=True)
    parser.add_argument("--timeout", type=int, default=1200)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--sink-cert", required=True)
    parser.add_argument("--sink-key", required=True)
    parser.add_argument("--admin-port", type=int, required=True)
    parser.add_argument("--webhook-port", type=int, required=True)
    sys.exit(asyncio.run(main(parser.parse_args())))
