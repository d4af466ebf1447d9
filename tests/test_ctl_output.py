"""`derlink ctl` output that fits a terminal (issue 13 item 7): identifiers are never cut short (a list
too wide for the terminal prints one block of fields per item; long values fold), nested data reads as
fields rather than JSON, and every command takes ``--json`` for scripts, before or after its action."""

from __future__ import annotations

import argparse
import json

import pytest

from server.ctl import _commands, _show, register

LFDI = "ABCDEF0123456789ABCDEF0123456789ABCDEF01"
SITE = {
    "lfdi": LFDI, "sfdi": 123456789012, "nmi": "4102000001", "label": "house 1",
    "groups": ["zone-1", "zone-2"], "comms": "online", "target": f"site:{LFDI}",
    "limits": {"export_limit_w": 1500, "modes": ["opModExpLimW", "opModImpLimW"]},
}  # fmt: skip


def _printed(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, payload: object,
             width: int = 80, json_: bool = False) -> str:  # fmt: skip
    monkeypatch.setenv("COLUMNS", str(width))
    _show(argparse.Namespace(json=json_), payload, title="sites list")
    return capsys.readouterr().out


def test_a_list_too_wide_for_the_terminal_prints_whole_identifiers(capsys, monkeypatch) -> None:
    out = _printed(capsys, monkeypatch, {"items": [SITE, {**SITE, "nmi": "4102000002"}], "total": 2})
    assert max(len(line) for line in out.splitlines()) <= 80
    assert out.count(LFDI) == 4 and "…" not in out  # lfdi and target of both sites, whole
    assert "sites list #1" in out and "sites list #2" in out
    assert "export_limit_w: 1500 W; modes: opModExpLimW, opModImpLimW" in out  # fields, not JSON
    assert "{" not in out and '"' not in out


def test_a_list_that_fits_stays_a_table(capsys, monkeypatch) -> None:
    item = {"name": "zone-1", "members": 3, "duration": 90}
    out = _printed(capsys, monkeypatch, {"items": [item], "total": 1})
    assert "┃ name" in out and "zone-1" in out and "total=1" in out
    assert "│ 3 " in out and "90 s" in out  # a count stays a number; a duration is in seconds


def test_a_long_value_folds_instead_of_being_cut(capsys, monkeypatch) -> None:
    out = _printed(capsys, monkeypatch, {"lfdi": LFDI, "ders": [{"role": "pv", "der": {"w": 5000}}]}, 40)
    assert "…" not in out
    assert LFDI in "".join(line.strip(" │") for line in out.splitlines())  # folded across lines, all there
    assert "w: 5000" in out  # "w" alone is not a unit suffix


def test_json_prints_the_structure(capsys, monkeypatch) -> None:
    out = _printed(capsys, monkeypatch, {"items": [SITE], "total": 1}, json_=True)
    assert json.loads(out)["items"][0]["limits"]["modes"] == ["opModExpLimW", "opModImpLimW"]


def _leaves(parser: argparse.ArgumentParser, path: list[str]):  # type: ignore[no-untyped-def]
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
        return
    for name, child in subs[0].choices.items():
        yield from _leaves(child, [*path, name])


def test_every_ctl_command_takes_json_after_its_action() -> None:
    top = argparse.ArgumentParser()
    register(top.add_subparsers(dest="command"))
    ctl = top._subparsers._group_actions[0].choices["ctl"]  # type: ignore[union-attr]
    known = set(_commands())
    seen = set()
    for path, leaf in _leaves(ctl, ["ctl"]):
        given = [a.choices[0] if a.choices else "1" for a in leaf._actions
                 if not a.option_strings and a.nargs != 0]  # fmt: skip
        for a in leaf._actions:  # required options: a value of their type
            if a.option_strings and a.required:
                given += [a.option_strings[0], a.choices[0] if a.choices else "1"]
        args = top.parse_args([*path, *given, "--json"])
        assert args.json is True, path
        seen.add((path[1], path[2] if len(path) > 2 else None))
    assert known <= seen  # every head-end command was tried (and incidents' own, server.incidents.ctl)
