"""Pure mapping between 2030.5 documents and the gateway core, the telemetry builders and the outbox."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.client import mapping as m
from gateway.client.outbox import Outbox
from gateway.core import (
    ControlSettings,
    EventEngine,
    EventState,
    Response,
    ResponseStatus,
    ServerStatus,
)
from sep2 import resources as r
from sep2.xml import from_xml, to_xml
from tests.official_xsd import official_errors
from xsd import validate

LFDI = "3E4F45AB31EDFE5B67E343E5E4562E31984E23E5"
PROGRAM = "B" * 32


def der_control(**overrides: object) -> r.DERControl:
    fields: dict[str, object] = dict(
        href="/edev/1/derp/2/derc/3",
        replyTo="/rsps/1/rsp",
        responseRequired="03",
        mRID="a1" * 16,
        creationTime=1000,
        EventStatus=r.EventStatus(currentStatus=1, dateTime=1000, potentiallySuperseded=False),
        interval=r.DateTimeInterval(start=2000, duration=1800),
        randomizeStart=30,
        DERControlBase=r.DERControlBase(
            opModConnect=True,
            opModEnergize=False,
            opModFixedW=-5000,
            opModMaxLimW=7550,
            opModTargetW=r.ActivePower(value=-12, multiplier=2),
            rampTms=1050,
            opModImpLimW=r.ActivePower(value=7, multiplier=3),
            opModExpLimW=r.ActivePower(value=15, multiplier=2),
            opModGenLimW=r.ActivePower(value=2500, multiplier=0),
            opModLoadLimW=r.ActivePower(value=55, multiplier=-1),
        ),
    )
    fields.update(overrides)
    return r.DERControl(**fields)  # type: ignore[arg-type]


def test_der_control_maps_every_field_after_an_xml_round_trip() -> None:
    doc = from_xml(to_xml(der_control()), r.DERControl)
    control = m.control(doc, PROGRAM.lower())
    assert control.mrid == "A1" * 16 and control.program_mrid == PROGRAM
    assert (control.creation_time, control.start, control.duration) == (1000, 2000, 1800)
    assert (control.randomize_start, control.randomize_duration) == (30, 0)
    assert control.server_status is ServerStatus.ACTIVE
    assert control.response_required == 3 and control.reply_to == "/rsps/1/rsp"
    s = control.settings
    assert s.export_limit_w == pytest.approx(1500) and s.import_limit_w == pytest.approx(7000)
    assert s.generation_limit_w == pytest.approx(2500) and s.load_limit_w == pytest.approx(5.5)
    assert s.target_w == pytest.approx(-1200)
    assert (s.connect, s.energize) == (True, False)
    assert s.fixed_w_pct == pytest.approx(-50.0) and s.max_lim_w_pct == pytest.approx(75.5)
    assert s.ramp_time_s == pytest.approx(10.5) and s.set_grad_w is None
    assert s.errors() == []


def test_absent_modes_stay_unset_and_response_required_defaults_to_none() -> None:
    doc = der_control(
        responseRequired=None,
        randomizeStart=None,
        replyTo=None,
        DERControlBase=r.DERControlBase(opModExpLimW=r.ActivePower(value=0, multiplier=0)),
    )
    control = m.control(doc, PROGRAM)
    assert control.settings == ControlSettings(export_limit_w=0.0)
    assert control.response_required == 0 and control.randomize_start == 0 and control.reply_to is None


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (
            {"EventStatus": r.EventStatus(currentStatus=9, dateTime=0, potentiallySuperseded=False)},
            "currentStatus",
        ),
        ({"interval": None}, "interval"),
        ({"DERControlBase": None}, "DERControlBase"),
        ({"mRID": None}, "mRID"),
    ],
)
def test_unmappable_control_raises_naming_the_field(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(m.MappingError, match=field):
        m.control(der_control(**overrides), PROGRAM)


def test_program_and_default_control() -> None:
    default = r.DefaultDERControl(
        mRID="c" * 32,
        DERControlBase=r.DERControlBase(opModExpLimW=r.ActivePower(value=5, multiplier=3), opModConnect=True),
        setGradW=270,
    )
    program_doc = r.DERProgram(mRID="b" * 32, primacy=10)
    program = m.program(program_doc, from_xml(to_xml(default), r.DefaultDERControl))
    assert program.mrid == PROGRAM and program.primacy == 10 and program.default_mrid == "C" * 32
    assert program.default == ControlSettings(export_limit_w=5000.0, connect=True, set_grad_w=270.0)
    assert m.program(program_doc).default is None
    with pytest.raises(m.MappingError, match="primacy"):
        m.program(r.DERProgram(mRID="b" * 32))


def test_mapped_documents_drive_the_event_engine() -> None:
    engine = EventEngine(LFDI)
    program = m.program(
        r.DERProgram(mRID="b" * 32, primacy=10),
        r.DefaultDERControl(
            mRID="c" * 32, DERControlBase=r.DERControlBase(opModExpLimW=r.ActivePower(value=5, multiplier=3))
        ),
    )
    control = m.control(der_control(randomizeStart=None), program.mrid)
    engine.sync_program(program, [control], 1500)
    assert engine.evaluate(1500).settings.export_limit_w == 5000  # before the start: the default
    assert engine.evaluate(2100).settings.export_limit_w == pytest.approx(1500)
    assert engine.state_of(control.mrid, 2100) is EventState.ACTIVE
    statuses = [resp.status for resp in engine.advance(2100)]
    assert statuses == [ResponseStatus.RECEIVED, ResponseStatus.STARTED]


@given(value=st.integers(-32768, 32767), multiplier=st.integers(-3, 6))
def test_active_power_limits_are_value_times_ten_to_the_multiplier(value: int, multiplier: int) -> None:
    base = r.DERControlBase(opModExpLimW=r.ActivePower(value=value, multiplier=multiplier))
    assert m.control_settings(base).export_limit_w == pytest.approx(value * 10.0**multiplier)


def test_response_document_validates_and_carries_subject_status_time() -> None:
    response = Response("ab" * 16, ResponseStatus.SUPERSEDED, 1234, "/rsps/1/rsp")
    doc = m.response_document(response, LFDI.lower())
    xml = to_xml(doc)
    validate(xml)
    back = from_xml(xml, r.DERControlResponse)
    assert (back.subject, back.status, back.createdDateTime, back.endDeviceLFDI) == ("AB" * 16, 7, 1234, LFDI)


PV = m.DeviceSnapshot(
    "pv-1",
    m.DER_TYPE_PV,
    6000,
    m.MODE_CONNECT | m.MODE_MAX_LIM_W,
    rtg_max_va=6000,
    set_grad_w=200,
    inverter_status=4,
    w_available=4200,
    measurements=m.Measurements(w=4100, var=-300, v={"A": 241.3}, hz=50.02),
)
BATTERY = m.DeviceSnapshot(
    "bat-1",
    m.DER_TYPE_STORAGE,
    5000,
    m.MODE_CHARGE | m.MODE_DISCHARGE | m.MODE_FIXED_W,
    rtg_max_wh=13500,
    rtg_max_charge_w=5000,
    rtg_max_discharge_w=5000,
    measurements=m.Measurements(w=-2000, soc_pct=40.0),
)
BATTERY_2 = m.DeviceSnapshot(
    "bat-2",
    m.DER_TYPE_STORAGE,
    3000,
    m.MODE_CHARGE,
    rtg_max_wh=6500,
    measurements=m.Measurements(w=0, soc_pct=90.0),
)


def test_der_documents_validate_and_carry_the_nameplate() -> None:
    for device in (PV, BATTERY):
        docs = [
            m.der_capability(device),
            m.der_settings(device, 500),
            m.der_status(device, 500),
            m.der_availability(device, 500),
        ]
        for doc in docs:
            validate(to_xml(doc))
    cap = m.der_capability(PV)
    assert cap.rtgMaxW.to_watts() == 6000 and cap.type == 4 and cap.modesSupported == "00100004"
    assert cap.doeModesSupported == "0F"
    status = m.der_status(BATTERY, 500)
    assert status.stateOfChargeStatus.value == 4000 and status.storConnectStatus.value == "07"
    assert status.genConnectStatus is None
    assert m.der_status(PV, 500).inverterStatus.value == 4
    assert m.der_availability(PV, 500).statWAvail.to_watts() == 4200
    assert m.der_settings(PV, 500).setGradW == 200 and m.der_settings(PV, 500).updatedTime == 500


def test_reactive_power_and_power_factor_ratings_and_settings_are_reported() -> None:
    """IEEE 2030.5-2018 DERCapability rtgMaxVar / rtgMaxVarNeg (negative: received) / rtgMinPFOverExcited /
    rtgMinPFUnderExcited and the DERSettings setX they default to; CSIP-AUS v1.3 storage extension
    DERSettings.setMinWh (the reserve). The public client procedures STO-02 / STO-05 require each one."""
    battery = m.DeviceSnapshot(
        "bat-9", m.DER_TYPE_STORAGE, 5000, m.MODE_CHARGE | m.MODE_DISCHARGE,
        vpp_modes_supported=m.VPP_STORAGE_TARGET_W, rtg_max_va=5000, rtg_max_var=3000,
        rtg_max_var_neg=-3000, rtg_min_pf_over=0.8, rtg_min_pf_under=0.85, rtg_max_wh=13500,
        set_min_wh=1350,
    )  # fmt: skip
    cap, settings = m.der_capability(battery), m.der_settings(battery, 500)
    for doc in (cap, settings):
        document = to_xml(doc)
        validate(document)
        assert official_errors(document) == []
    assert cap.rtgMaxVar.value * 10**cap.rtgMaxVar.multiplier == 3000
    assert cap.rtgMaxVarNeg.value * 10**cap.rtgMaxVarNeg.multiplier == -3000
    assert (cap.rtgMinPFOverExcited.displacement, cap.rtgMinPFOverExcited.multiplier) == (800, -3)
    assert cap.rtgMinPFUnderExcited.displacement == 850
    assert settings.setMaxVar == cap.rtgMaxVar and settings.setMaxVarNeg == cap.rtgMaxVarNeg
    assert settings.setMinPFOverExcited == cap.rtgMinPFOverExcited
    assert settings.setMinPFUnderExcited == cap.rtgMinPFUnderExcited
    assert settings.setMinWh.value * 10**settings.setMinWh.multiplier == 1350
    assert b"csipaus.org/ns" in to_xml(settings) and settings.setMinWh is not None
    # a v1.2 document (no storage extension) carries no v1.3 element
    assert m.der_settings(PV, 500).setMinWh is None


def test_device_category_names_the_site_devices() -> None:
    """EndDevice.deviceCategory (IEEE 2030.5-2018 DeviceCategoryType, HexBinary32): bit 21 photovoltaic
    system, 25 other storage system, 23 combined PV and storage, 17 EVSE, 10 simple misc. loads (DRA-01
    asks that one is set)."""
    assert m.device_category(["pv", "meter"]) == f"{1 << 21:08X}"
    assert m.device_category(["battery"]) == f"{1 << 25:08X}"
    assert m.device_category(["pv", "battery", "meter"]) == f"{(1 << 21) | (1 << 23) | (1 << 25):08X}"
    assert m.device_category(["evse", "switched_load"]) == f"{(1 << 17) | (1 << 10):08X}"
    assert m.device_category(["meter"]) is None


def test_aggregate_device_sums_ratings_and_weights_soc_by_energy() -> None:
    agg = m.aggregate_device([PV, BATTERY, BATTERY_2])
    assert agg.rtg_max_w == 14000 and agg.der_type == m.DER_TYPE_PV_AND_STORAGE
    assert agg.modes_supported == PV.modes_supported | BATTERY.modes_supported | BATTERY_2.modes_supported
    assert agg.rtg_max_wh == 20000
    assert agg.measurements.soc_pct == pytest.approx((40 * 13500 + 90 * 6500) / 20000)
    assert agg.measurements.w == pytest.approx(2100)
    assert m.aggregate_device([BATTERY, BATTERY_2]).der_type == m.DER_TYPE_STORAGE
    assert m.aggregate_device([PV]) is PV
    with pytest.raises(m.MappingError):
        m.aggregate_device([])


def test_telemetry_reading_types_roles_and_scaling() -> None:
    snapshot = m.SiteSnapshot(
        m.Measurements(w=-1234.4, var=55, v={"A": 230.14, "B": 231.0, "C": 229.96}, hz=49.987), [PV, BATTERY]
    )
    batches = m.site_readings(LFDI, snapshot, 7000, 60)
    assert [p.key for p, _ in batches] == ["site", "der:pv-1", "der:bat-1"]
    points = {p.key: p for p, _ in batches}
    assert points["site"].role_flags == "0003" and points["der:pv-1"].role_flags == "0049"
    readings = {}
    for point, doc in batches:
        validate(to_xml(doc))
        validate(to_xml(m.mirror_usage_point(point, LFDI)))
        for mmr in doc.MirrorMeterReading:
            readings[(point.key, mmr.description)] = mmr
    site_w = readings[("site", "Active power (W)")]
    assert site_w.Reading.value == -1234 and site_w.Reading.timePeriod.start == 7000
    rt = site_w.ReadingType
    assert (rt.uom, rt.kind, rt.flowDirection, rt.phase, rt.powerOfTenMultiplier) == (38, 37, 1, None, 0)
    assert readings[("der:pv-1", "Active power (W)")].ReadingType.flowDirection == 19
    assert readings[("site", "Reactive power (VAr)")].ReadingType.uom == 63
    volts_b = readings[("site", "Voltage phase B (V)")]
    assert volts_b.Reading.value == 2310 and volts_b.ReadingType.phase == 65
    assert volts_b.ReadingType.powerOfTenMultiplier == -1 and volts_b.ReadingType.uom == 29
    assert readings[("site", "Voltage phase A (V)")].ReadingType.phase == 129
    assert readings[("site", "Voltage phase C (V)")].ReadingType.phase == 33
    hz = readings[("site", "Frequency (Hz)")]
    assert hz.Reading.value == 4999 and hz.ReadingType.uom == 33 and hz.ReadingType.powerOfTenMultiplier == -2
    # CSIP-AUS: SoC is DERStatus.stateOfChargeStatus, never a reading; every ReadingType has a real uom
    assert not any("charge" in (d or "") for _, d in readings)
    assert all(mmr.ReadingType.uom in (38, 63, 29, 33, 72) for mmr in readings.values())
    assert m.der_status(BATTERY, 7000).stateOfChargeStatus.value == 4000
    # ... and the energy it holds is a DER reading in Wh (kind energy): 40 % of 13.5 kWh
    wh = readings[("der:bat-1", "Stored energy (Wh)")]
    assert wh.Reading.value == 5400 and (wh.ReadingType.uom, wh.ReadingType.kind) == (72, 12)
    assert ("der:pv-1", "Stored energy (Wh)") not in readings
    # the MirrorUsagePoint goes with its first readings (and validates so)
    first = m.mirror_usage_point(points["site"], LFDI, batches[0][1].MirrorMeterReading)
    validate(to_xml(first))
    assert len(first.MirrorMeterReading) == len(batches[0][1].MirrorMeterReading)
    # stable identifiers: the same site gives the same mRIDs on every run
    again = m.site_readings(LFDI, snapshot, 7060, 60)
    assert [p.mrid for p, _ in again] == [p.mrid for p, _ in batches]
    assert [x.mRID for x in again[0][1].MirrorMeterReading] == [
        x.mRID for x in batches[0][1].MirrorMeterReading
    ]
    with pytest.raises(m.MappingError, match="phase"):
        m.site_readings(LFDI, m.SiteSnapshot(m.Measurements(v={"X": 1.0})), 0, 60)


async def test_outbox_is_durable_ordered_and_moves_rejected_entries_aside(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    box = Outbox(path)
    await box.put("response", "/rsps/1/rsp", b"<a/>", {"n": 1}, 1.0)
    await box.put_many(
        [("readings", "site", b"<b/>", {"n": 2}, 2.0), ("readings", "site", b"<c/>", {"n": 3}, 3.0)]
    )
    box.close()
    box = Outbox(path)  # as after a restart
    entries = await box.peek()
    assert [e.meta["n"] for e in entries] == [1, 2, 3] and entries[0].body == b"<a/>"
    await box.failed(entries[0], "boom")
    await box.delivered(entries[1])
    await box.reject(entries[2], "HTTP 400")
    entries = await box.peek()
    assert [(e.meta["n"], e.attempts) for e in entries] == [(1, 1)]
    assert await box.pending() == 1 and await box.rejected() == 1
    box.close()
    await asyncio.sleep(0)
