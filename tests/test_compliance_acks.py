"""Acknowledgement summary per control (issue 13 item 3; IEEE 2030.5-2018 §12.1.3 Response, Table 27)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from sep2 import resources as r
from server.compliance.acks import ack_csv, ack_summary
from server.store import RequestScope, Store, build_control_base

T0 = 1_800_000_000


@pytest.fixture
async def store(tmp_path: Path):
    s = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    s.now = T0
    s.clock = lambda: s.now
    await s.admin.ensure_standard_programs()
    yield s
    await s.close()


def _lfdi(n: int) -> str:
    return f"{n:040X}"


async def test_group_control_over_100_sites_with_10_silent(store: Store) -> None:
    admin = store.admin
    await admin.create_group("feeder-1")
    await admin.create_group("feeder-1a", parent="feeder-1")  # nested: its sites are targeted too
    await admin.create_group("elsewhere")
    for n in range(1, 101):
        await admin.register_site(_lfdi(n), groups_=["feeder-1a" if n % 2 else "feeder-1"])
    await admin.register_site(_lfdi(999), groups_=["elsewhere"])  # not targeted
    mrid = await admin.create_control(
        "doe", "group:feeder-1", duration=600, base=build_control_base(export_limit_w=1000)
    )
    silent = {_lfdi(n) for n in range(91, 101)}
    for n in range(1, 91):
        store.now = T0 + n  # all within the 300 s allowed
        for status in (1, 2) if n <= 80 else (1, 253):
            await store.post_response(
                RequestScope(lfdi=_lfdi(n), kind="device"),
                r.Response(subject=mrid, endDeviceLFDI=_lfdi(n), status=status, createdDateTime=store.now),
            )
    async with store.read() as conn:
        early = await ack_summary(conn, mrid, now=T0 + 100, within_s=300)
        summary = await ack_summary(conn, mrid, now=T0 + 301, within_s=300)
        text = await ack_csv(conn, mrid, within_s=300)
    # Before the allowance has passed, the silent sites are awaited, not yet non-responders.
    assert early["non_responders"] == [] and set(early["awaiting"]) == silent
    assert summary["sites_targeted"] == 100 and summary["acknowledged"] == 90 and summary["none"] == 10
    assert set(summary["non_responders"]) == silent and summary["awaiting"] == []
    assert summary["by_status"] == {"received": 90, "started": 80, "rejected: expired": 10}
    assert summary["latest"] == {"started": 80, "rejected: expired": 10, "none": 10}
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 100 and {row["lfdi"] for row in rows if row["latest"] == "none"} == silent
    assert next(row for row in rows if row["lfdi"] == _lfdi(5))["statuses"] == "1 2"


async def test_late_answers_and_unknown_controls(store: Store) -> None:
    await store.admin.register_site(_lfdi(1))
    mrid = await store.admin.create_control(
        "doe", f"site:{_lfdi(1)}", duration=600, base=build_control_base(export_limit_w=1000)
    )
    store.now = T0 + 400
    await store.post_response(
        RequestScope(lfdi=_lfdi(1), kind="device"),
        r.Response(subject=mrid, endDeviceLFDI=_lfdi(1), status=1, createdDateTime=store.now),
    )
    async with store.read() as conn:
        summary = await ack_summary(conn, mrid, now=T0 + 500, within_s=300)
        assert summary["acknowledged"] == 1 and summary["late"] == [_lfdi(1)]
        with pytest.raises(LookupError, match="no control"):
            await ack_summary(conn, "00" * 16, now=T0)
        with pytest.raises(ValueError, match="within"):
            await ack_summary(conn, mrid, now=T0, within_s=-1)
