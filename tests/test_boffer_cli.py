"""`derlink boffer` and the Boffer I/O shell: files in, offers out, errors naming the field; publishing
targets to gateways as aggregator setpoints over loopback HTTP."""

import csv
import io
import json
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from aggregator.boffer import Portfolio, dispatch_sites
from aggregator.boffer.builder import build_offer
from aggregator.boffer.io import PortfolioFileError, read_portfolio
from aggregator.boffer.model import Plan
from aggregator.boffer.publish import Gateway, publish_targets
from derlink.cli import main
from gateway.local_api import aggregator_from_body
from tests import boffer_examples as ex

E_PRICES = ",".join(str(p) for p in ex.LADDER)


def write_e2_csv(path: Path, periods: int = 2) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["site_id", "period", "native_load", "uncontrolled_gen", "controlled_load",
                    "import_limit"])
        for s in ex.load_portfolio():
            for p in range(1, periods + 1):
                w.writerow([s.site_id, p, s.native_load, 0, s.controlled_load, "" if p == 1 else 8])
    return path


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (print(exc.code, file=err) or 2)
    return code, out.getvalue(), err.getvalue()


def test_cli_build_reproduces_E21_from_csv_and_clips_to_the_doe(tmp_path):
    path = write_e2_csv(tmp_path / "portfolio.csv")
    code, out, err = run("boffer", "build", str(path), f"--prices={E_PRICES}", "--load-on-up-to", "1")
    assert code == 0, err
    doc = json.loads(out)
    first, second = doc["periods"]
    assert first["maxAvailLoad"] == -100 and first["quantities"][2] == -30 and first["quantities"][9] == -70
    assert second["maxAvailLoad"] == -74  # 8 kW import limit in period 2
    assert "site house-3 period 2: outside its DOE" in err
    offer = tmp_path / "offer.json"
    offer.write_text(out)
    assert run("boffer", "validate", str(offer))[0] == 0
    code, out, _ = run("boffer", "validate", str(offer), "--full-horizon")
    assert code == 1 and "L144, L229" in out


def test_cli_validate_refuses_G21_as_printed(tmp_path):
    q = [0, -50, -10, 0, 0, 0, 0, 0, -30, 0] + [0] * 7 + [50, 0, 0]
    acc = [-90, -90, -40, -30, -30, -30, -30, -30, -30, 0] + [0] * 7 + [20, 20, 20]
    doc = {"bofferSummationLevel": "NMI", "prices": list(ex.LADDER_G21),
           "periods": [{"periodId": 1, "maxAvailLoad": -90, "maxAvailGen": 20, "quantities": q,
                        "accumulated": acc}]}  # fmt: skip
    (tmp_path / "g21.json").write_text(json.dumps(doc))
    code, out, _ = run("boffer", "validate", str(tmp_path / "g21.json"))
    assert code == 1 and "error: L476" in out and "band 18" in out


def test_cli_dispatch_prints_targets_and_telemetry(tmp_path):
    path = write_e2_csv(tmp_path / "portfolio.csv", periods=1)
    code, out, _ = run("boffer", "dispatch", str(path), f"--prices={E_PRICES}", "--load-on-up-to", "1",
                       "--price", "-999")  # fmt: skip
    assert code == 0
    doc = json.loads(out)
    assert doc["cleared_kw"] == -100
    assert doc["telemetry"] == {"NMI": {"active_power": -100}, "FLEX": {"controlled_gen": 0,
                                "controlled_load": -30, "energy_stored": 0}}  # fmt: skip


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("site_id,native_load\na,1\n", "missing column(s) uncontrolled_gen"),
        ("site_id,native_load,uncontrolled_gen\na,-3,0\n", ":2: native_load: must be a finite kW"),
        ("site_id,native_load,uncontrolled_gen,import_limit\na,1,0,x\n", ":2: import_limit: not a number"),
        ("site_id,period,native_load,uncontrolled_gen\na,1,1,0\na,1,2,0\n", "period: 1 given twice"),
        ("site_id,period,native_load,uncontrolled_gen\na,1,1,0\nb,2,1,0\n", "does not give every period"),
    ],
)
def test_bad_portfolio_file_names_the_field(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(PortfolioFileError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_portfolio(path)
    code, _, err = run("boffer", "build", str(path))
    assert code != 0 and message in err


def test_json_portfolio_with_per_period_doe(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"sites": [
        {"site_id": "a", "native_load": 2, "controlled_gen": 10, "export_limit": [5, 1]},
        {"site_id": "b", "native_load": [1, 3], "controlled_load": 4, "energy_stored": 7},
    ]}))  # fmt: skip
    pf = read_portfolio(path)
    assert pf.shape == (2, 2) and pf.energy_stored.tolist() == [0, 7]
    built = build_offer(pf, "NMI", ex.LADDER, Plan.thresholds(ex.LADDER, 1, 78))
    assert [p.max_avail_gen for p in built.offer.periods] == [4, 0]  # a: min(8, 5)=5, b: -1 / min(1,-2)
    assert [p.max_avail_load for p in built.offer.periods] == [-7, -9]


async def test_publish_targets_as_gateway_aggregator_setpoints():
    received: list[tuple[str, dict]] = []

    async def put_aggregator(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != "Bearer tok-" + request.match_info["site"]:
            return web.json_response({"error": "wrong token"}, status=401)
        body = await request.json()
        aggregator_from_body(body, 0.0)  # the gateway's own parser accepts it
        received.append((request.match_info["site"], body))
        return web.json_response({}, status=200)

    app = web.Application()
    app.router.add_put("/{site}/aggregator", put_aggregator)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        built = build_offer(Portfolio.from_sites(ex.load_portfolio()), "NMI", ex.LADDER,
                            Plan.thresholds(ex.LADDER, load_on_up_to=1))  # fmt: skip
        targets = dispatch_sites(built, 0, -999)
        gateways = {f"house-{i}": Gateway(f"http://127.0.0.1:{port}/house-{i}", f"tok-house-{i}")
                    for i in range(1, 5)}  # fmt: skip
        async with aiohttp.ClientSession() as session:
            status = await publish_targets(targets, gateways, session, expires_in_s=300)
    finally:
        await runner.cleanup()
    assert status == {"house-1": 200, "house-2": 200, "house-3": 200, "house-4": 200,
                      "house-5": "no gateway configured"}  # fmt: skip
    bodies = dict(received)
    assert bodies["house-1"]["export_target_w"] == -11900  # 7.5 native + 4.4 controllable, importing
    assert bodies["house-4"] == {"export_target_w": -31900, "expires_in_s": 300,
                                 "detail": "Boffer dispatch: house-4"}  # fmt: skip


def test_site_from_derlink_der_documents_and_doe():
    from aggregator.boffer.derlink_source import site_from_der_documents
    from sep2.resources import ActivePower, DERAvailability, DERCapability, DERSettings

    pv = {"cap": DERCapability(modesSupported="00000001", type=4, rtgMaxW=ActivePower.from_watts(5000)),
          "settings": DERSettings(setGradW=100, setMaxW=ActivePower.from_watts(4600)),
          "availability": DERAvailability(readingTime=0,
                                          statWAvail=ActivePower.from_watts(3200))}  # fmt: skip
    battery = {"cap": DERCapability(modesSupported="00000001", type=80, rtgMaxW=ActivePower.from_watts(5000),
                                    rtgMaxChargeRateW=ActivePower.from_watts(5000),
                                    rtgMaxDischargeRateW=ActivePower.from_watts(5000)),
               "settings": DERSettings(setGradW=100, setMaxW=ActivePower.from_watts(5000),
                                       setMaxChargeRateW=ActivePower.from_watts(3000))}  # fmt: skip
    site = site_from_der_documents("lfdi-1", [pv, battery], import_limit_w=10000, export_limit_w=1500,
                                   recent_load_w=[800, 1200, 1000])  # fmt: skip
    assert (site.controlled_gen, site.ess_charge, site.ess_discharge) == (3.2, 3.0, 5.0)
    assert (site.native_load, site.import_limit, site.export_limit) == (1.0, 10.0, 1.5)
    built = build_offer(Portfolio.from_sites([site]), "NMI", ex.LADDER, Plan.thresholds(ex.LADDER, 1, 78))
    assert built.offer.periods[0].max_avail_gen == 1.5  # 8.2 kW of generation, 1.5 kW export DOE
    assert built.offer.periods[0].max_avail_load == -4.0  # 1 kW native + 3 kW charging
    with pytest.raises(ValueError, match="DERCapability"):
        site_from_der_documents("x", [{}], import_limit_w=None, export_limit_w=None)
