"""The interactive flow, driven through a pseudo-terminal (pexpect): `derlink gateway commission` asks for
everything, the installer answers, the DNSP registers the site after hearing the LFDI/SFDI/PIN, and the flow
completes on a simulated site against our server."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path

import pexpect

from certs.pki import sign_csr
from gateway.config import lfdi_from_cert_file
from tests.test_commissioning_harness import Bench

pytest_plugins = ["tests.test_commissioning_harness"]
ROOT = Path(__file__).resolve().parent.parent


def drive(bench: Bench, loop: asyncio.AbstractEventLoop, transcript: list[str]) -> int:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "200"}
    work = bench.work_dir
    child = pexpect.spawn(
        sys.executable,
        [
            "-m",
            "derlink",
            "gateway",
            "commission",
            "--dir",
            str(work),
            "--scan-timeout",
            "2",  # 0.5 s failed on a loaded machine: the simulated site (in this process) answered late
            "--verify-window",
            "4",
            "--telemetry-timeout",
            "10",
            "--register-timeout",
            "10",
            "--loop-period",
            "0.5",
        ],
        cwd=str(ROOT),
        env=env,
        encoding="utf-8",
        timeout=30,
        dimensions=(60, 200),
    )
    child.logfile_read = _Collector(transcript)
    try:
        child.expect("addresses to scan")
        child.sendline(",".join(bench.scan()))
        child.expect("unit IDs to try")
        child.sendline("")  # default 1-3
        child.expect("Are these roles right")
        child.sendline("y")
        child.expect("certificate file")
        # The installer sends the CSR to the DNSP's CA and gets a certificate back.
        issued = sign_csr(
            bench.pki.directory, work / "identity" / "gateway.csr", out=bench.tmp / "issued.pem"
        )
        child.sendline(str(issued.chain_path))
        child.expect(r"PIN\s+(\d{6})")
        pin = int(child.match.group(1))
        # The DNSP registers the gateway out-of-band, from what the installer read out.
        lfdi = lfdi_from_cert_file(issued.cert_path)
        asyncio.run_coroutine_threadsafe(bench.register_site(lfdi, pin=pin), loop).result(10)
        child.expect("Static export limit")
        child.sendline("3000")
        child.expect("Static import limit")
        child.sendline("")
        child.expect("Static generation limit")
        child.sendline("")
        child.expect("fallback export limit")
        child.sendline("1500")
        child.expect("fallback import limit")
        child.sendline("")
        child.expect("fallback generation limit")
        child.sendline("")
        child.expect("static limit applied")
        child.expect("NMI")
        child.sendline("41020000O7")  # a typo: the letter O
        child.expect("letters I or O")
        child.expect("NMI")
        child.sendline("41020000777")  # with its checksum digit
        child.expect("DeviceCapability URL")
        child.sendline(bench.dcap_url)
        child.expect("CA chain file")
        child.sendline(str(bench.pki.ca_chain))
        child.expect("Verified end to end", timeout=60)
        child.expect("Commissioning complete.", timeout=30)
        child.expect(pexpect.EOF)
    finally:
        child.close()
    return int(child.exitstatus if child.exitstatus is not None else -1)


class _Collector:
    def __init__(self, out: list[str]) -> None:
        self.out = out

    def write(self, text: str) -> None:
        self.out.append(text)

    def flush(self) -> None:
        pass


async def test_interactive_flow_completes_on_a_simulated_site(bench: Bench) -> None:
    transcript: list[str] = []
    loop = asyncio.get_running_loop()
    try:
        status = await asyncio.to_thread(drive, bench, loop, transcript)
    except pexpect.ExceptionPexpect as exc:
        raise AssertionError(f"{exc}\n--- transcript ---\n{''.join(transcript)[-4000:]}") from None
    text = "".join(transcript)
    assert status == 0, text[-3000:]
    report = json.loads((bench.work_dir / "report.json").read_text())
    assert report["site"]["nmi"] == "4102000077" and report["site"]["nmi_checksum"] == 7
    assert report["verification"]["passed"] is True
    assert report["verification"]["local"]["meter"]["saw_effect"] is True
    assert report["registration"]["registered"] == "out-of-band"
    assert re.search(r"SFDI\s+\d{1,3}(-\d{3})+", text), "SFDI grouped for reading aloud"
    assert (bench.work_dir / "report.html").exists() and (bench.work_dir / "site.toml").exists()
