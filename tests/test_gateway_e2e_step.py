"""End to end over real mutual TLS: a tighter step inside a 1-hour DOE keeps the hour around it.

Issue 13, must show: the server publishes three non-overlapping DERControls (the hour before the step,
the step, the hour after) and marks the original superseded (IEEE 2030.5-2018 §12.1.3.1); our gateway, on
a simulated site over Modbus TCP, exports within the hour's limit before and after the step and within the
step's limit during it. The step is 30 s here, not 90 s: the semantics do not depend on its length (the
store-level test in test_schedule.py uses 90 s), and the suite must stay fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import sqlalchemy as sa

from certs.tls import client_ssl_context
from sep2 import resources as r
from server.store import build_control_base
from server.store.schema import outbox
from tests.test_gateway_runtime_harness import Lab, tolerance, wait_until
from tests.test_server_harness import Client

pytest_plugins = ["tests.test_gateway_runtime_harness"]

STEP_S = 30
HOUR_W, STEP_W = 2000, 800


class LoopWatch:
    """The longest the event loop (server, gateway and simulator share it here) went without running us,
    and the metered export's history (each move of more than 50 W), for a failure message."""

    def __init__(self, export_w: Any) -> None:
        self.worst, self.worst_at = 0.0, 0.0
        self.export_w = export_w
        self.exports: list[tuple[float, float]] = []
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.05)
            lag = time.monotonic() - before - 0.05
            if lag > self.worst:
                self.worst, self.worst_at = lag, time.time()
            export = self.export_w()
            if not self.exports or abs(export - self.exports[-1][1]) > 50:
                self.exports = [*self.exports[-59:], (time.time(), export)]

    def __str__(self) -> str:
        exports = ", ".join(f"{at:.2f}: {w:.0f}" for at, w in self.exports)
        return f"longest event-loop stall {self.worst:.2f} s (ended {self.worst_at:.2f}); export W {exports}"


def awaiting(task: asyncio.Task[Any]) -> str:
    """The chain of coroutines a task waits in, outermost first (``Task.get_stack`` gives only the
    outermost frame of a suspended coroutine)."""
    where, coro = [], task.get_coro()
    while coro is not None and len(where) < 12:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is None:
            break
        where.append(f"{frame.f_code.co_filename.rsplit('/', 1)[-1]}:{frame.f_code.co_name}:{frame.f_lineno}")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    if coro is not None:  # what the innermost coroutine awaits (a Future, usually)
        where.append(type(coro).__name__ if where else repr(coro)[:80])
    return " > ".join(where)


def task_stacks() -> str:
    """Where every other task of the loop waits (server, gateway and simulator), for a failure message."""
    mine = asyncio.current_task()
    return "\n".join(sorted(f"  {t.get_name()}: {awaiting(t)}" for t in asyncio.all_tasks() if t is not mine))


async def server_state(lab: Lab) -> str:
    """The server's side of a failure: its notification sender and the outbox rows."""
    sender = lab.server.sender
    assert sender is not None
    async with lab.server.store.engine.connect() as conn:
        rows = (await conn.execute(sa.select(outbox))).all()
    return (
        f"sender tasks {len(sender._tasks)}, in flight {sender.in_flight}, "
        f"unresponsive {sender.unresponsive}; "
        f"outbox {[tuple(row) for row in rows]}; now {time.time():.2f}\ntasks:\n{task_stacks()}"
    )


def held(gw: Any, watch: LoopWatch) -> str:
    """What the gateway holds, for a failure message (this test failed now and then in CI: issue 12)."""
    client = gw.client
    programs = {
        mrid: (state.doc.DERControlListLink and state.doc.DERControlListLink.href, state.notified)
        for mrid, state in client._programs.items()
    }
    states = gw.controller.engine.evaluate(int(client.now())).states
    return (
        f"export limit {gw.decision.limits.export_w}; events {states}; status {client.status}; "
        f"subscriptions {client._subscriptions}; programs (list, notifications) {programs}; "
        f"jobs {client._due}; {watch}; now {time.time():.2f}"
    )


async def test_step_inside_the_hour_is_published_as_three_pieces_and_followed(lab: Lab, caplog: Any) -> None:
    caplog.set_level(logging.DEBUG, logger="derlink")  # on a failure: every notification sent and received
    watch = LoopWatch(lab.export_w)
    try:
        await _step_inside_the_hour(lab, watch)
    finally:
        watch.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch.task


async def _step_inside_the_hour(lab: Lab, watch: LoopWatch) -> None:
    gw = await lab.gateway()
    assert gw.client is not None
    await gw.client.wait_ready(10)
    # Uncontrolled and steady for longer than the simulated inverter takes to act on a setpoint (0.1 s),
    # so that no write from start-up (its comms-loss limit, then its release) is still to take effect.
    steady_since: list[float] = []

    def steady_uncontrolled() -> bool:
        if lab.export_w() <= 4000 or gw.decision.limits.export_w.value != 10000:
            steady_since.clear()
            return False
        if not steady_since:
            steady_since.append(time.monotonic())
        return time.monotonic() - steady_since[0] >= 0.5

    await wait_until(steady_uncontrolled, 5, "uncontrolled export, steady")

    hour_start = int(time.time()) + 1
    hour = await lab.admin.create_control(
        "doe", lab.target, start=hour_start, duration=3600, base=build_control_base(export_limit_w=HOUR_W)
    )

    # Within the hour's limit because of the hour's DOE: a failing CI run met the export condition 40 ms
    # after the DOE was created, before its Notification had left the server (the export was low for
    # another reason; the export history in the report shows why the next time).
    def within_the_hour() -> bool:
        return lab.export_w() <= HOUR_W + tolerance(HOUR_W) and gw.decision.limits.export_w.value == HOUR_W

    try:
        await wait_until(within_the_hour, 8, "export within the hour, under the hour's DOE")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {held(gw, watch)}\n{await server_state(lab)}") from None
    step_start = int(time.time()) + 5
    step = await lab.admin.create_control(
        "doe", lab.target, start=step_start, duration=STEP_S, base=build_control_base(export_limit_w=STEP_W)
    )

    # The site's DERControlList, read as the site reads it: three live pieces and the superseded original.
    ident = lab.pki.gateway
    site = Client(
        lab.server.base_url,
        client_ssl_context(ident.chain_path, ident.key_path, lab.pki.paths.ca_chain, check_hostname=False),
        lab.lfdi,
    )
    try:
        site_id = await lab.admin.site_id(lab.lfdi)
        programs = (await site.get(f"/edev/{site_id}/fsa/0/derp?l=10")).doc(r.DERProgramList)
        doe_href = next(p.href for p in programs.DERProgram if p.primacy == 10)
        listing = (await site.get(f"{doe_href}/derc?l=10")).doc(r.DERControlList)
    finally:
        await site.close()
    live = [c for c in listing.DERControl if c.EventStatus.currentStatus in (0, 1)]
    spans = [(c.interval.start, c.interval.start + c.interval.duration) for c in live]
    assert len(live) == 3, spans
    assert spans[1] == (step_start, step_start + STEP_S) and live[1].mRID == step
    assert spans[0][1] == step_start and spans[2] == (step_start + STEP_S, hour_start + 3600)
    assert [c.DERControlBase.opModExpLimW.to_watts() for c in live] == [HOUR_W, STEP_W, HOUR_W]
    (original,) = [c for c in listing.DERControl if c.mRID == hour]
    assert original.EventStatus.currentStatus == 4

    # Before the step: the hour's limit, not the step's (PV is curtailed to the limit, not below it).
    while time.time() < step_start - 0.5:
        assert STEP_W + tolerance(STEP_W) < lab.export_w() <= HOUR_W + tolerance(HOUR_W), held(gw, watch)
        await wait_until(lambda: True, 0.2)
    # During: within the step's limit within 5 s of its start, and held until its end.
    met = await wait_until(lambda: lab.export_w() <= STEP_W + tolerance(STEP_W), 8, "export within the step")
    assert met - step_start <= 5.0
    assert step in gw.decision.limits.export_w.detail
    while time.time() < step_start + STEP_S - 0.5:
        assert lab.export_w() <= STEP_W + tolerance(STEP_W)
        await wait_until(lambda: True, 0.2)
    # After: back to the hour's limit (the piece after the step), never above it.
    await wait_until(
        lambda: lab.export_w() > STEP_W + tolerance(STEP_W), 8, "export back at the hour's limit"
    )
    assert gw.decision.limits.export_w.value == HOUR_W and live[2].mRID in gw.decision.limits.export_w.detail
    for _ in range(10):
        assert lab.export_w() <= HOUR_W + tolerance(HOUR_W)
        await wait_until(lambda: True, 0.2)
