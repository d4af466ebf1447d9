"""Site TOML configuration: a full example loads; every bad value is refused naming its field."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from simulators.cli import register
from simulators.config import ConfigError, load_site_config, site_config_from_dict
from simulators.physics import Profile
from simulators.site import SimulatedFleet, SimulatedSite

SITE_TOML = """
[site]
name = "bench-1"
speed = 60
utc_offset_h = 10
load_phase_split = [0.5, 0.3, 0.2]
load = { kind = "csv", csv = "load.csv" }

[[device]]
name = "inv1"
kind = "pv"
family = "der"
wiring = "wye"
rated_w = 10000
ramp_time_s = 20
pv_profile = { kind = "clear_sky", peak_w = 9000 }

[[device]]
name = "bat"
kind = "battery"
unit_id = 2
port = 0
capacity_wh = 10000
initial_soc_pct = 80

[[device]]
name = "grid"
kind = "meter"
wiring = "wye"
unit_id = 240
"""


def _write(tmp_path: Path, text: str = SITE_TOML) -> Path:
    (tmp_path / "load.csv").write_text("time,watts\n00:00,400\n12:00,1200\n18:30,3000\n")
    path = tmp_path / "site.toml"
    path.write_text(text)
    return path


def test_full_example_loads_and_runs(tmp_path: Path) -> None:
    cfg = load_site_config(_write(tmp_path))
    assert cfg.name == "bench-1" and cfg.speed == 60.0
    assert [d.name for d in cfg.devices] == ["inv1", "bat", "grid"]
    assert cfg.devices[1].port == 0 and cfg.devices[0].port is None
    assert cfg.load.kind == "csv"


async def test_config_site_serves_what_it_says(tmp_path: Path) -> None:
    async with SimulatedSite(load_site_config(_write(tmp_path))) as site:
        eps = {e.name: e for e in site.endpoints}
        assert eps["inv1"].models == (1, 701, 702, 703, 704, 705)
        assert eps["bat"].port != eps["inv1"].port  # own port
        assert eps["grid"].port == eps["inv1"].port and eps["grid"].unit_id == 240
        assert site.battery_soc() == pytest.approx(80.0, abs=0.5)


def test_csv_profile_interpolates() -> None:
    p = Profile.from_csv_text("time,watts\n00:00,400\n12:00,1200\n18:00,3000\n")
    assert p.value(6 * 3600) == pytest.approx(800.0)
    assert p.value(15 * 3600) == pytest.approx(2100.0)
    assert p.value(21 * 3600) == pytest.approx(1700.0)  # wraps back toward midnight


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (("site", "speed", 0), "site.speed"),
        (("site", "colour", "red"), "site.colour"),
        (("site", "speed", "fast"), "site.speed"),
        (("site", "load_phase_split", [0.5, 0.5, 0.5]), "site.load_phase_split"),
        (("site", "start", "yesterday"), "site.start"),
        ((0, "rated_w", -5), "device[0].rated_w"),
        ((0, "family", "sunspec3"), "device[0].family"),
        ((0, "kind", "windmill"), "device[0].kind"),
        ((0, "wiring", "star"), "device[0].wiring"),
        ((0, "unit_id", 300), "device[0].unit_id"),
        ((2, "unit_id", 1), "device[2].unit_id"),  # clashes with inv1 on the shared port
        ((1, "capacity_wh", 0), "device[1].capacity_wh"),
        ((1, "initial_soc_pct", 120), "device[1].initial_soc_pct"),
        ((1, "charge_efficiency", 1.5), "device[1].charge_efficiency"),
        ((0, "pv_profile", {"kind": "csv"}), "device[0].pv_profile.csv"),
        ((0, "pv_profile", {"kind": "csv", "csv": "missing.csv"}), "device[0].pv_profile.csv"),
        ((0, "pv_profile", {"kind": "lunar"}), "device[0].pv_profile.kind"),
        ((1, "name", "inv1"), "device[1].name"),
        ((0, "port", 70000), "device[0].port"),
    ],
)
def test_validation_errors_name_the_field(tmp_path: Path, change: tuple, field: str) -> None:
    import tomllib

    _write(tmp_path)
    data = tomllib.loads(SITE_TOML)
    where, key, value = change
    table = data["site"] if where == "site" else data["device"][where]
    table[key] = value
    with pytest.raises(ConfigError) as err:
        site_config_from_dict(data, base_dir=tmp_path)
    assert err.value.field == field
    assert str(err.value).startswith(field + ":")


def test_missing_devices_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        site_config_from_dict({"site": {"name": "x"}})
    assert err.value.field == "device"
    bad = tmp_path / "bad.toml"
    bad.write_text("[site\nname=")
    with pytest.raises(ConfigError) as err:
        load_site_config(bad)
    assert err.value.field == "config"


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="derlink")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


def test_cli_site_prints_what_runs_where(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli(["sim", "site", "--config", str(_write(tmp_path)), "--once"]) == 0
    out = capsys.readouterr().out
    assert "inv1" in out and "701" in out and "705" in out and "127.0.0.1:" in out and "grid" in out
    bad = tmp_path / "bad.toml"
    bad.write_text(SITE_TOML.replace("rated_w = 10000", "rated_w = -1"))
    assert _cli(["sim", "site", "--config", str(bad), "--once"]) == 2
    assert "device[0].rated_w" in capsys.readouterr().err


def test_cli_fleet_reports_per_site_resources(capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli(["sim", "fleet", "--sites", "5", "--once"]) == 0
    out = capsys.readouterr().out
    assert "5 sites" in out and "per site" in out and "RSS" in out


async def test_small_fleet_sites_are_independent() -> None:
    from dataclasses import replace

    from simulators.config import default_site_config

    base = default_site_config(pv_available_w=3000, load_w=500, battery=False)
    fleet = SimulatedFleet([replace(base, name=f"s{i}") for i in range(10)])
    await fleet.start(control_port=0)
    try:
        ports = {s.endpoints[0].port for s in fleet.sites}
        assert len(ports) == 10
        fleet.site("s3").set_fault("meter", "exception")
        from pymodbus.client import AsyncModbusTcpClient

        for site in fleet.sites:
            ep = site.endpoint("meter")
            client = AsyncModbusTcpClient(ep.host, port=ep.port, timeout=1, retries=0)
            await client.connect()
            rr = await client.read_holding_registers(40000, count=2, device_id=ep.unit_id)
            assert rr.isError() == (site.name == "s3")
            client.close()
    finally:
        await fleet.stop()
