"""The public CSIP-AUS client test procedures (cactus-test-definitions), run against our gateway.

The procedures are read at test time from the ``cactus-test-definitions`` package (installed in
``conformance/.venv-cactus``, Python >= 3.12: :func:`load_procedures` asks that interpreter for the YAML,
nothing is copied here). :class:`ProcedureRun` plays the part of the CSIP-AUS test server for one
procedure: our ``derlink server`` holds the resources, a recording mutual-TLS front
(:class:`tests.strict_server.StrictFront`) sees every request of the gateway, and the procedure's
steps fire on those requests (or on waits) and drive the server through its operator API
(``store.admin``): controls, defaults, programs, rates. The gateway is the real
:class:`gateway.runtime.GatewayRuntime` on a simulated SunSpec site (Modbus TCP).

What differs from the official runner, on purpose and stated:

* time is compressed by :data:`SCALE` (a 300 s control lasts 15 s): waits, durations, start offsets and
  the comms rates the procedure sets; ramp rates (``setGradW``, %/s) are physics and are not scaled;
* an endpoint of the official server's URL layout (``/edev/1/derp/1/derc``) matches the same resource
  in ours (``/edev/{e}/derp/{p}/derc``, program ``p`` = the procedure's n-th program);
* the EndDevice is registered out of band (PIN and all) before the gateway starts, as the official
  procedures' ``register-end-device`` precondition does;
* ``instructions`` that ask the lab engineer to do something to the DER (disconnect it from the grid,
  stop it generating, power one off: ALL-07, ALL-08, MUL-01) are performed on the simulated site when
  their step becomes active (:data:`INSTRUCTIONS`); the others (what the engineer watches) are not
  checked here, and the tests that need physics check the site meter themselves;
* a procedure that needs an action, event, check or parameter this runner does not implement is not run:
  :func:`unsupported` says why, and the test prints the list. Nothing is reported as passed that did not
  run.
"""

from __future__ import annotations

import ast
import asyncio
import json
import math
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from gateway.client import mapping as m
from sep2 import resources as r
from server.store import build_control_base

#: Wall seconds per procedure second (20x faster). At 30x a loaded CI machine can delay a poll past a
#: whole compressed control (ALL-18's 120 s control would last 4 s).
SCALE = 1 / 20
#: Longest compressed run this runner attempts (ALL-25-EXT alone holds days of procedure time).
MAX_RUN_S = 600
#: The PIN the procedures register the EndDevice with (ALL-01: "11111, with checksum 111115"); the
#: gateway under test is configured with it.
CACTUS_PIN = 111115

_LOADER = """
import json, yaml
from cactus_test_definitions.client.test_procedures import TestProcedureId, get_yaml_contents
from cactus_test_definitions.schema import UniqueKeyLoader
print(json.dumps({t.value: yaml.load(get_yaml_contents(t), Loader=UniqueKeyLoader) for t in TestProcedureId},
                 default=str))
"""


def load_procedures() -> dict[str, dict[str, Any]]:
    """Every client procedure of the installed cactus-test-definitions, as the YAML reads."""
    from conformance.run import ensure_venv

    python = ensure_venv()  # fails (not skips) without a Python >= 3.12
    out = subprocess.run([str(python), "-c", _LOADER], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


# ------------------------------------------------------------------------------------- coverage

ACTIONS = {
    "enable-steps", "remove-steps", "finish-test", "set-comms-rate", "register-end-device",
    "create-der-program", "create-der-control", "set-default-der-control", "cancel-active-der-controls",
}  # fmt: skip
EVENTS = {"GET-request-received", "POST-request-received", "PUT-request-received", "wait"}
CHECKS = {
    "all-steps-complete", "end-device-contents", "der-settings-contents", "der-capability-contents",
    "der-status-contents", "response-contents", "readings-site-active-power", "readings-der-active-power",
    "readings-site-reactive-power", "readings-der-reactive-power", "readings-voltage",
    "readings-der-stored-energy", "subscription-contents", "all-notifications-transmitted",
}  # fmt: skip
_RATES = {
    "dcap_poll_seconds": "dcap", "edev_list_poll_seconds": "edev", "fsa_list_poll_seconds": "fsa",
    "der_list_poll_seconds": "der", "derp_list_poll_seconds": "derp", "mup_post_seconds": "post",
}  # fmt: skip
_CONTROL_PARAMS = {
    "start", "duration_seconds", "primacy", "randomizeStart_seconds", "ramp_time_seconds", "opModEnergize",
    "opModConnect", "opModImpLimW", "opModExpLimW", "opModGenLimW", "opModLoadLimW", "tag", "opModFixedW",
    "opModStorageTargetW", "pow_10_multipliers",
}  # fmt: skip
_POWERS = ("opModImpLimW", "opModExpLimW", "opModGenLimW", "opModLoadLimW")
_DEFAULT_PARAMS = {"opModImpLimW", "opModExpLimW", "opModGenLimW", "opModLoadLimW", "setGradW", "cancelled"}

# Official endpoint -> our path pattern ({p}: the procedure's n-th program, {f}: any FSA).
_ENDPOINTS: list[tuple[str, str]] = [
    (r"/dcap", r"/dcap"),
    (r"/tm", r"/tm"),
    (r"/edev", r"/edev"),
    (r"/edev/1/rg", r"/edev/\d+/rg"),
    (r"/edev/1/cp", r"/edev/\d+/cp"),
    (r"/edev/1/fsa", r"/edev/\d+/fsa"),
    (r"/edev/1/fsa/1/derp", r"/edev/\d+/fsa/\d+/derp"),
    (r"/edev/1/der", r"/edev/\d+/der"),
    (r"/edev/1/der/1/(ders|derg|dercap|dera)", r"/edev/\d+/der/\d+/{0}"),
    (r"/edev/1/derp/(\d+)/(derc|dderc)", r"/edev/\d+/derp/{p}/{1}"),
    (r"/edev/1/rsps/site_control/rsp", r"/rsps/\d+/rsp"),
    (r"/mup", r"/mup"),
    (r"/mup/\*", r"/mup/\d+"),
]


def _walk(proc: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(actions, events, checks) anywhere in a procedure."""
    actions: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    checks: list[dict[str, Any]] = []
    pre = proc.get("Preconditions") or {}
    actions += (pre.get("init_actions") or []) + (pre.get("actions") or [])
    checks += pre.get("checks") or []
    checks += (proc.get("Criteria") or {}).get("checks") or []
    for step in (proc.get("Steps") or {}).values():
        actions += step.get("actions") or []
        event = step.get("event") or {}
        events.append(event)
        checks += event.get("checks") or []
    return actions, events, checks


def unsupported(proc: dict[str, Any]) -> list[str]:
    """Why this runner cannot run a procedure faithfully (empty: it can)."""
    reasons: list[str] = []
    actions, events, checks = _walk(proc)
    for a in actions:
        kind, params = a["type"], a.get("parameters") or {}
        if kind not in ACTIONS:
            reasons.append(f"action {kind}")
        elif kind == "set-comms-rate" and set(params) - set(_RATES):
            reasons.append(f"set-comms-rate {sorted(set(params) - set(_RATES))}")
        elif kind == "create-der-control" and set(params) - _CONTROL_PARAMS:
            reasons.append(f"create-der-control {sorted(set(params) - _CONTROL_PARAMS)}")
        elif kind == "set-default-der-control" and set(params) - _DEFAULT_PARAMS:
            reasons.append(f"set-default-der-control {sorted(set(params) - _DEFAULT_PARAMS)}")
        elif kind == "create-der-program" and set(params) - {"primacy"}:
            reasons.append(f"create-der-program {sorted(set(params) - {'primacy'})}")
    for e in events:
        kind = e.get("type")
        if kind not in EVENTS:
            reasons.append(f"event {kind}")
        elif kind != "wait" and _endpoint_pattern((e.get("parameters") or {}).get("endpoint", "")) is None:
            reasons.append(f"endpoint {e['parameters']['endpoint']}")
    for c in checks:
        if c["type"] not in CHECKS:
            reasons.append(f"check {c['type']}")
    if time_limit(proc) > MAX_RUN_S:
        reasons.append(f"long: {time_limit(proc) / 60:.0f} min even compressed {1 / SCALE:.0f}x")
    return sorted(set(reasons))


def _endpoint_pattern(endpoint: str, programs: list[int] | None = None) -> str | None:
    for official, ours in _ENDPOINTS:
        found = re.fullmatch(official, endpoint)
        if found is None:
            continue
        groups = found.groups()
        if "{p}" in ours:
            index = int(groups[0])
            if programs is not None and index > len(programs):
                return None
            program = str(programs[index - 1]) if programs is not None else r"\d+"
            return ours.replace("{p}", program).replace("{1}", groups[1])
        return ours.replace("{0}", groups[0]) if groups else ours
    return None


def scaled(seconds: float) -> float:
    return seconds * SCALE


# ----------------------------------------------------------------------------------- expressions

_INTERVAL = re.compile(r"^\s*(\d+)\s*(second|minute|hour|day)s?\s*$")
_UNIT = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


def evaluate(value: Any, names: dict[str, float], this: Any = None) -> Any:
    """A ``$(...)`` variable expression of the procedures (``now + '5 minutes'``, ``setMaxW * 2``,
    ``this > 0``); time intervals are compressed by :data:`SCALE`. Anything else is returned as is."""
    if not isinstance(value, str) or not value.startswith("$("):
        return value
    tree = ast.parse(value[2:-1].strip(), mode="eval")

    def ev(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant):
            if isinstance(node.value, str):
                found = _INTERVAL.match(node.value)
                if not found:
                    raise ValueError(f"interval {node.value!r}")
                return scaled(int(found.group(1)) * _UNIT[found.group(2)])
            return node.value
        if isinstance(node, ast.Name):
            if node.id == "this":
                return this
            if node.id not in names:
                raise KeyError(f"variable {node.id} (not known yet)")
            return names[node.id]
        if isinstance(node, ast.BinOp):
            left, right = ev(node.left), ev(node.right)
            ops: dict[type, Callable[[Any, Any], Any]] = {
                ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b,
                ast.Mult: lambda a, b: a * b, ast.Div: lambda a, b: a / b,
            }  # fmt: skip
            return ops[type(node.op)](left, right)
        if isinstance(node, ast.Compare) and len(node.ops) == 1:
            left, right = ev(node.left), ev(node.comparators[0])
            cmp: dict[type, Callable[[Any, Any], bool]] = {
                ast.Gt: lambda a, b: a > b, ast.GtE: lambda a, b: a >= b, ast.Lt: lambda a, b: a < b,
                ast.LtE: lambda a, b: a <= b, ast.Eq: lambda a, b: a == b, ast.NotEq: lambda a, b: a != b,
            }  # fmt: skip
            return cmp[type(node.ops[0])](left, right)
        raise ValueError(f"unsupported expression {ast.dump(node)}")

    return ev(tree)


# ---------------------------------------------------------------------------------------- the run


@dataclass
class Result:
    procedure: str
    passed: bool
    steps: int
    completed: list[str]
    failures: list[str]
    seconds: float


@dataclass
class ProcedureRun:
    """One procedure against one gateway: ``await run.start()`` before the gateway starts, then
    ``await run.finish(limit_s)``."""

    procedure: str
    spec: dict[str, Any]
    admin: Any
    front: Any  # tests.strict_server.StrictFront in recording mode
    lfdi: str
    clock: Callable[[], float] = time.time
    active: dict[str, float] = field(default_factory=dict)  # step -> when enabled (server time)
    completed: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    finished: bool = False
    tags: dict[str, str] = field(default_factory=dict)  # control tag -> mRID
    controls: list[tuple[str, int]] = field(default_factory=list)  # (mRID, end) of every control created
    programs: list[tuple[str, int, int]] = field(default_factory=list)  # (key, primacy, id) in order
    site: Any = None  # simulators.site.SimulatedSite: where the lab engineer's instructions are carried out
    instructed: list[str] = field(default_factory=list)  # the instructions performed, in order
    _sources: dict[str, float] = field(default_factory=dict)  # PV source before "stop generating"
    _first_claimed: bool = False
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _started: float = 0.0
    _ticker: asyncio.Task[None] | None = None

    @property
    def target(self) -> str:
        """Where controls go: the site, or every site while an in-band registration is awaited."""
        return "all" if registers_in_band(self.spec) else f"site:{self.lfdi}"

    @property
    def steps(self) -> dict[str, dict[str, Any]]:
        return self.spec.get("Steps") or {}

    @property
    def preconditions(self) -> dict[str, Any]:
        return self.spec.get("Preconditions") or {}

    async def start(self) -> None:
        """Before the gateway starts: register the EndDevice out of band (as the earlier procedures
        left it: PIN :data:`CACTUS_PIN`) unless the procedure does it itself, run the init actions."""
        self._started = time.monotonic()
        self.front.before = self._before
        self.front.after = self._after
        registers = any(a["type"] == "register-end-device" for a in self.preconditions.get("actions") or [])
        if not registers and not registers_in_band(self.spec):
            await self.admin.register_site(self.lfdi, pin=CACTUS_PIN)
        await self._ensure_program()
        for action in self.preconditions.get("init_actions") or []:
            await self._act(action)
        if self.preconditions.get("immediate_start"):
            await self._begin()

    async def begin_when_ready(self, within: float) -> None:
        """The official init phase: the test starts once the precondition checks pass."""
        if self.preconditions.get("immediate_start"):
            return
        deadline = time.monotonic() + within
        checks = self.preconditions.get("checks") or []
        while True:
            problems = [p for c in checks if (p := await self._check(c))]
            if not problems:
                break
            if time.monotonic() > deadline:
                self.failures.append(f"preconditions never met: {'; '.join(problems)}")
                self.finished = True
                return
            await asyncio.sleep(0.1)
        await self._begin()

    async def _begin(self) -> None:
        for action in self.preconditions.get("actions") or []:
            try:
                await self._act(action)
            except Exception as exc:  # e.g. the server refused it: the procedure fails, visibly
                self.failures.append(f"precondition action {action['type']}: {type(exc).__name__}: {exc}")
        enabled = {
            s
            for step in self.steps.values()
            for a in step.get("actions") or []
            if a["type"] == "enable-steps"
            for s in a["parameters"]["steps"]
        }
        now = self.clock()
        self.active = {name: now for name in self.steps if name not in enabled}
        for name in self.active:
            await self._instruct(name)
        self._ticker = asyncio.create_task(self._tick())

    async def _instruct(self, step: str) -> None:
        """Carry out the step's instructions that act on the DER (when the step becomes active, as the
        official runner shows them to the engineer then)."""
        if self.site is None:
            return
        for text in self.steps[step].get("instructions") or []:
            for pattern, action in INSTRUCTIONS:
                if re.match(pattern, text):
                    action(self)
                    self.instructed.append(f"{step}: {text}")
                    break

    async def finish(self, limit_s: float, settle_s: float = 10.0) -> Result:
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            async with self._lock:  # not while a step is firing (its actions may enable the next)
                if self.finished or not self.active:
                    break
            await asyncio.sleep(0.1)
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
        self.front.before = self.front.after = None
        if not self.finished and self.active:
            self.failures.append(f"timed out with steps still waiting: {sorted(self.active)}")
        # The official runner checks the criteria when the tester ends the test, which leaves the client
        # a moment after the last step (e.g. to PUT its DER documents): up to ``settle_s`` here, counted
        # from the end of the last control the procedure created (a tester waits for the control to run
        # its course before asking for its Completed Response, e.g. LOA-11's five consecutive controls).
        last_end = max((end for _, end in self.controls), default=0)
        settle = time.monotonic() + settle_s + max(0.0, last_end - self.clock())
        while True:
            problems = []
            for check in (self.spec.get("Criteria") or {}).get("checks") or []:
                problem = await self._check(check)
                if problem:
                    problems.append(f"criteria {check['type']}: {problem}")
            if not problems or time.monotonic() > settle or self.failures:
                break
            await asyncio.sleep(0.2)
        self.failures += problems
        return Result(
            self.procedure, not self.failures, len(self.steps), list(self.completed), list(self.failures),
            time.monotonic() - self._started,
        )  # fmt: skip

    # ------------------------------------------------------------------------------------ events

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            async with self._lock:
                now = self.clock()
                for name, since in list(self.active.items()):
                    event = self.steps[name]["event"]
                    if event["type"] != "wait":
                        continue
                    if now - since >= scaled(event["parameters"]["duration_seconds"]):
                        await self._fire(name)

    async def _before(self, method: str, path: str, body: bytes) -> None:
        await self._request(method, path, first=False)

    async def _after(self, method: str, path: str, body: bytes, status: int) -> None:
        if status < 400:
            await self._request(method, path, first=True)

    async def _request(self, method: str, path: str, *, first: bool) -> None:
        async with self._lock:
            at = self.clock()
            matching = []
            for name, since in self.active.items():
                event = self.steps[name]["event"]
                params = event.get("parameters") or {}
                if event["type"] != f"{method}-request-received" or since > at:
                    continue
                if bool(params.get("serve_request_first")) != first:
                    continue
                pattern = _endpoint_pattern(params["endpoint"], [p[2] for p in self.programs])
                if pattern is not None and re.fullmatch(pattern, path):
                    matching.append(name)
            for name in matching:
                checks = self.steps[name]["event"].get("checks") or []
                if all([not await self._check(c) for c in checks]):
                    await self._fire(name)

    async def _fire(self, name: str) -> None:
        if name not in self.active:
            return
        self.completed.append(name)
        del self.active[name]  # a step fires once; enable-steps may arm it again
        for action in self.steps[name].get("actions") or []:
            try:
                await self._act(action)
            except Exception as exc:  # an action the server refused: the procedure fails, visibly
                self.failures.append(f"step {name}: action {action['type']}: {type(exc).__name__}: {exc}")

    # ----------------------------------------------------------------------------------- actions

    async def _names(self) -> dict[str, float]:
        names: dict[str, float] = {"now": self.clock()}
        hour = int(names["now"]) // 3600 * 3600
        names.update(now_hour=hour, now_day=int(names["now"]) // 86400 * 86400)
        docs = await self.admin.site_der_documents(self.lfdi)
        for doc in docs.values():
            for key, value in vars(doc).items():
                if hasattr(value, "to_watts"):
                    names[key] = value.to_watts()
                elif isinstance(number := _number(value), int | float) and not isinstance(number, bool):
                    names[key] = number
        if "setMaxW" in names:
            names["maxExportW"] = names.get("setMaxDischargeRateW", names["setMaxW"])
            names["maxImportW"] = names.get("setMaxChargeRateW", names["setMaxW"])
        return names

    async def _ensure_program(self, primacy: int | None = None) -> str:
        """The procedure's first program (created on first use, like the official server's derp 1)."""
        if not self.programs:
            if primacy is None:  # the first create-der-program's primacy, if the procedure has one
                made = [a for a in _walk(self.spec)[0] if a["type"] == "create-der-program"]
                primacy = made[0]["parameters"]["primacy"] if made else 0
            key = f"cactus-{len(self.programs) + 1}"
            pid = await self.admin.create_program(key, primacy=primacy)
            self.programs.append((key, primacy, pid))
        return self.programs[0][0]

    async def _act(self, action: dict[str, Any]) -> None:
        kind, params = action["type"], dict(action.get("parameters") or {})
        if kind == "enable-steps":
            now = self.clock()
            for step in params["steps"]:
                if step not in self.active:
                    self.active[step] = now
                    await self._instruct(step)
        elif kind == "remove-steps":
            for step in params["steps"]:
                self.active.pop(step, None)
        elif kind == "finish-test":
            self.finished = True
            if params.get("fail_message"):
                self.failures.append(f"finish-test: {params['fail_message']}")
        elif kind == "set-comms-rate":
            for key, seconds in params.items():
                await self.admin.set_rate(_RATES[key], max(1, round(scaled(seconds))))
        elif kind == "register-end-device":  # out of band, before the gateway starts (immediate_start)
            await self.admin.register_site(self.lfdi, pin=pin_with_check_digit(params["registration_pin"]))
        elif kind == "create-der-program":
            primacy = params["primacy"]
            if len(self.programs) == 1 and self.programs[0][1] == primacy and not self._first_claimed:
                self._first_claimed = True  # the program start() made for the first create-der-program
                return
            key = f"cactus-{len(self.programs) + 1}"
            self.programs.append((key, primacy, await self.admin.create_program(key, primacy=primacy)))
        elif kind == "create-der-control":
            await self._create_control(params)
        elif kind == "set-default-der-control":
            names = await self._names()
            values = {k: evaluate(v, names) for k, v in params.items()}
            limits = _limits(values)
            # no limit at all (``{}``), or cancelled: an empty DERControlBase, which is valid 2030.5
            base = build_control_base(**limits) if limits and not values.get("cancelled") else _empty_base()
            program = await self._ensure_program()
            grad = values.get("setGradW")
            await self.admin.set_default_control(program, self.target, base=base, set_grad_w=grad)
        elif kind == "cancel-active-der-controls":
            now = self.clock()
            for mrid, end in self.controls:
                if end > now:
                    await self.admin.cancel_control(mrid)
        else:
            raise AssertionError(f"action {kind} is not supported (unsupported() should have said so)")

    async def _create_control(self, params: dict[str, Any]) -> None:
        names = await self._names()
        values = {k: evaluate(v, names) for k, v in params.items()}
        program = await self._ensure_program()
        if "primacy" in values:
            program = next((k for k, p, _ in self.programs if p == values["primacy"]), program)
        duration = max(1, round(scaled(values["duration_seconds"])))
        # 2030.5 times are whole seconds. Rounded up, so that a compressed control (a 60 s control lasts 3 s)
        # loses none of its duration to the rounding (ALL-21's first control, created at ``now``).
        start = math.ceil(values["start"])
        ramp = values.get("ramp_time_seconds")
        limits = _limits(values)
        fixed = values.get("opModFixedW")  # percent of setMaxW; 2030.5 SignedPerCent is hundredths
        base = build_control_base(
            **limits, connect=values.get("opModConnect"), energize=values.get("opModEnergize"),
            ramp_tms=round(ramp * 100) if ramp is not None else None,
            fixed_w_percent=round(fixed * 100) if fixed is not None else None,
        )  # fmt: skip
        if "opModStorageTargetW" in values:  # CSIP-AUS v1.3: + discharge / - charge, W
            base.opModStorageTargetW = r.ActivePower.from_watts(float(values["opModStorageTargetW"]))
        if "pow_10_multipliers" in values:  # every ActivePower of the control with this multiplier (ALL-24)
            k = int(values["pow_10_multipliers"])
            for name in (*_POWERS, "opModStorageTargetW"):
                if (power := getattr(base, name)) is not None:
                    setattr(base, name, r.ActivePower(value=round(power.to_watts() / 10**k), multiplier=k))
        spread = values.get("randomizeStart_seconds")
        mrid = await self.admin.create_control(
            program, self.target, start=start, duration=duration, base=base,
            randomize_start=round(scaled(spread)) if spread is not None else None,
        )  # fmt: skip
        self.controls.append((mrid, start + duration))
        if "tag" in values:
            self.tags[values["tag"]] = mrid

    # ------------------------------------------------------------------------------------ checks

    async def _check(self, check: dict[str, Any]) -> str | None:
        """None if the check passes, else what is wrong."""
        kind, params = check["type"], check.get("parameters") or {}
        try:
            if kind == "all-steps-complete":
                ignored = set(params.get("ignored_steps") or [])
                missing = [s for s in self.steps if s not in self.completed and s not in ignored]
                return f"steps never completed: {missing}" if missing else None
            if kind == "end-device-contents":
                return await self._end_device(params)
            if kind in ("der-settings-contents", "der-capability-contents", "der-status-contents"):
                short = {"der-settings-contents": "derg", "der-capability-contents": "dercap",
                         "der-status-contents": "ders"}[kind]  # fmt: skip
                doc = (await self.admin.site_der_documents(self.lfdi)).get(short)
                if doc is None:
                    return f"no {short} PUT yet"
                return _document_problems(doc, params, await self._names())
            if kind == "response-contents":
                return await self._responses(params)
            if kind.startswith("readings-"):
                return await self._readings(kind, params)
            if kind in ("subscription-contents", "all-notifications-transmitted"):
                return await self._notifications(kind, params)
        except Exception as exc:  # a check that cannot be evaluated fails (with why)
            return f"{type(exc).__name__}: {exc}"
        raise AssertionError(f"check {kind} is not supported")

    async def _responses(self, params: dict[str, Any]) -> str | None:
        tag = params.get("subject_tag")
        if tag is not None and tag not in self.tags:
            return f"no control tagged {tag}"
        mrids = [self.tags[tag]] if tag is not None else [mrid for mrid, _ in self.controls]
        rows = []
        for mrid in mrids:
            stored = await self.admin.responses_for_control(mrid)
            rows += [(row["received_at"], mrid, row["status"]) for row in stored]
        rows.sort()
        status = params.get("status")
        exists = params.get("exists", True)
        if params.get("latest"):
            rows = rows[-1:]
        if params.get("all"):
            names = {mrid: f"control #{i + 1}" for i, (mrid, _) in enumerate(self.controls)}
            names.update({mrid: tag for tag, mrid in self.tags.items()})
            answered = {r[1] for r in rows if r[2] == status}
            missing = [names.get(mrid, mrid) for mrid in mrids if mrid not in answered]
            got = {names.get(mrid, mrid): [r[2] for r in rows if r[1] == mrid] for mrid in mrids}
            return f"controls without a Response status {status}: {missing} (got {got})" if missing else None
        found = [r for r in rows if status is None or r[2] == status]
        if bool(found) != exists:
            what = "missing" if exists else "present"
            return f"Response status {status} {what} (got {[r[2] for r in rows]})"
        return None

    async def _end_device(self, params: dict[str, Any]) -> str | None:
        import sqlalchemy as sa

        from server.store import sites

        async with self.admin.store.read() as conn:
            row = (await conn.execute(sa.select(sites).where(sites.c.lfdi == self.lfdi.upper()))).first()
        if row is None:
            return "no EndDevice"
        if params.get("has_connection_point_id") and not row.nmi:
            return "no ConnectionPoint (NMI) recorded for the EndDevice"
        if "deviceCategory_anyset" in params:
            mask = int(str(params["deviceCategory_anyset"]), 16)
            if not int(row.device_category or "0", 16) & mask:
                return f"deviceCategory {row.device_category} has none of the bits {mask:#x}"
        return None

    async def _notifications(self, kind: str, params: dict[str, Any]) -> str | None:
        import sqlalchemy as sa

        from server.store import outbox, subscriptions

        async with self.admin.store.read() as conn:
            if kind == "all-notifications-transmitted":
                pending = (await conn.execute(sa.select(sa.func.count()).select_from(outbox))).scalar_one()
                return f"{pending} notifications still waiting for delivery" if pending else None
            hrefs = [row[0] for row in await conn.execute(sa.select(subscriptions.c.subscribed_href))]
        pattern = _endpoint_pattern(params["subscribed_resource"], [p[2] for p in self.programs])
        if pattern is None or not any(re.fullmatch(pattern, urlsplit(h).path) for h in hrefs):
            return f"no Subscription to {params['subscribed_resource']} (have {hrefs})"
        return None

    async def _readings(self, kind: str, params: dict[str, Any]) -> str | None:
        site_mup = m.mirror_point(self.lfdi, "site").mrid
        want = {
            "readings-site-active-power": (True, 38), "readings-der-active-power": (False, 38),
            "readings-site-reactive-power": (True, 63), "readings-der-reactive-power": (False, 63),
            "readings-voltage": (None, 29), "readings-der-stored-energy": (False, 72),
        }[kind]  # fmt: skip
        since = self.clock() - scaled(params["window_seconds"]) if "window_seconds" in params else None
        rows = [
            row for row in await self.admin.site_readings(self.lfdi, limit=100000)
            if row["reading_type"].uom == want[1]
            and (want[0] is None or (row["mup_mrid"] == site_mup) == want[0])
            and (since is None or row["time_start"] >= since)
        ]  # fmt: skip
        if len(rows) < params.get("minimum_count", 1):
            return f"{len(rows)} readings of uom {want[1]}, want at least {params.get('minimum_count', 1)}"
        for row in rows:
            value = row["value"] * 10.0 ** (row["reading_type"].powerOfTenMultiplier or 0)
            if "minimum_level" in params and value < params["minimum_level"]:
                return f"reading {value} below {params['minimum_level']}"
            if "maximum_level" in params and value > params["maximum_level"]:
                return f"reading {value} above {params['maximum_level']}"
        return None


# ------------------------------------------------------------------------------ the engineer's hands


def _inverters(run: ProcedureRun, kind: str | None = None) -> list[str]:
    return [d.name for d in run.site.config.devices if d.kind in ((kind,) if kind else ("pv", "battery"))]


def _isolate(*, isolated: bool, kind: str | None = None) -> Callable[[ProcedureRun], None]:
    """Open / close the AC isolator of every inverter (of ``kind``)."""

    def act(run: ProcedureRun) -> None:
        for name in _inverters(run, kind):
            run.site.isolate(name, isolated)

    return act


def _stop_generating(run: ProcedureRun) -> None:
    """No source for the PV (its panels give 0 W), batteries isolated: the DER neither generates nor
    consumes active power."""
    for name in _inverters(run, "pv"):
        run._sources[name] = run.site.physics.units[name].available_w
        run.site.set_pv_source(name, 0.0)
    for name in _inverters(run, "battery"):
        run.site.isolate(name, True)


def _resume_generating(run: ProcedureRun) -> None:
    for name, watts in run._sources.items():
        run.site.set_pv_source(name, watts)
    for name in _inverters(run, "battery"):
        run.site.isolate(name, False)


def _power_off_one(run: ProcedureRun) -> None:
    """MUL-01: one DER off, "priority to DER capable of generation": the (first) PV inverter."""
    run.site.isolate((_inverters(run, "pv") or _inverters(run))[0], True)


#: Instructions of the procedures that act on the DER (matched from the start of the text) and how the
#: simulated site carries them out.
INSTRUCTIONS: list[tuple[str, Callable[[ProcedureRun], None]]] = [
    (r"Disconnect all DER from the grid", _isolate(isolated=True)),
    (r"Reconnect all DER to the grid", _isolate(isolated=False)),
    (r"Stop DER from generating or consuming active power", _stop_generating),
    (r"Re-enable ability of DER to generate or consume active power", _resume_generating),
    (r"Power off one DER", _power_off_one),
    (r"Power off (off )?(the )?remaining DER", _isolate(isolated=True)),
]


def _limits(values: dict[str, Any]) -> dict[str, float]:
    names = {"opModImpLimW": "import_limit_w", "opModExpLimW": "export_limit_w",
             "opModGenLimW": "generation_limit_w", "opModLoadLimW": "load_limit_w"}  # fmt: skip
    return {ours: float(values[theirs]) for theirs, ours in names.items() if theirs in values}


def _empty_base() -> Any:
    return r.DERControlBase()


def _document_problems(doc: Any, params: dict[str, Any], names: dict[str, float]) -> str | None:
    """The der-*-contents parameters: ``field: true`` (is set), ``field: value``, ``field_set``/``_unset``
    (hex bit masks), ``genConnectStatus_bitN``; values may be ``$(this ...)`` expressions."""
    for key, expected in params.items():
        if key.endswith(("_set", "_unset")):
            field_name, mode = key.rsplit("_", 1)
            value = _bits(getattr(doc, field_name, None))
            mask = int(str(expected), 16)
            if mode == "set" and value & mask != mask:
                return f"{field_name} {value:#x}: bits {mask:#x} not all set"
            if mode == "unset" and value & mask:
                return f"{field_name} {value:#x}: bits {mask:#x} not all clear"
            continue
        bit = re.fullmatch(r"(\w+)_bit(\d+)", key)
        if bit:
            value = _bits(getattr(doc, bit.group(1), None))
            if bool(value >> int(bit.group(2)) & 1) != bool(expected):
                return f"{bit.group(1)} bit {bit.group(2)} is not {expected}"
            continue
        value = getattr(doc, key, None)
        number = _number(value)
        if isinstance(number, str) and isinstance(expected, int) and not isinstance(expected, bool):
            number = int(number, 16)  # a HexBinary bitmap (alarmStatus) against a number
        if isinstance(expected, bool):
            if (value is not None) != expected:
                return f"{key} {'missing' if expected else 'present'}"
        elif isinstance(expected, str) and expected.startswith("$("):
            if number is None or not evaluate(expected, names, this=number):
                return f"{key} = {number} fails {expected}"
        elif number != expected:
            return f"{key} = {number}, want {expected}"
    return None


def _number(value: Any) -> float | None:
    if value is None:
        return None
    if hasattr(value, "value") and hasattr(value, "multiplier"):
        return value.value * 10.0 ** (value.multiplier or 0)
    if hasattr(value, "displacement"):  # PowerFactor
        return value.displacement * 10.0 ** (value.multiplier or 0)
    if hasattr(value, "value"):
        return _number(value.value)
    return value


def _bits(value: Any) -> int:
    if value is None:
        return 0
    if hasattr(value, "value"):
        value = value.value
    if isinstance(value, str):
        return int(value, 16)
    return int(value)


def pin_with_check_digit(pin: int) -> int:
    """The procedures' PINs are given without their check digit (11111 -> 111115): the digit that makes
    the sum of all digits divisible by 10, as for an SFDI (IEEE 2030.5-2018 §6.3.3)."""
    return pin * 10 + (-sum(int(d) for d in str(pin))) % 10


def registers_in_band(proc: dict[str, Any]) -> bool:
    """The procedure waits for the client to POST its EndDevice (ALL-02), or checks what only the client
    can declare in that POST (DRA-01: EndDevice.deviceCategory) without registering it out of band first:
    nothing is registered before the gateway starts."""
    actions, events, checks = _walk(proc)
    if any(a["type"] == "register-end-device" for a in actions):
        return False
    declares = any(
        c["type"] == "end-device-contents" and "deviceCategory_anyset" in (c.get("parameters") or {})
        for c in checks
    )
    return declares or any(
        e.get("type") == "POST-request-received" and (e.get("parameters") or {}).get("endpoint") == "/edev"
        for e in events
    )


def time_limit(proc: dict[str, Any]) -> float:
    """Wall seconds a run may take: every wait and control duration of the procedure, scaled, + 30 s."""
    actions, events, _ = _walk(proc)
    waits = [e for e in events if e["type"] == "wait"]
    seconds = sum(e["parameters"]["duration_seconds"] for e in waits)
    seconds += sum(
        a["parameters"].get("duration_seconds", 0) for a in actions if a["type"] == "create-der-control"
    )
    return 30 + scaled(seconds)


def needs_storage(proc: dict[str, Any]) -> bool:
    """Load / storage classes, multiple DER (M: a PV and a battery behind one EndDevice), and a procedure
    sending or asking for opModFixedW (DERCapability modesSupported / DERSettings modesEnabled bit 7: DRA-01,
    the DR-D/G/L procedures): in this gateway a battery is the DER that takes a fixed active power
    setpoint."""
    actions, _, checks = _walk(proc)
    masks = ("modesSupported_set", "modesEnabled_set")
    wanted = [(c.get("parameters") or {}).get(key, "0") for c in checks for key in masks]
    fixed_w = any(int(str(bits), 16) & 0x80 for bits in wanted) or any(
        "opModFixedW" in (a.get("parameters") or {}) for a in actions
    )
    classes = set(proc.get("Classes") or [])
    return fixed_w or bool(classes & {"L", "S-L", "DER-L", "STO", "DER-STO", "M"})


def storage_only(proc: dict[str, Any]) -> bool:
    """The procedure's DER is a storage system on its own: its checks tie the charge / discharge rate to
    the DER's apparent power rating (STO-03: ``setMaxChargeRateW == setMaxVA``), which a PV + battery
    site's DER cannot meet. The site then has a battery and no PV."""
    return any(
        "setMaxVA" in str(value) and key in ("setMaxChargeRateW", "setMaxDischargeRateW")
        for c in _walk(proc)[2]
        for key, value in (c.get("parameters") or {}).items()
    )


def subscribes(proc: dict[str, Any]) -> bool:
    return any(c in ("S-L", "S-G") for c in proc.get("Classes") or [])
