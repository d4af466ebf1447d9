"""cactus-client admin plugin for derlink: every admin instruction becomes head-end API calls, nothing else.

It runs inside the cactus venv (Python >= 3.12, cactus-client installed) and imports nothing from derlink.
The head-end is reached over HTTP with a bearer token (``DERLINK_HEADEND_URL``, ``DERLINK_HEADEND_TOKEN``);
there is no database access and no private hook into the server. If an instruction cannot be expressed
through the head-end API, the plugin says so (the step fails with that reason) rather than reaching around it.

Instruction → head-end mapping:

=========================== =====================================================================
ensure-end-device           POST /api/sites (out-of-band registration) / DELETE /api/sites/{lfdi}
ensure-mup-list-empty       DELETE /api/sites/{lfdi}/mups
ensure-fsa                  POST /api/groups + PUT /api/sites/{lfdi}/groups/{group} (a group is an FSA)
ensure-der-program          POST /api/programs with that group and primacy
ensure-der-control-list     a program of our own (every program has its DERControlList)
(setup)                     PATCH /api/programs/{key} switches the built-in programs off
create-der-control          POST /api/controls
create-default-der-control  PUT /api/defaults
clear-der-controls          GET /api/controls?active=1 + POST /api/controls/{mrid}/cancel
set-poll-rate/set-post-rate PUT /api/rates
set-client-access           POST /api/clients/{lfdi}/revoke | restore
=========================== =====================================================================
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import aiohttp
from cactus_client.admin.plugins import hookimpl
from cactus_client.model.context import AdminContext
from cactus_client.model.execution import ActionResult, StepExecution
from cactus_test_definitions.server.admin_instructions import AdminInstruction

log = logging.getLogger("derlink.cactus_plugin")

#: cactus resource name -> derlink rate resource (head-end PUT /api/rates).
POLL_RESOURCES = {
    "DeviceCapability": "dcap",
    "EndDeviceList": "edev",
    "EndDevice": "edev",
    "FunctionSetAssignmentsList": "fsa",
    "DERProgramList": "derp",
    "DERList": "der",
    "MirrorUsagePointList": "mup",
    "ResponseSetList": "rsps",
    "SubscriptionList": "sub",
    "Time": "tm",
}
#: cactus control parameter -> head-end field. Limits in watts, as the head-end takes them.
CONTROL_FIELDS = {
    "opModExpLimW": "export_limit_w",
    "opModImpLimW": "import_limit_w",
    "opModGenLimW": "generation_limit_w",
    "opModLoadLimW": "load_limit_w",
    "opModConnect": "connect",
    "opModEnergize": "energize",
    "opModFixedW": "fixed_w_percent",
    "rampTms": "ramp_tms",
}
DEFAULT_ACTIVE_SECONDS = 3600  # an "active" control with no duration_seconds stays up for the test
SCHEDULED_OFFSET = 120  # "scheduled" with no start_offset_seconds ("can start any time", S-ALL-41)
SCHEDULED_DURATION = 60  # "scheduled" with no duration_seconds ("and be of any duration")
BUILT_IN_PROGRAMS = ("emergency", "doe", "default")  # switched off: the lab site sees only the tests' own


class HeadEndRefused(Exception):
    pass


class DerlinkAdminPlugin:
    """State per test run: which groups stand for which FSA annotation, the programs made, the controls."""

    def __init__(self, url: str | None = None, token: str | None = None) -> None:
        self.url = (url or os.environ["DERLINK_HEADEND_URL"]).rstrip("/")
        self.token = token or os.environ["DERLINK_HEADEND_TOKEN"]
        self.reset()

    def reset(self) -> None:
        self.fsa_groups: dict[str, str] = {}  # annotation -> group name
        self.group_programs: dict[str, list[tuple[str, int]]] = {}  # group -> [(program key, primacy)]
        self.scheduled_until: dict[str, int] = {}  # program -> end of the last stacked "scheduled" control
        self.controls: list[str] = []  # mRIDs created, oldest first

    # -- HTTP

    async def call(
        self, method: str, path: str, body: dict[str, Any] | None = None, ok: tuple[int, ...] = ()
    ) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"}
        async with aiohttp.ClientSession() as session:
            async with session.request(method, self.url + path, json=body, headers=headers) as resp:
                data = await resp.json(content_type=None) if resp.content_length != 0 else None
                if resp.status >= 400 and resp.status not in ok:
                    raise HeadEndRefused(f"{method} {path} -> {resp.status}: {data}")
                return data

    # -- hooks

    @hookimpl
    async def admin_setup(self, context: AdminContext) -> ActionResult:
        """Aggregator certificates are the operator's to declare: attach each one to its own aggregator."""
        self.reset()
        # The procedures make the FSAs and programs they need; the head-end's built-in ones would be
        # extra programs in every site's FSA 0 (S-ALL-49 orders FSAs by primacy). Off for the lab.
        for key in BUILT_IN_PROGRAMS:
            await self.call("PATCH", f"/api/programs/{key}", {"enabled": False, "reason": "cactus lab"})
        for alias, cfg in context.client_configs.items():
            if str(cfg.type) == "aggregator":
                lfdi = _cert_lfdi(cfg.certificate_file)
                await self.call(
                    "POST",
                    "/api/aggregators",
                    {"name": f"cactus-{cfg.id}", "lfdis": [lfdi], "reason": f"cactus {alias}"},
                    ok=(400,),  # already exists (re-run against the same data dir)
                )
        return ActionResult.done()

    @hookimpl
    async def admin_teardown(self, context: AdminContext) -> ActionResult:
        return ActionResult.done()

    @hookimpl
    async def admin_instruction(
        self, instruction: AdminInstruction, step: StepExecution, context: AdminContext
    ) -> ActionResult | None:
        cfg = context.client_config_for(instruction.client)
        handler = getattr(self, "do_" + instruction.type.value.replace("-", "_"))
        try:
            await handler(cfg, dict(instruction.parameters or {}))
        except HeadEndRefused as exc:
            log.error("admin instruction %s refused: %s", instruction.type, exc)
            return ActionResult.failed(f"head-end refused {instruction.type}: {exc}")
        return ActionResult.done()

    # -- instructions

    async def _site(self, cfg: Any) -> dict[str, Any] | None:
        found = await self.call("GET", f"/api/sites/{cfg.lfdi}", ok=(404,))
        return found if found and "error" not in found else None

    async def do_ensure_end_device(self, cfg: Any, p: dict[str, Any]) -> None:
        site = await self._site(cfg)
        if not p["registered"]:
            if site is not None:
                await self.call("DELETE", f"/api/sites/{cfg.lfdi}?reason=cactus")
            return
        if site is not None:
            return
        body: dict[str, Any] = {"lfdi": cfg.lfdi, "sfdi": cfg.sfdi, "pin": cfg.pin, "reason": "cactus"}
        if str(cfg.type) == "aggregator":
            body["aggregator"] = f"cactus-{cfg.id}"
        await self.call("POST", "/api/sites", body)

    async def do_ensure_mup_list_empty(self, cfg: Any, p: dict[str, Any]) -> None:
        if await self._site(cfg) is not None:
            await self.call("DELETE", f"/api/sites/{cfg.lfdi}/mups?reason=cactus")

    async def _group_for(self, cfg: Any, annotation: str | None) -> str:
        annotation = annotation or "fsa"
        group = self.fsa_groups.get(annotation)
        if group is None:
            group = f"cactus-{annotation}"[:64]
            await self.call(
                "POST",
                "/api/groups",
                {"name": group, "description": annotation[:32], "reason": "cactus"},
                ok=(400,),
            )
            self.fsa_groups[annotation] = group
        await self.call("PUT", f"/api/sites/{cfg.lfdi}/groups/{group}?reason=cactus")
        return group

    async def _program(self, group: str, primacy: int) -> str:
        for key, prim in self.group_programs.get(group, []):
            if prim == primacy:
                return key
        key = f"{group}-p{primacy}"[:32]
        await self.call(
            "POST",
            "/api/programs",
            {"key": key, "primacy": primacy, "group": group, "description": key[:32], "reason": "cactus"},
        )
        self.group_programs.setdefault(group, []).append((key, primacy))
        return key

    async def do_ensure_fsa(self, cfg: Any, p: dict[str, Any]) -> None:
        group = await self._group_for(cfg, p.get("annotation"))
        if "primacy" in p:
            await self._program(group, int(p["primacy"]))

    async def do_ensure_der_program(self, cfg: Any, p: dict[str, Any]) -> None:
        group = await self._group_for(cfg, p.get("fsa_annotation"))
        await self._program(group, int(p.get("primacy", 1)))

    async def do_ensure_der_control_list(self, cfg: Any, p: dict[str, Any]) -> None:
        await self._program_for(cfg, None)  # every DERProgram has its DERControlList; make sure one is seen

    async def _program_for(self, cfg: Any, primacy: int | None) -> str:
        """The program a control goes on: a program of that primacy (or the first) on an FSA the test made,
        with this client's site a member of it; with none made yet, one of our own."""
        for annotation, group in self.fsa_groups.items():
            for key, prim in self.group_programs.get(group, []):
                if primacy is None or prim == primacy:
                    await self._group_for(cfg, annotation)
                    return key
        group = await self._group_for(cfg, None)
        return await self._program(group, primacy if primacy is not None else 1)

    async def do_create_der_control(self, cfg: Any, p: dict[str, Any]) -> None:
        program = await self._program_for(cfg, p.get("primacy"))
        now = int(time.time())
        if p["status"] == "active":
            start = now - 1
            duration = int(p.get("duration_seconds") or DEFAULT_ACTIVE_SECONDS)
        else:
            duration = int(p.get("duration_seconds") or SCHEDULED_DURATION)
            start = now + int(p.get("start_offset_seconds") or SCHEDULED_OFFSET)
            start = max(start, self.scheduled_until.get(program, 0))  # stack scheduled controls
            self.scheduled_until[program] = start + duration
        body: dict[str, Any] = {
            "program": program,
            "target": f"site:{cfg.lfdi}",
            "start": start,
            "duration": duration,
            "reason": "cactus",
        }
        if p.get("randomizeStart_seconds"):
            body["randomize_start"] = int(p["randomizeStart_seconds"])
        for name, field in CONTROL_FIELDS.items():
            if p.get(name) is not None:
                value = p[name]
                body[field] = (
                    value
                    if isinstance(value, bool)
                    else (int(value) if field in ("ramp_tms", "fixed_w_percent") else float(value))
                )
        created = await self.call("POST", "/api/controls", body)
        self.controls.append(created["mrid"])

    async def do_create_default_der_control(self, cfg: Any, p: dict[str, Any]) -> None:
        program = await self._program_for(cfg, p.get("primacy"))
        body: dict[str, Any] = {"program": program, "target": f"site:{cfg.lfdi}", "reason": "cactus"}
        for name, field in CONTROL_FIELDS.items():
            if p.get(name) is not None:
                body[field] = p[name] if isinstance(p[name], bool) else float(p[name])
        if p.get("setGradW") is not None:
            body["set_grad_w"] = int(p["setGradW"])
        await self.call("PUT", "/api/defaults", body)

    async def do_clear_der_controls(self, cfg: Any, p: dict[str, Any]) -> None:
        active = await self.call("GET", f"/api/controls?active=1&target=site:{cfg.lfdi}&limit=1000")
        mrids = [item["mrid"] for item in active["items"]]  # newest first
        for mrid in mrids if p.get("all") else mrids[:1]:
            await self.call("POST", f"/api/controls/{mrid}/cancel", {"reason": "cactus"})
        if p.get("all"):
            self.scheduled_until.clear()  # cancelled controls hold no slot (S-ALL-41 step 9 must overlap 8)

    async def do_set_poll_rate(self, cfg: Any, p: dict[str, Any]) -> None:
        resource = POLL_RESOURCES.get(str(p["resource"]))
        if resource is None:
            raise HeadEndRefused(f"no derlink pollRate for {p['resource']}")
        await self._rate(cfg, resource, int(p["rate_seconds"]))

    async def do_set_post_rate(self, cfg: Any, p: dict[str, Any]) -> None:
        await self._rate(cfg, "post", int(p["rate_seconds"]))

    async def _rate(self, cfg: Any, resource: str, value: int) -> None:
        target = f"site:{cfg.lfdi}" if await self._site(cfg) is not None else "all"
        body = {"resource": resource, "value": value, "target": target, "reason": "cactus"}
        await self.call("PUT", "/api/rates", body)

    async def do_set_client_access(self, cfg: Any, p: dict[str, Any]) -> None:
        lfdi = _cert_lfdi(cfg.certificate_file)
        action = "restore" if p["granted"] else "revoke"
        await self.call("POST", f"/api/clients/{lfdi}/{action}", {"reason": "cactus"})


def _cert_lfdi(path: str) -> str:
    from cactus_client.sep2 import lfdi_from_cert_file

    return lfdi_from_cert_file(path).upper()
