"""Interop with a client nobody here wrote: Project Satori's py20305 against our utility server.

py20305 runs unmodified, in this event loop, through its own runner (``py20305.cli._run_client``, what
``python -m py20305`` runs) with its no-hardware ``print_demo`` connector. It presents a certificate made by
``derlink certs device`` to our server over real mutual TLS on 127.0.0.1. The operator side goes through
our store/admin API only: a DefaultDERControl and a scheduled DOE DERControl (responseRequired) that starts
a few seconds after py20305 connects; the site is either pre-registered out of band (with PIN, NMI and a
group) or left for py20305 to register in band with a POST to /edev. We then check both ends: what
py20305 wrote to its connector (the default limits, the DOE limits while the event is active, the default
again afterwards) and what our store holds (the site, last contact, Responses received/started/completed,
the MirrorUsagePoint with its readings, the four DER documents). Every request py20305 made must have
been accepted.

Two py20305 settings are needed against any CSIP-AUS server; they work around py20305 deviations, not
server bugs:

* ``server.server_2018_compat: true`` — by default py20305 writes the IEEE 2030.5-2023 wire format
  (``schemaVer`` on every top-level element, ``subscribable`` on MirrorUsagePoint). CSIP-AUS is built on
  2030.5-2018 (csipaus-ext.xsd imports sep2_schema_2018.xsd), where neither attribute exists, so a
  validating CSIP-AUS server rejects those bodies.
* py20305 detects CSIP-AUS from the dcap body into ``DiscoveredState.csip_aus_mode`` but never copies the
  flag to ``Sep2Client.csip_aus_mode``, which is what its DER resource manager reads. Its DERCapability
  then lacks ``csipaus:doeModesSupported`` (minOccurs=1 in csipaus-core.xsd) and is rightly refused. We set
  the flag on the transport as soon as the runner has built the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from py20305 import cli as py20305_cli
from py20305.config import ClientConfig

from server.app import RunningServer, start_server
from server.config import ServerConfig
from server.store import build_control_base, clients, mups, sites

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_LOGGER = "py20305.connectors.print_demo"
POST_RATE = 5  # seconds between py20305's telemetry posts (server postRate and client setting)
DOE_LEAD = 6  # the DOE starts this many seconds after it is created (py20305 discovers it in ~1-2 s)
DOE_DURATION = 3
DEADLINE = 30.0  # a run that has not produced everything by then has failed

DEFAULT_EXPORT_W = 5000
DEFAULT_GENERATION_W = 7000
DOE_EXPORT_W = 1500
DOE_IMPORT_W = 12000


def derlink_cli(*args: str) -> str:
    """Run the real ``derlink`` command (as an operator would) and return its stdout."""
    done = subprocess.run(
        [sys.executable, "-m", "derlink", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@dataclass
class Identity:
    lfdi: str
    sfdi: int
    chain: Path
    key: Path
    ca_chain: Path


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("interop-pki")
    derlink_cli("certs", "init", "--dir", str(directory))
    return directory


def issue_device(pki_dir: Path, name: str) -> Identity:
    issued = json.loads(derlink_cli("certs", "device", "--dir", str(pki_dir), "--name", name, "--json"))
    assert issued["role"] == "device"
    return Identity(
        lfdi=issued["lfdi"],
        sfdi=issued["sfdi"],
        chain=Path(issued["chain"]),
        key=Path(issued["key"]),
        ca_chain=Path(issued["ca_chain"]),
    )


@pytest.fixture
async def server(pki_dir: Path, tmp_path: Path) -> AsyncIterator[RunningServer]:
    config = ServerConfig(
        data_dir=tmp_path / "data",
        port=0,
        admin_port=0,
        headend_enabled=False,
        cert_dir=pki_dir,
        poll_rate=10,  # py20305 clamps anything lower to 10 s
        post_rate=POST_RATE,
    )
    running = await start_server(config)
    try:
        yield running
    finally:
        await running.stop()


class Recorder(logging.Handler):
    """Collects log records of py20305 and of our access log while a run is in progress."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def demo_writes(self) -> list[tuple[str, dict[str, Any]]]:
        """(method, params) of every PrintDemoConnector control call, in order."""
        return [
            (rec.args[0], dict(rec.args[1]))  # type: ignore[index,arg-type]
            for rec in self.records
            if rec.name == DEMO_LOGGER and isinstance(rec.args, tuple) and len(rec.args) == 2
        ]

    def messages(self, logger_prefix: str, level: int = logging.DEBUG) -> list[str]:
        return [
            rec.getMessage()
            for rec in self.records
            if rec.name.startswith(logger_prefix) and rec.levelno >= level
        ]


@contextlib.contextmanager
def recording() -> Iterator[Recorder]:
    """Record py20305's logs and our access log at INFO for the duration of a run."""
    recorder = Recorder()
    loggers = [logging.getLogger("py20305"), logging.getLogger("derlink.server.access")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(recorder)
        lg.setLevel(logging.INFO)
    try:
        yield recorder
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.removeHandler(recorder)
            lg.setLevel(level)


@dataclass
class Run:
    client: Any  # py20305's CsipClient, kept after shutdown to read its discovered state
    exit_code: int
    log: Recorder
    started: int
    # What py20305's discovered state held at any point of the run (a completed event leaves it).
    seen_controls: dict[str, set[str]] = field(default_factory=dict)  # program description -> mRIDs
    seen_defaults: set[str] = field(default_factory=set)  # programs with a DefaultDERControl


def _mrid_hex(m_rid: Any) -> str:
    value = m_rid.value if hasattr(m_rid, "value") else m_rid
    return value.hex().upper() if isinstance(value, bytes) else str(value).upper()


def snapshot_state(client: Any, run: Run) -> None:
    """Note the DefaultDERControls and DERControls py20305 currently holds."""
    for derp in list(client.state.der_programs.values()):
        name = str(derp.program.description)
        if derp.default_dercontrol is not None:
            run.seen_defaults.add(name)
        run.seen_controls.setdefault(name, set()).update(_mrid_hex(c.m_rid) for c in derp.der_controls)


def py20305_config(server: RunningServer, ident: Identity, pins: dict[str, int] | None) -> ClientConfig:
    return ClientConfig.model_validate(
        {
            "server": {"url": server.base_url, "server_2018_compat": True},
            "tls": {"client_cert": ident.chain, "client_key": ident.key, "ca_cert": ident.ca_chain},
            "devices": [{"type": "print_demo", "lfdi": ident.lfdi}],
            "telemetry": {"post_rate_seconds": POST_RATE},
            "registration_pins": pins or {},
            "history": {"enabled": False},
            "connection": {"retry_forever": False, "max_attempts": 1},
        }
    )


async def run_py20305(
    server: RunningServer,
    ident: Identity,
    monkeypatch: pytest.MonkeyPatch,
    log: Recorder,
    finished: Callable[[], Any],
    *,
    pins: dict[str, int] | None = None,
) -> Run:
    """Run py20305's own runner until ``finished()`` (async) is true or the deadline passes, then stop it."""
    built: dict[str, Any] = {}
    build_client = py20305_cli.build_client

    def build_client_in_csip_aus_mode(config: ClientConfig) -> tuple[Any, str]:
        client, own_lfdi = build_client(config)
        client.http.csip_aus_mode = True  # py20305 deviation workaround, see the module docstring
        built["client"] = client
        return client, own_lfdi

    monkeypatch.setattr(py20305_cli, "build_client", build_client_in_csip_aus_mode)
    started = server.store.clock()
    t0 = time.monotonic()
    stop = asyncio.Event()
    task = asyncio.create_task(
        py20305_cli._run_client(
            py20305_config(server, ident, pins), stop, asyncio.Event(), py20305_cli.ConnectionState()
        ),
        name="py20305",
    )
    run = Run(client=None, exit_code=-1, log=log, started=started)
    # Poll both ends while py20305 works (an asyncio.Event would need a hook inside py20305).
    while not task.done() and time.monotonic() - t0 < DEADLINE and not await finished():
        if "client" in built:
            snapshot_state(built["client"], run)
        await asyncio.sleep(0.25)
    stop.set()
    run.exit_code = await asyncio.wait_for(task, 20)
    run.client = built["client"]
    return run


# ------------------------------------------------------------------------------------------- store side


async def responses_of(server: RunningServer, mrid: str) -> list[dict[str, Any]]:
    return await server.store.admin.responses_for_control(mrid)


def mup_posts(log: Recorder) -> list[str]:
    """Access-log lines of py20305's MirrorUsagePoint POSTs (create, then readings to the MUP itself)."""
    return [line for line in log.messages("derlink.server.access") if "method=POST path=/mup" in line]


async def telemetry_complete(server: RunningServer, lfdi: str, log: Recorder) -> bool:
    """Two telemetry posts landed with readings stored, and all four DER documents were PUT."""
    readings = await server.store.admin.site_readings(lfdi)
    documents = await server.store.admin.site_der_documents(lfdi)
    return len(mup_posts(log)) >= 2 and bool(readings) and len(documents) == 4


def until_done(server: RunningServer, ident: Identity, mrid: str, log: Recorder) -> Callable[[], Any]:
    async def finished() -> bool:
        statuses = [r["status"] for r in await responses_of(server, mrid)]
        export = [p["exp_lim_w"] for m, p in log.demo_writes() if m == "update_exp_lim"]
        return (
            3 in statuses
            and DOE_EXPORT_W in export
            and export[-1] == DEFAULT_EXPORT_W  # default, DOE, default again
            and await telemetry_complete(server, ident.lfdi, log)
        )

    return finished


async def site_rows(server: RunningServer, lfdi: str) -> list[Any]:
    async with server.store.read() as conn:
        return (await conn.execute(sa.select(sites).where(sites.c.lfdi == lfdi))).all()


def scaled(reading: dict[str, Any]) -> float:
    return reading["value"] * 10 ** (reading["reading_type"].powerOfTenMultiplier or 0)


async def check_common(server: RunningServer, ident: Identity, run: Run, doe_mrid: str, site_id: int) -> None:
    """What both registration paths must show once py20305 has run through a DOE."""
    assert run.exit_code == 0
    # py20305 had nothing to complain about: no refused request, no unreadable body, no PIN mismatch.
    assert run.log.messages("py20305", logging.WARNING) == []

    # Every request py20305 made was accepted by our server.
    access = run.log.messages("derlink.server.access")
    assert access, "py20305 never reached the server"
    refused = [line for line in access if " status=4" in line or " status=5" in line]
    assert not refused, refused
    assert all(f"lfdi={ident.lfdi}" in line for line in access)

    # py20305 discovered our tree: its EndDevice, the DefaultDERControl and the scheduled DOE.
    state = run.client.state
    assert [edev.href for edev in state.end_devices.values()] == [f"/edev/{site_id}"]
    assert next(iter(state.end_devices.values())).lfdi.hex().upper() == ident.lfdi
    # Every program links a DefaultDERControl (issue 11 item 8); py20305 applies the highest-primacy one's,
    # which carries the modes the operator set on "Default limits" (the writes below prove it).
    assert run.seen_defaults == {"Default limits", "Dynamic operating envelope", "Emergency"}
    assert doe_mrid in run.seen_controls["Dynamic operating envelope"]
    assert f"New event {doe_mrid[:8].lower()}: state=scheduled" in " ".join(
        run.log.messages("py20305.events.processor")
    )

    # It applied the default, then the DOE while active, then the default again, with the right watts.
    writes = run.log.demo_writes()
    export = [params["exp_lim_w"] for method, params in writes if method == "update_exp_lim"]
    # py20305 writes the default once per program that carries it (each links one): repeats collapse.
    steps = [w for i, w in enumerate(export) if i == 0 or w != export[i - 1]]
    assert steps[:3] == [DEFAULT_EXPORT_W, DOE_EXPORT_W, DEFAULT_EXPORT_W], writes
    assert ("update_gen_lim", {"gen_lim_mode_enable": 1, "gen_lim_w": DEFAULT_GENERATION_W}) in writes
    assert ("update_imp_lim", {"imp_lim_mode_enable": 1, "imp_lim_w": DOE_IMPORT_W}) in writes
    doe_at = writes.index(("update_exp_lim", {"exp_lim_mode_enable": 1, "exp_lim_w": DOE_EXPORT_W}))
    imp_at = writes.index(("update_imp_lim", {"imp_lim_mode_enable": 1, "imp_lim_w": DOE_IMPORT_W}))
    assert abs(doe_at - imp_at) <= 2  # both limits of the DOE go out together

    # Responses: received, started, completed, from this site, in that order.
    responses = await responses_of(server, doe_mrid)
    assert [r["status"] for r in responses] == [1, 2, 3]
    assert {r["lfdi"] for r in responses} == {ident.lfdi}
    assert all(r["received_at"] >= run.started for r in responses)

    # Last contact is recorded for the certificate.
    await server.store.flush_contacts()
    async with server.store.read() as conn:
        client_row = (await conn.execute(sa.select(clients).where(clients.c.lfdi == ident.lfdi))).one()
        mup_rows = (await conn.execute(sa.select(mups).where(mups.c.site_id == site_id))).all()
    assert client_row.kind == "device"
    assert client_row.last_seen >= run.started

    # Telemetry: one MirrorUsagePoint (later posts update it rather than duplicate it), readings stored
    # with their ReadingType and time, and the demo connector's values in them.
    assert len(mup_rows) == 1
    readings = await server.store.admin.site_readings(ident.lfdi)
    assert {r["mup_mrid"] for r in readings} == {mup_rows[0].mrid}
    posts = mup_posts(run.log)
    assert len(posts) >= 2 and "path=/mup " in posts[0] and f"path=/mup/{mup_rows[0].id} " in posts[1], posts
    assert all(r["time_start"] >= run.started - 1 for r in readings)
    watts = [r for r in readings if r["reading_type"].uom == 38 and r["reading_type"].kind == 37]
    volts = [r for r in readings if r["reading_type"].uom == 29]
    assert watts and all(scaled(r) == 10000 for r in watts)  # PrintDemoConnector's W
    assert volts and all(scaled(r) == 240 for r in volts)  # and its V

    # The DER documents py20305 PUT, read back from the store.
    documents = await server.store.admin.site_der_documents(ident.lfdi)
    assert documents["dercap"].rtgMaxW.to_watts() == 15000
    assert documents["dercap"].doeModesSupported is not None
    assert documents["derg"].setMaxW.to_watts() == 10000
    assert documents["dera"].statWAvail.to_watts() == 10000
    assert documents["ders"].readingTime >= run.started - 1


# ------------------------------------------------------------------------------------------------ tests


async def test_py20305_out_of_band_registration(server, pki_dir, monkeypatch):
    """Operator pre-registers the site (PIN, NMI, group); py20305 finds it, verifies the PIN, never POSTs."""
    ident = issue_device(pki_dir, "satori-oob")
    admin = server.store.admin
    await admin.create_group("feeder-7")
    site_id = await admin.register_site(ident.lfdi, pin=246810, nmi="4102000777", groups_=["feeder-7"])
    await admin.set_default_control(
        "default",
        "all",
        base=build_control_base(export_limit_w=DEFAULT_EXPORT_W, generation_limit_w=DEFAULT_GENERATION_W),
    )
    doe_mrid = await admin.create_control(
        "doe",
        f"site:{ident.lfdi}",
        start=server.store.clock() + DOE_LEAD,
        duration=DOE_DURATION,
        base=build_control_base(export_limit_w=DOE_EXPORT_W, import_limit_w=DOE_IMPORT_W),
        response_required="03",
    )
    with recording() as log:
        run = await run_py20305(
            server,
            ident,
            monkeypatch,
            log,
            until_done(server, ident, doe_mrid, log),
            pins={ident.lfdi: 246810},
        )
    await check_common(server, ident, run, doe_mrid, site_id)
    assert [row.id for row in await site_rows(server, ident.lfdi)] == [site_id]
    assert not [line for line in log.messages("derlink.server.access") if "method=POST path=/edev " in line]
    assert any("Registration PIN verified" in m for m in log.messages("py20305.client.discovery"))
    assert not any("PIN mismatch" in m for m in log.messages("py20305"))


async def test_py20305_in_band_registration(server, pki_dir, monkeypatch):
    """No pre-registration: py20305 POSTs its EndDevice, our server creates the site, the rest follows."""
    ident = issue_device(pki_dir, "satori-inband")
    admin = server.store.admin
    assert await site_rows(server, ident.lfdi) == []
    await admin.set_default_control(
        "default",
        "all",
        base=build_control_base(export_limit_w=DEFAULT_EXPORT_W, generation_limit_w=DEFAULT_GENERATION_W),
    )
    doe_mrid = await admin.create_control(
        "doe",
        "all",
        start=server.store.clock() + DOE_LEAD,
        duration=DOE_DURATION,
        base=build_control_base(export_limit_w=DOE_EXPORT_W, import_limit_w=DOE_IMPORT_W),
        response_required="03",
    )
    with recording() as log:
        run = await run_py20305(server, ident, monkeypatch, log, until_done(server, ident, doe_mrid, log))
    rows = await site_rows(server, ident.lfdi)
    assert len(rows) == 1 and rows[0].sfdi == ident.sfdi
    assert rows[0].registered_time >= run.started
    posts = [line for line in log.messages("derlink.server.access") if "method=POST path=/edev " in line]
    assert len(posts) == 1 and "status=201" in posts[0]
    await check_common(server, ident, run, doe_mrid, rows[0].id)
