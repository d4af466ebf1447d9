"""The public CSIP-AUS client test procedures against our gateway (issue 11, "Must show": read the client
procedures of cactus-test-definitions as the gateway's behavioural spec and test the gateway against
each one that applies).

The procedures are read at test time from the installed ``cactus-test-definitions`` (nothing copied);
``tests/client_procedures.py`` runs them: the real gateway runtime on a simulated SunSpec site, our
server behind a recording mutual-TLS front, the procedure's steps firing on the gateway's requests and
driving the server. Time is compressed 20-fold.

Honest coverage: ``test_every_client_procedure_is_run_or_says_why_not`` classifies every procedure of
the package (runnable by this runner, or the reasons it is not) and prints the table. CI runs
:data:`FAST`; ``DERLINK_CLIENT_PROCEDURES=all`` (or a comma-separated list) runs more.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import AsyncIterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from certs.tls import server_ssl_context
from gateway.config import settings_from_dict
from gateway.runtime import GatewayRuntime
from server.app import start_server
from simulators.config import default_site_config
from simulators.link_proxy import LinkProxy
from simulators.site import SimulatedSite
from tests.client_procedures import (
    CACTUS_PIN,
    ProcedureRun,
    Result,
    load_procedures,
    needs_storage,
    registers_in_band,
    storage_only,
    subscribes,
    time_limit,
    unsupported,
)
from tests.strict_server import StrictFront
from tests.test_gateway_runtime_harness import Lab, Pki, _server_config, wait_until

pytest_plugins = ["tests.test_gateway_runtime_harness"]

NMI = "4102345678"
#: CI's set, one or more of each category, about 55 s: discovery (PIN accepted) and PIN refused
#: (Registration), an active export and import limit and, by subscription, a de-energise superseded by an
#: energise (Control), a cancelled export control falling back to the default export limit, with its
#: Responses (DER), the DER documents (Monitoring). The full set (DERLINK_CLIENT_PROCEDURES=all) adds the
#: whole Response life cycle (ALL-18) and the long default-control runs (GEN-03 ...).
FAST = ("ALL-01", "ALL-03-REJ", "GEN-01", "LOA-01", "ALL-15", "GEN-09", "ALL-09")


@cache
def procedures() -> dict[str, dict[str, Any]]:
    return load_procedures()


def selected() -> list[str]:
    wanted = os.environ.get("DERLINK_CLIENT_PROCEDURES", "")
    if wanted == "all":
        return sorted(p for p, spec in procedures().items() if not unsupported(spec))
    return [p.strip() for p in wanted.split(",") if p.strip()] or list(FAST)


def test_every_client_procedure_is_run_or_says_why_not(capsys: pytest.CaptureFixture[str]) -> None:
    procs = procedures()
    assert len(procs) > 60, "the package's client procedures were not found"
    runnable = sorted(p for p, spec in procs.items() if not unsupported(spec))
    with capsys.disabled():
        print(f"\nCSIP-AUS client procedures: {len(runnable)} of {len(procs)} runnable here")
        for name, spec in sorted(procs.items()):
            reasons = unsupported(spec)
            print(f"  {name:11} {','.join(spec.get('Classes') or []):12} "
                  f"{'runnable' if not reasons else 'not run: ' + '; '.join(reasons)}")  # fmt: skip
    assert set(FAST) <= set(runnable)
    # the categories that are the gateway's job are all represented, in the full set and in CI's
    jobs = {"Registration", "Control", "DER", "Monitoring"}
    assert jobs <= {procs[p]["Category"] for p in runnable}
    assert jobs <= {procs[p]["Category"] for p in FAST}


@contextlib.asynccontextmanager
async def procedure_lab(
    tmp: Path, pki: Pki, *, storage: bool, pv: bool = True
) -> AsyncIterator[tuple[Lab, StrictFront]]:
    """Our server (proxy mode) behind a recording mutual-TLS front, a link proxy, a simulated site."""
    server = await start_server(
        _server_config(pki, tmp / "server", tls=False, trusted_proxies=["127.0.0.1"])
    )
    paths = pki.paths
    front = StrictFront(
        server.base_url,
        server_ssl_context(paths.server_chain, paths.server_key, paths.ca_chain),
        strict=False,
    )
    await front.start()
    proxy = LinkProxy(front.port)
    await proxy.start()
    sim = SimulatedSite(
        default_site_config(pv_available_w=5000.0, load_w=500.0, battery=storage, pv=pv,
                            response_delay_s=0.1, ramp_time_s=0.0)
    )  # fmt: skip
    await sim.start()
    lab = Lab(tmp, pki, server, proxy, sim)
    try:
        yield lab, front
    finally:
        for runtime in lab.runtimes:
            with contextlib.suppress(Exception):
                await runtime.stop()
        await proxy.stop()
        await front.stop()
        await server.stop()
        await sim.stop()


async def run_procedure(tmp: Path, pki: Pki, name: str) -> tuple[Result, str | None]:
    """Run one procedure; returns its result and the gateway client's state at the end."""
    spec = procedures()[name]
    assert not unsupported(spec), unsupported(spec)
    lab_kind = {"storage": needs_storage(spec), "pv": not storage_only(spec)}
    async with procedure_lab(tmp, pki, **lab_kind) as (lab, front):
        run = ProcedureRun(name, spec, lab.admin, front, lab.lfdi, site=lab.sim)
        await run.start()
        mode = "subscribe" if subscribes(spec) else "poll"
        data = lab.site_toml(server={"mode": mode, "pin": CACTUS_PIN})
        data["server"]["nmi"] = NMI  # the installer's record of the site; ALL-03 checks the server has it
        if registers_in_band(spec):  # ALL-02: the gateway registers itself; no PIN was given to it
            data["server"].update(register_inband=True)
            del data["server"]["pin"]
        gw = GatewayRuntime(settings_from_dict(data, tmp))
        lab.runtimes.append(gw)
        await gw.start()
        await run.begin_when_ready(30)
        result = await run.finish(limit_s=time_limit(spec))
        assert gw.client is not None
        with contextlib.suppress(AssertionError):  # a procedure may end before discovery does
            await wait_until(lambda: gw.client.status.state in ("running", "registration_failed"), 10)
        return result, gw.client.status.state


@pytest.mark.parametrize("name", selected())
async def test_client_procedure(name: str, tmp_path: Path, gw_pki: Pki) -> None:
    result, client_state = await run_procedure(tmp_path, gw_pki, name)
    if os.environ.get("DERLINK_CLIENT_PROCEDURES_OUT"):  # one JSON line per procedure (the README table)
        line = json.dumps({**dataclasses.asdict(result), "client_state": client_state}) + "\n"
        with Path(os.environ["DERLINK_CLIENT_PROCEDURES_OUT"]).open("a") as out:  # noqa: ASYNC230
            out.write(line)
    assert result.passed, f"{name}: {result.failures} (steps completed: {result.completed})"
    assert result.completed, "at least one step fired"
    if name == "ALL-03-REJ":
        # The procedure's instruction, checked here: the client stops talking to a server whose
        # Registration PIN is not its own.
        assert client_state == "registration_failed"
    else:
        assert client_state == "running"


async def test_a_procedure_that_the_gateway_fails_is_reported_failed(tmp_path: Path, gw_pki: Pki) -> None:
    """The runner can fail: in ALL-01 a gateway configured with another PIN stops at the Registration
    (IEEE 2030.5-2018 §6.3.3 / CSIP-AUS: the PIN must match) and never reads the DERList."""
    spec = procedures()["ALL-01"]
    async with procedure_lab(tmp_path, gw_pki, storage=False) as (lab, front):
        run = ProcedureRun("ALL-01", spec, lab.admin, front, lab.lfdi)
        await run.start()
        gw = await lab.gateway(server={"mode": "poll", "pin": 222228})
        assert gw.client is not None
        await wait_until(lambda: gw.client.status.state == "registration_failed", 10, "PIN refused")
        result = await run.finish(limit_s=8)
    assert not result.passed and "GET-DER" not in result.completed
    assert "GET-DCAP" in result.completed  # the steps before the Registration did fire
