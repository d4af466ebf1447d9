"""The installer page's pure parts: the one-time PIN, form fields parsed like the CLI's flags, and a
flow failure mapped to the form field it is about."""

from __future__ import annotations

import pytest

from gateway.web.installer import FORM, BadField, _parse, field_of
from gateway.web.status_page import limit_rows


def _field(name: str):  # type: ignore[no-untyped-def]
    return next(f for fs in FORM.values() for f in fs if f.name == name)


def test_one_time_pin_works_once_and_is_replaced_after_five_wrong_tries() -> None:
    from gateway.web.auth import OneTimePin

    shown: list[str] = []
    pin = OneTimePin(shown.append)
    first = shown[-1]
    assert len(first) == 6 and first.isdigit()
    assert pin.check(first)
    assert len(shown) == 2  # a fresh PIN replaced the one just used
    current = shown[-1]
    wrong = str((int(current) + 1) % 10**6).zfill(6)
    for _ in range(4):
        assert not pin.check(wrong)
    assert shown[-1] == current and len(shown) == 2  # four wrong tries: still the same PIN
    assert not pin.check(wrong)
    assert len(shown) == 3  # the fifth: replaced
    assert not pin.check(current) or shown[-1] == current  # the old PIN no longer works (unless redrawn)


def test_form_fields_parse_like_the_cli_flags_and_errors_name_the_field() -> None:
    assert _parse(_field("scan"), "127.0.0.1:502, 10.0.0.0/30") == ["127.0.0.1:502", "10.0.0.0/30"]
    assert _parse(_field("export_limit_w"), " 5000 ") == 5000.0
    assert _parse(_field("export_limit_w"), "") is None  # not given
    assert _parse(_field("pin"), "012345") == 12345
    assert _parse(_field("comms_timeout_s"), "300") == 300
    for name, text, says in [
        ("export_limit_w", "lots", "expected a number"),
        ("export_limit_w", "-5", ">= 0"),
        ("export_limit_w", "nan", ">= 0"),
        ("pin", "1234567", "up to 6 digits"),
        ("units", "1-300", "0..247"),
        ("scan", "host:99999", "ports must be within"),
        ("comms_timeout_s", "0", "> 0"),
        ("server_mode", "push", "poll or subscribe"),
    ]:
        with pytest.raises(BadField) as err:
            _parse(_field(name), text)
        assert err.value.name == name and says in str(err.value), (name, str(err.value))


def test_a_flow_failure_points_at_the_field_its_flag_names() -> None:
    assert field_of("--export-limit-w: required (not running interactively)", None) == "export_limit_w"
    assert field_of("NMI malformed: too short", "rerun with --nmi set to the NMI") == "nmi"
    assert field_of("--fallback-export-w 2000 is above the static export limit", None) == "fallback_export_w"
    assert field_of("cannot connect", "check --dcap-url (host and port)") == "dcap_url"
    assert field_of("something else", "rerun") is None


def test_status_rows_say_which_source_set_each_limit() -> None:
    rows = {r["key"]: r for r in limit_rows({
        "export_w": {"value": 1500.0, "source": "INSTALLER", "detail": "comms-loss fallback"},
        "import_w": {"value": None, "source": None, "detail": ""},
        "connect": {"value": False, "source": "LOCAL_EMERGENCY", "detail": "DRM 0"},
        "target_w": {"value": 2000.0, "requested": 3000.0, "source": "AGGREGATOR", "detail": "HEMS",
                     "clipped_by": "UTILITY", "clip_detail": "DOE"},
    })}  # fmt: skip
    assert rows["export_w"]["value"] == "1500 W" and rows["export_w"]["source"] == "INSTALLER"
    assert rows["import_w"]["value"] == "unlimited" and rows["import_w"]["source"] == "—"
    assert rows["connect"]["value"] == "no"
    assert "requested 3000 W, clipped by UTILITY" in rows["target_w"]["detail"]
