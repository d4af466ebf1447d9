"""Several DER per EndDevice and their standing data over time (issue 16 item 3, issue 13 item 6).

2030.5 §10.10 (DER function set): the server provides the DERList, each DER links its DERCapability,
DERSettings, DERStatus and DERAvailability, which the client PUTs; lists are paged (§8.2.4.4 s/l). The
server creates the DER instances (one by default, more when the operator declares them); every change of
a DER document is kept with what changed and when, for the head-end (GET /api/sites/{site}/ders[/history])
and ``derlink ctl sites ders``. Real mutual TLS for the 2030.5 side, the head-end API over HTTP.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from sep2 import resources as r
from server.app import start_server
from server.store import der_docs
from tests.test_headend import OPERATOR_TOKEN, TOKENS, VIEWER_TOKEN, Api
from tests.test_server_harness import BACKENDS, Client, Pki, dera, dercap, derg, ders, server_config

pytest_plugins = ["tests.test_server_harness"]


@BACKENDS
async def test_several_ders_each_with_documents_and_history(
    pki: Pki, tmp_path: Path, database_url: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    running = await start_server(
        server_config(pki, tmp_path / "data", database_url=database_url, headend_tokens=TOKENS)
    )
    base = f"http://127.0.0.1:{running.headend_port}"
    op, viewer = Api(base, OPERATOR_TOKEN), Api(base, VIEWER_TOKEN)
    dev = Client(running.base_url, pki.ssl("dev-a"), pki.identities["dev-a"].lfdi)
    try:
        admin = running.store.admin
        site_id = await admin.register_site(dev.lfdi, nmi="4102000555")
        # One DER by default, exactly as before.
        one = (await dev.get(f"/edev/{site_id}/der")).doc(r.DERList)
        assert (one.all, [d.href for d in one.DER]) == (1, [f"/edev/{site_id}/der/1"])

        # The operator declares three DERs: the server creates them (viewers may not).
        assert (await viewer.call("PUT", f"/api/sites/{dev.lfdi}/ders", {"count": 3}))[0] == 403
        status, err = await op.call("PUT", f"/api/sites/{dev.lfdi}/ders", {"count": 0})
        assert status == 400 and err["field"] == "ders", err
        got = await op.ok("PUT", f"/api/sites/{dev.lfdi}/ders", {"count": 3, "reason": "2 PV + battery"})
        assert got["added"] == 2
        # The DERList is paged like every 2030.5 list (default limit 1).
        page = (await dev.get(f"/edev/{site_id}/der?s=1&l=1")).doc(r.DERList)
        assert (page.all, page.results, len(page.DER)) == (3, 1, 1)
        hrefs = [d.href for d in (await dev.get(f"/edev/{site_id}/der?l=10")).doc(r.DERList).DER]
        assert len(hrefs) == 3 and len(set(hrefs)) == 3

        # Each DER gets its own documents.
        ratings = (5000, 3000, 5000)
        for href, watts in zip(hrefs, ratings, strict=True):
            cap = replace(dercap(), rtgMaxW=r.ActivePower(value=watts // 1000, multiplier=3))
            for kind, doc in (("dercap", cap), ("derg", derg()), ("ders", ders()), ("dera", dera())):
                assert (await dev.put(f"{href}/{kind}", doc)).status == 204
        for href, watts in zip(hrefs, ratings, strict=True):
            cap = (await dev.get(f"{href}/dercap")).doc(r.DERCapability)
            assert cap.rtgMaxW.value * 10**cap.rtgMaxW.multiplier == watts

        # The same document again (only its timestamps moved) is no change; a new nameplate is one.
        assert (await dev.put(f"{hrefs[1]}/derg", derg(updated=1_700_000_100))).status == 204
        assert (await dev.put(f"{hrefs[1]}/ders", ders(at=1_700_000_100))).status == 204
        bigger = replace(dercap(), rtgMaxW=r.ActivePower(value=4, multiplier=3))
        assert (await dev.put(f"{hrefs[1]}/dercap", bigger)).status == 204

        view = await op.ok("GET", f"/api/sites/{dev.lfdi}/ders")
        assert [d["href"] for d in view["ders"]] == hrefs
        nameplates = [d["documents"]["dercap"]["rtgMaxW"] for d in view["ders"]]
        assert nameplates == [5000, 4000, 5000]  # in W, multiplier applied
        assert all(set(d["documents"]) == {"dercap", "derg", "ders", "dera"} for d in view["ders"])
        assert view["ders"][0]["documents"]["dera"]["statWAvail"] == 4200

        second = int(hrefs[1].rsplit("/", 1)[1])
        history = await viewer.ok("GET", f"/api/sites/{dev.lfdi}/ders/history", params={"der": second})
        items = history["items"]
        assert [(i["kind"], i["document"]) for i in items[:1]] == [("dercap", "DERCapability")]
        assert items[0]["changes"] == {"rtgMaxW": [3000, 4000]} and items[0]["units"] == {"rtgMaxW": "W"}
        # First PUTs list every field; repeated ones with only new timestamps left no row.
        assert sorted(i["kind"] for i in items[1:]) == ["dera", "dercap", "derg", "ders"]
        first_cap = next(i for i in items[1:] if i["kind"] == "dercap")
        assert first_cap["changes"]["rtgMaxW"] == [None, 3000]
        only = await op.ok(
            "GET", f"/api/sites/{dev.lfdi}/ders/history", params={"kind": "dercap", "limit": 2}
        )
        assert [i["kind"] for i in only["items"]] == ["dercap", "dercap"]
        status, err = await op.call("GET", f"/api/sites/{dev.lfdi}/ders/history", params={"kind": "x"})
        assert status == 400 and err["field"] == "kind"

        # History is bounded per DER and document: the oldest changes go first.
        monkeypatch.setattr(der_docs, "HISTORY_KEEP", 3)
        monkeypatch.setattr(der_docs, "PRUNE_EVERY", 1)  # trim on every insert (at random otherwise)
        for soc in range(5):
            status = replace(
                ders(), stateOfChargeStatus=r.StateOfChargeStatus(dateTime=1_700_000_000, value=soc * 100)
            )
            assert (await dev.put(f"{hrefs[2]}/ders", status)).status == 204
        third = int(hrefs[2].rsplit("/", 1)[1])
        kept = await op.ok(
            "GET", f"/api/sites/{dev.lfdi}/ders/history", params={"der": third, "kind": "ders"}
        )
        assert [i["changes"]["stateOfChargeStatus.value"] for i in kept["items"]] == [
            [300, 400], [200, 300], [100, 200]
        ]  # fmt: skip

        # The CLI shows the same, fields readable (no JSON in cells), and the history field by field.
        cli = [sys.executable, "-m", "derlink", "ctl", "--url", base, "--token", OPERATOR_TOKEN]
        env = {**os.environ, "COLUMNS": "200"}

        async def ctl(*argv: str) -> str:
            proc = await asyncio.create_subprocess_exec(
                *cli, *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env
            )
            out, _ = await proc.communicate()
            assert proc.returncode == 0, out.decode()
            return out.decode()

        shown, listed = await asyncio.gather(
            ctl("sites", "ders", dev.lfdi),
            ctl("--json", "sites", "ders", dev.lfdi, "--history", "--der", str(second)),
        )
        assert all(f"DER {i}" in shown for i in range(1, 4)) and "dercap.rtgMaxW" in shown
        assert "4000 W" in shown and "4200 W" in shown  # DER 2's nameplate; statWAvail, units named
        assert "{" not in shown, shown
        assert json.loads(listed)["items"][0]["changes"] == {"rtgMaxW": [3000, 4000]}

        # Registration can declare them too; a bad count is refused before anything is registered.
        other = pki.identities["dev-b"].lfdi
        code = await (await asyncio.create_subprocess_exec(
            *cli, "sites", "register", other, "--ders", "0", env=env, stderr=asyncio.subprocess.PIPE
        )).wait()  # fmt: skip
        assert code == 2
        await ctl("sites", "register", other, "--nmi", "4102000556", "--ders", "2")
        assert len((await op.ok("GET", f"/api/sites/{other}/ders"))["ders"]) == 2

        # Fewer DERs again: the newest go, with their documents and history (audited).
        assert (await op.ok("PUT", f"/api/sites/{dev.lfdi}/ders", {"count": 1}))["added"] == -2
        assert (await dev.get(f"/edev/{site_id}/der")).doc(r.DERList).all == 1
        assert (await dev.get(f"{hrefs[2]}/dercap")).status == 404
        audit = await op.ok("GET", "/api/audit", params={"target": dev.lfdi})
        assert [e["action"] for e in audit["items"]].count("site.ders") == 2
    finally:
        await op.close()
        await viewer.close()
        await dev.close()
        await running.stop()


def test_what_counts_as_a_change() -> None:
    """Quantities compare in their unit (5 x 10^3 W == 5000 x 10^0 W); timestamps are no change; a stored
    document that no longer parses is treated as absent (the client's PUT must not fail on it)."""
    a = replace(dercap(), rtgMaxW=r.ActivePower(value=5, multiplier=3))
    b = replace(dercap(), rtgMaxW=r.ActivePower(value=5000, multiplier=0))
    assert der_docs.diff(der_docs.fields(a), der_docs.fields(b)) == {}
    assert der_docs.diff(der_docs.fields(derg(1)), der_docs.fields(derg(2))) == {}
    volts = r.DERSettings(updatedTime=1, setMaxW=r.ActivePower(value=1, multiplier=0),
                          setVRef=r.VoltageRMS(value=2301, multiplier=-1))  # fmt: skip
    assert der_docs.fields(volts)["setVRef"] == 230.1
    assert der_docs._stored_fields("<DERCapability", "dercap") == {}
