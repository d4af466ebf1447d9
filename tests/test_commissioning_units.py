"""Pure pieces of commissioning: NMI rules, PIN, the open-loop static cap, scan targets, state, report."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.commissioning import CommissioningState, NmiError, nmi_checksum, validate_nmi
from gateway.commissioning.discover import parse_scan_targets, parse_units
from gateway.commissioning.identity import generate_pin
from gateway.commissioning.limits import static_cap
from gateway.commissioning.report import render_html, report_data
from gateway.commissioning.state import inputs_changed
from sep2.identity import sfdi_is_valid

# Worked examples published in AEMO's National Metering Identifier procedure (NMI, checksum).
AEMO_EXAMPLES = [
    ("2001985732", 8),
    ("2001985733", 6),
    ("3075621875", 8),
    ("3075621876", 6),
    ("4316854005", 9),
    ("7102000001", 7),
    ("QAAAVZZZZZ", 3),
    ("QCDWW00010", 2),
    ("SMVEW00085", 8),
    ("VAAA000065", 7),
]


@pytest.mark.parametrize(("nmi", "checksum"), AEMO_EXAMPLES)
def test_nmi_checksum_matches_aemo_examples(nmi: str, checksum: int) -> None:
    assert nmi_checksum(nmi) == checksum
    assert validate_nmi(f"{nmi}{checksum}").checksum_given
    assert validate_nmi(nmi.lower()).nmi == nmi


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is empty"),
        ("410200007", "has 9 characters"),
        ("410200007712", "has 12 characters"),
        ("41020000I7", "never contain the letters I or O"),
        ("4102-00077", "contains '-'"),
        ("41020000770", "checksum digit '0' does not match"),
    ],
)
def test_malformed_nmis_are_named(text: str, message: str) -> None:
    with pytest.raises(NmiError, match=message):
        validate_nmi(text)


@given(st.text(alphabet="0123456789ABCDEFGHJKLMNPQRSTUVWXYZ", min_size=10, max_size=10), st.integers(0, 9))
def test_a_changed_character_is_caught_by_the_checksum(nmi: str, position: int) -> None:
    full = nmi + str(nmi_checksum(nmi))
    assert validate_nmi(full).nmi == nmi
    replacement = "7" if nmi[position] != "7" else "8"
    typo = nmi[:position] + replacement + nmi[position + 1 :]
    if nmi_checksum(typo) != nmi_checksum(nmi):
        with pytest.raises(NmiError, match="checksum"):
            validate_nmi(typo + full[-1])


def test_pin_has_a_check_digit() -> None:
    pins = {generate_pin() for _ in range(50)}
    assert all(100000 <= p <= 999999 and sfdi_is_valid(p) for p in pins)
    assert len(pins) > 40


def test_static_cap_keeps_worst_case_generation_within_the_export_limit() -> None:
    devices = [
        {"role": "pv", "info": {"rated_w": 6000.0}},
        {"role": "battery", "info": {"rated_w": 5000.0}},
        {"role": "meter", "info": {"rated_w": None}},
    ]
    cap, pct = static_cap(devices, {"export_limit_w": 5000.0, "generation_limit_w": None})
    assert cap == 5000 and pct == 45.4  # rounded down: 11 kW x 45.4 % = 4994 W <= 5000 W
    assert static_cap(devices, {"export_limit_w": 20000.0})[1] == 100.0
    assert static_cap(devices, {"export_limit_w": 5000.0, "generation_limit_w": 2200.0}) == (2200.0, 20.0)
    assert static_cap([{"role": "pv", "info": {}}], {"export_limit_w": 100.0})[1] == 0.0  # unknown rating


def test_scan_targets_and_units() -> None:
    assert parse_scan_targets(["10.0.0.5"]) == [("10.0.0.5", 502)]
    assert parse_scan_targets(["rtu:/dev/ttyUSB0"]) == [("rtu:/dev/ttyUSB0@9600-8N1", 0)]
    assert parse_scan_targets(["rtu:/dev/ttyS1@19200-8e2"]) == [("rtu:/dev/ttyS1@19200-8E2", 0)]
    for bad, problem in (
        ("rtu:ttyUSB0", "serial device"),
        ("rtu:/dev/ttyUSB0@9601", "baud rate"),
        ("rtu:/dev/ttyUSB0@fast", "not a number"),
        ("rtu:/dev/ttyUSB0@9600-7N1", "frame"),
    ):
        with pytest.raises(ValueError, match=problem):
            parse_scan_targets([bad])
    assert parse_scan_targets(["10.0.0.5:5020-5021"]) == [("10.0.0.5", 5020), ("10.0.0.5", 5021)]
    assert len(parse_scan_targets(["192.168.1.0/24:502"])) == 254
    with pytest.raises(ValueError, match="at most 256"):
        parse_scan_targets(["10.0.0.0/16"])
    with pytest.raises(ValueError, match="port"):
        parse_scan_targets(["10.0.0.5:http"])
    assert parse_units("1-3,126") == [1, 2, 3, 126]
    with pytest.raises(ValueError, match=r"0\.\.247"):
        parse_units("250")


def test_state_is_saved_atomically_and_reloads(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "commissioning.json"
    state = CommissioningState.load(path)
    assert state.first_unfinished() == "discover"
    state.step("discover").update(status="done", inputs={"scan": ["h:1"]})
    state.record("step done", step="discover")
    state.save()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind
    again = CommissioningState.load(path)
    assert again.first_unfinished() == "identity" and again.get("history")[0]["step"] == "discover"
    assert inputs_changed({"scan": ["h:1"]}, {"scan": ["h:1"], "units": None}) == []
    assert inputs_changed({"scan": ["h:1"]}, {"scan": ["h:2"]}) == ["scan"]
    path.write_text("{not json")
    with pytest.raises(ValueError, match="cannot read"):
        CommissioningState.load(path)


def test_report_html_escapes_device_strings(tmp_path) -> None:  # type: ignore[no-untyped-def]
    state = CommissioningState.load(tmp_path / "s.json")
    state.set(
        "devices",
        [
            {
                "name": "pv",
                "role": "pv",
                "key": "h:1:1",
                "info": {"manufacturer": "<script>x</script>", "models": [1]},
            }
        ],
    )
    data = report_data(state)
    html = render_html(data)
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert json.dumps(data)
