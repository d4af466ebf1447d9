"""Bulk DOE uploads: atomic (one bad row changes nothing and is named), streamed, visible in every site's
2030.5 DERControlList, and all-or-nothing across a kill -9 of the server mid-upload."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import sqlite3
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from sep2 import resources as r
from server.app import start_server
from server.headend.doe import DOE_ID_BASE, doe_mrid
from tests.test_headend import OPERATOR_TOKEN, TOKENS, Api
from tests.test_server_harness import Client, Pki, server_config

pytest_plugins = ["tests.test_server_harness"]

HEADER = "nmi,start,duration,import_limit_w,export_limit_w\n"


def _lfdi(n: int) -> str:
    return f"{n:040X}"


def _doe_csv(sites: int, intervals: int, start: int, export: int) -> str:
    return HEADER + "".join(
        f"41{s:08d},{start + k * 1800},1800,{8000 + k},{export}\n"
        for s in range(sites)
        for k in range(intervals)
    )


async def _stream(text: str, chunk: int = 256 * 1024) -> AsyncIterator[bytes]:
    data = text.encode()
    for i in range(0, len(data), chunk):
        yield data[i : i + chunk]


async def test_bad_row_changes_nothing_and_is_named(pki: Pki, tmp_path: Path) -> None:
    running = await start_server(server_config(pki, tmp_path / "data", headend_tokens=TOKENS))
    op = Api(f"http://127.0.0.1:{running.headend_port}", OPERATOR_TOKEN)
    try:
        sites = [{"lfdi": _lfdi(n + 1), "nmi": f"41{n:08d}"} for n in range(20)]
        await op.ok("POST", "/api/sites/bulk", {"sites": sites})
        now = running.store.clock() // 1800 * 1800
        first = await op.ok(
            "POST", "/api/does", data=_doe_csv(20, 4, now, 1000), headers={"Content-Type": "text/csv"}
        )
        assert (first["rows"], first["sites"]) == (80, 20)
        before = await running.store.admin.table_dump()

        # Replacement rows with one bad value on line 7: nothing changes, line 7 and the field are named.
        lines = _doe_csv(20, 4, now, 2000).splitlines()
        lines[6] = lines[6].rsplit(",", 1)[0] + ",99999999999999999999"
        status, answer = await op.call(
            "POST", "/api/does", data="\n".join(lines) + "\n", headers={"Content-Type": "text/csv"}
        )
        assert status == 400
        assert answer["errors"] == [
            {"line": 7, "message": answer["errors"][0]["message"]},
        ]
        assert answer["errors"][0]["message"].startswith("export_limit_w:")
        assert "ActivePower" in answer["errors"][0]["message"]
        # Several bad rows: each is reported with its own line number.
        lines[9] = "N9999999,1,1800,1,1"
        lines[12] = lines[12].replace(",1800,", ",-5,")
        status, answer = await op.call(
            "POST", "/api/does", data="\n".join(lines) + "\n", headers={"Content-Type": "text/csv"}
        )
        assert [(e["line"], e["message"].split(":")[0]) for e in answer["errors"]] == [
            (7, "export_limit_w"),
            (10, "nmi"),
            (13, "duration"),
        ]
        # JSON too (records numbered), and an unknown column in the header.
        bad_json = (
            '[{"nmi": "4100000001", "start": %d, "duration": 1800, "import_limit_w": 1, "export_limit_w": 2},'
        )
        bad_json += '{"nmi": "4100000001", "start": "yesterday", "duration": 1800, "import_limit_w": 1, '
        bad_json += '"export_limit_w": 2}]'
        status, answer = await op.call(
            "POST", "/api/does", data=bad_json % now, headers={"Content-Type": "application/json"}
        )
        assert status == 400 and answer["errors"][0]["record"] == 2
        assert answer["errors"][0]["message"].startswith("start:")
        status, answer = await op.call(
            "POST",
            "/api/does",
            data="nmi,start,duration,import_limit_w,export_limit_w,colour\n",
            headers={"Content-Type": "text/csv"},
        )
        assert status == 400 and answer["errors"][0] == {"line": 1, "message": answer["errors"][0]["message"]}
        assert "colour" in answer["errors"][0]["message"]
        # Optional generation/load columns (blank = no limit); a bad one is named too.
        ext = "nmi,start,duration,import_limit_w,export_limit_w,generation_limit_w,load_limit_w\n"
        ext += f"4100000002,{now},1800,10,20,,40\n4100000002,{now + 1800},1800,10,20,-3,\n"
        status, answer = await op.call("POST", "/api/does", data=ext, headers={"Content-Type": "text/csv"})
        assert status == 400 and answer["errors"][0]["line"] == 3
        assert answer["errors"][0]["message"].startswith("generation_limit_w:")
        assert await running.store.admin.table_dump() == before
        ext = ext.replace(",-3,", ",30,")
        assert (await op.ok("POST", "/api/does", data=ext, headers={"Content-Type": "text/csv"}))["rows"] == 2
        two = (await op.ok("GET", f"/api/sites/{_lfdi(3)}/does"))["items"]
        assert [(i["generation_limit_w"], i["load_limit_w"]) for i in two[:3]] == [
            (None, 40),
            (30, None),
            (None, None),
        ]
        before = await running.store.admin.table_dump()

        # A good JSON upload (multipart form, as browsers send) replaces the same site+interval.
        good = (
            f'[{{"lfdi": "{_lfdi(1)}", "start": {now}, "duration": 1800, "import_limit_w": 5, '
            '"export_limit_w": 6,'
        )
        good += ' "generation_limit_w": 7000}]'
        form = aiohttp.FormData()
        form.add_field("file", good.encode(), filename="does.json", content_type="application/json")
        result = await op.ok("POST", "/api/does?format=json", data=form)
        assert result["rows"] == 1
        intervals = (await op.ok("GET", f"/api/sites/{_lfdi(1)}/does"))["items"]
        assert len(intervals) == 4
        assert intervals[0]["export_limit_w"] == 6 and intervals[0]["generation_limit_w"] == 7000
        assert intervals[0]["upload"] == result["upload_id"] and intervals[1]["export_limit_w"] == 1000
    finally:
        await op.close()
        await running.stop()


async def test_10k_sites_x_48_intervals_reach_every_derc_list(pki: Pki, tmp_path: Path) -> None:
    running = await start_server(server_config(pki, tmp_path / "data", headend_tokens=TOKENS))
    op = Api(f"http://127.0.0.1:{running.headend_port}", OPERATOR_TOKEN)
    agg = Client(running.base_url, pki.ssl("agg-a"), pki.identities["agg-a"].lfdi)
    n_sites, n_intervals = 10_000, 48
    try:
        assert (await agg.get("/dcap")).status == 200  # the aggregator enrols on first contact
        agg_name = (await op.ok("GET", "/api/aggregators"))["items"][0]["name"]
        sites = [{"lfdi": _lfdi(n + 1), "nmi": f"41{n:08d}", "aggregator": agg_name} for n in range(n_sites)]
        await op.ok("POST", "/api/sites/bulk", {"sites": sites})
        now = running.store.clock()
        start = now // 1800 * 1800
        text = _doe_csv(n_sites, n_intervals, start, 3000)
        async with op.session.post(
            op.base + "/api/does", data=_stream(text), headers={"Content-Type": "text/csv"}
        ) as response:
            result = await response.json()
            assert response.status == 201, result
        assert (result["rows"], result["sites"]) == (n_sites * n_intervals, n_sites)

        # Counts for every site, straight from the store.
        async with running.store.read() as conn:
            per_site = (
                await conn.exec_driver_sql(
                    "SELECT count(*), min(c), max(c) FROM "
                    "(SELECT site_id, count(*) AS c FROM doe_intervals GROUP BY site_id)"
                )
            ).one()
        assert tuple(per_site) == (n_sites, n_intervals, n_intervals)

        # Every site's DERControlList holds its 48 DOEs (store path used by the 2030.5 handlers) ...
        from server.store import Page

        scope = await running.store.scope_for(agg.lfdi, "aggregator")
        rng = random.Random(3)
        for site_id in [1, n_sites, *rng.sample(range(2, n_sites), 150)]:
            view = await running.store.site_view(scope, site_id)
            doe = next(p for p in view.programs if p.key == "doe")
            total, rows, _ = await running.store.program_controls(view, doe.id, Page(0, 100))
            assert total == n_intervals and [x.start for x in rows] == [start + k * 1800 for k in range(48)]

        # ... and over real mutual TLS, as the aggregator's client reads it, with the right values.
        for site_id in [1, n_sites, *rng.sample(range(2, n_sites), 12)]:
            programs = (await agg.get(f"/edev/{site_id}/fsa/0/derp?l=10")).doc(r.DERProgramList)
            doe_href = next(p.href for p in programs.DERProgram if p.primacy == 10)
            listing = (await agg.get(f"{doe_href}/derc?l=100")).doc(r.DERControlList)
            assert listing.all == n_intervals and listing.results == n_intervals
            first = listing.DERControl[0]
            assert first.mRID == doe_mrid(0, site_id, start, result["upload_id"])
            assert first.DERControlBase.opModExpLimW.to_watts() == 3000
            assert first.DERControlBase.opModImpLimW.to_watts() == 8000
            assert first.EventStatus.currentStatus == 1
            assert listing.DERControl[47].DERControlBase.opModImpLimW.to_watts() == 8047
            one = (await agg.get(f"{doe_href}/derc/{DOE_ID_BASE + start + 1800}")).doc(r.DERControl)
            assert one.interval.start == start + 1800
            active = (await agg.get(f"{doe_href}/actderc?l=10")).doc(r.DERControlList)
            assert active.all == 1 and active.DERControl[0].mRID == first.mRID
    finally:
        await agg.close()
        await op.close()
        await running.stop()


# ------------------------------------------------------------------------------------------ kill -9


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    def __init__(self, pki: Pki, data_dir: Path, port: int) -> None:
        self.port = port
        self.config = data_dir.parent / "server.toml"
        self.config.write_text(
            "[server]\n"
            f'data_dir = "{data_dir}"\ncert_dir = "{pki.directory}"\n'
            f"port = 0\nadmin_port = 0\nheadend_port = {port}\n"
            "[[server.headend_tokens]]\n"
            f'name = "alice"\ntoken = "{OPERATOR_TOKEN}"\nrole = "operator"\n'
        )
        self.db = data_dir / "derlink.sqlite3"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "derlink",
            "server",
            "run",
            "--config",
            str(self.config),
            "--log-level",
            "WARNING",
            cwd=Path(__file__).parent.parent,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        async with aiohttp.ClientSession() as session:
            while True:
                try:
                    async with session.get(f"http://127.0.0.1:{self.port}/api/openapi.json") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                assert time.monotonic() < deadline and self.proc.returncode is None, "server did not start"
                await asyncio.sleep(0.1)

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)

    async def wait(self) -> None:
        assert self.proc is not None
        await self.proc.wait()

    def exports(self) -> dict[int, int]:
        """export limit -> number of DOE rows, read from the database file with a fresh connection."""
        with sqlite3.connect(self.db) as conn:
            return dict(
                conn.execute("SELECT export_w, count(*) FROM doe_intervals GROUP BY export_w").fetchall()
            )


async def test_kill_9_during_upload_leaves_all_or_nothing(pki: Pki, tmp_path: Path) -> None:
    n_sites, n_intervals = 3000, 48
    rows = n_sites * n_intervals
    server = ServerProcess(pki, tmp_path / "data", _free_port())
    await server.start()
    op = Api(f"http://127.0.0.1:{server.port}", OPERATOR_TOKEN)
    try:
        sites = [{"lfdi": _lfdi(n + 1), "nmi": f"41{n:08d}"} for n in range(n_sites)]
        await op.ok("POST", "/api/sites/bulk", {"sites": sites})
        start = int(time.time()) // 1800 * 1800
        await op.ok(
            "POST",
            "/api/does",
            data=_doe_csv(n_sites, n_intervals, start, 1111),
            headers={"Content-Type": "text/csv"},
        )

        text = _doe_csv(n_sites, n_intervals, start, 2222).encode()

        async def killed_upload(cut: int, after_sent: float) -> int | None:
            """Send ``cut`` bytes of upload B (all of it: the server is parsing and writing inside its one
            transaction; less: the server is still receiving), then kill -9 the server mid-request. The
            status if the server acknowledged the whole upload before it died (only possible with all of it
            sent), else None."""
            sent = asyncio.Event()
            acknowledged: list[int] = []

            async def body() -> AsyncIterator[bytes]:
                for i in range(0, cut, 256 * 1024):
                    yield text[i : min(i + 256 * 1024, cut)]
                sent.set()
                if cut < len(text):
                    await asyncio.sleep(3600)  # never finishes: the server dies first

            async def upload() -> None:
                try:
                    async with op.session.post(
                        op.base + "/api/does", data=body(), headers={"Content-Type": "text/csv"}
                    ) as response:
                        await response.read()
                        if cut < len(text):
                            pytest.fail(f"a partial upload was acknowledged ({response.status})")
                        acknowledged.append(response.status)
                except (aiohttp.ClientError, ConnectionError):
                    pass

            task = asyncio.create_task(upload())
            await asyncio.wait_for(sent.wait(), 60)
            await asyncio.sleep(after_sent)
            server.kill9()
            await server.wait()
            await asyncio.wait_for(task, 10)
            return acknowledged[0] if acknowledged else None

        # Killed while receiving: none of B.
        await killed_upload(int(len(text) * 0.7), 0.5)
        assert server.exports() == {1111: rows}
        # Killed while applying (the whole body was sent): all or nothing, never a mix. A fast ingest may
        # have been acknowledged before the kill: then all of B, since it was committed before the 201.
        await server.start()
        status = await killed_upload(len(text), 0.4)
        if status is None:
            assert server.exports() in ({1111: rows}, {2222: rows})
        else:
            assert status == 201 and server.exports() == {2222: rows}

        # After a restart a complete upload B lands entirely, even when the server is killed right after
        # acknowledging it.
        await server.start()
        result = await op.ok("POST", "/api/does", data=text, headers={"Content-Type": "text/csv"})
        assert result["rows"] == rows
        server.kill9()
        await server.wait()
        assert server.exports() == {2222: rows}
        await server.start()
        intervals = (await op.ok("GET", "/api/sites/nmi:4100000042/does"))["items"]
        assert len(intervals) == n_intervals and {i["export_limit_w"] for i in intervals} == {2222}
    finally:
        await op.close()
        if server.proc is not None and server.proc.returncode is None:
            server.kill9()
            await server.wait()
