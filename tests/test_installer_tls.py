"""The installer page over HTTPS (issue 14, installer page on the local network): ``derlink gateway
installer --tls`` makes a self-signed certificate on its first start, prints its SHA-256 fingerprint (and
a QR code of the page's address carrying it), and serves the page with it; Chromium, which cannot trust a
self-signed certificate, is checked against that fingerprint instead, as the installer does by eye."""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import os
import re
import sys
from pathlib import Path

import pytest
from cryptography import x509

from gateway.web.installer import tls_for
from gateway.web.tls import TlsError, fingerprint, self_signed
from tests.browser import chromium, needs_chromium

ROOT = Path(__file__).resolve().parent.parent


def _args(tmp_path: Path, **kw: object) -> argparse.Namespace:
    base = {"dir": tmp_path, "listen": ("127.0.0.1", 0), "tls": False, "tls_cert": None, "tls_key": None}
    return argparse.Namespace(**{**base, **kw})


def test_self_signed_certificate_is_made_once_and_kept(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path, "192.0.2.7")
    first = fingerprint(cert.read_bytes())
    assert re.fullmatch(r"([0-9A-F]{2}:){31}[0-9A-F]{2}", first)
    assert key.stat().st_mode & 0o077 == 0  # the private key is the owner's only
    san = x509.load_pem_x509_certificate(cert.read_bytes()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert "192.0.2.7" in {str(ip) for ip in san.value.get_values_for_type(x509.IPAddress)}
    again, _ = self_signed(tmp_path, "192.0.2.7")  # a restart: the same certificate, the same fingerprint
    assert fingerprint(again.read_bytes()) == first


def test_tls_options_name_the_flag(tmp_path: Path) -> None:
    assert tls_for(_args(tmp_path)) is None  # plain HTTP unless asked
    with pytest.raises(TlsError, match="--tls-cert and --tls-key"):
        tls_for(_args(tmp_path, tls_cert=tmp_path / "c.pem"))
    cert, _ = self_signed(tmp_path / "a")
    _, other_key = self_signed(tmp_path / "b")
    with pytest.raises(TlsError, match=r"--tls-key .* does not belong to --tls-cert"):
        tls_for(_args(tmp_path, tls_cert=cert, tls_key=other_key))
    with pytest.raises(TlsError, match=r"--tls-cert .*missing\.pem: no such file"):
        tls_for(_args(tmp_path, tls_cert=tmp_path / "missing.pem", tls_key=other_key))


@needs_chromium
async def test_installer_page_is_served_over_https_with_the_printed_fingerprint(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "derlink", "gateway", "installer", "--dir", str(tmp_path / "commissioning"),
        "--listen", "127.0.0.1:0", "--tls",
        stdout=asyncio.subprocess.PIPE, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert proc.stdout is not None
    printed = ""
    try:
        async with asyncio.timeout(30):
            while "one-time PIN" not in printed:
                line = await proc.stdout.readline()
                assert line, f"the installer exited: {printed}"
                printed += line.decode(errors="replace")
        printed_fp = re.search(r"SHA-256 fingerprint: ([0-9A-F:]{95})", printed).group(1)  # type: ignore[union-attr]
        url, pin = re.search(r"installer page (https://\S+) — one-time PIN: (\d{6})", printed).groups()  # type: ignore[union-attr]
        origin = url.removesuffix("/installer/")
        async with chromium() as browser:
            ctx = await browser.new_context(ignore_https_errors=True)  # self-signed: pinned, not trusted
            page = await ctx.new_page()
            cdp = await ctx.new_cdp_session(page)
            await cdp.send("Network.enable")  # before the page loads, so the browser keeps its certificate
            response = await page.goto(url)
            assert response is not None and page.url == f"{origin}/installer/login"
            assert page.url.startswith("https://")
            details = await response.security_details()
            assert details is not None and details.get("protocol") in ("TLS 1.2", "TLS 1.3")
            # The certificate Chromium was given is the one whose fingerprint the gateway printed.
            chain = (await cdp.send("Network.getCertificate", {"origin": origin}))["tableNames"]
            seen = hashlib.sha256(base64.b64decode(chain[0])).hexdigest().upper()
            assert ":".join(re.findall("..", seen)) == printed_fp
            await page.fill("#pin", pin)
            await page.click("button[type=submit]")
            await page.wait_for_url(f"{origin}/installer/")
            cookie = next(c for c in await ctx.cookies() if c["name"] == "derlink_gw_session")
            assert cookie["secure"] and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
            assert "Discover" in await page.inner_text("main")
    finally:
        proc.terminate()
        await proc.wait()
