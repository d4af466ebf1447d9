"""The installer's commissioning page and the gateway's status page in a real browser (Debian's Chromium
driven by Playwright), against the commissioning bench: our utility server over real mutual TLS and a
simulated PV + battery + meter site over real Modbus TCP (tests.test_commissioning_harness).

One walk: log in with the one-time PIN, scan, identity (with its QR code), site record with a bad NMI
and then a good one, registration, the end-to-end verification with live values, the report; then the
commissioned gateway runs from the site.toml the page wrote and its status page shows the limits.
"""

from __future__ import annotations

import aiohttp
from aiohttp import web

from certs.pki import PkiPaths
from gateway.commissioning import CommissioningState
from gateway.config import load_settings
from gateway.runtime import GatewayRuntime
from gateway.web.installer import Installer, create_installer_app
from server.store import build_control_base
from tests.browser import SHOTS, assert_no_sideways_scroll, chromium, needs_chromium
from tests.test_commissioning_harness import DNSP_PIN, NMI, Bench
from tests.test_gateway_runtime_harness import wait_until

pytest_plugins = ["tests.test_commissioning_harness"]
pytestmark = needs_chromium

TUNING = dict(scan_timeout_s=0.5, request_timeout_s=3.0, register_timeout_s=10.0, verify_window_s=4.0,
              telemetry_timeout_s=10.0, loop_period_s=0.5)  # fmt: skip


async def _status(page, step: str, want: str, within: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    """Wait for a step's badge (the page reloads itself when the flow stops)."""
    try:
        await page.locator(f"#status-{step}", has_text=want).wait_for(timeout=within * 1000)
    except Exception:
        print(await page.inner_text("main"))
        raise


async def _submit(page, step: str) -> None:  # type: ignore[no-untyped-def]
    async with page.expect_navigation():
        await page.click(f"#form-{step} button[type=submit]")


async def test_commission_a_site_in_chromium_then_its_status_page(bench: Bench, dnsp_pki: PkiPaths) -> None:
    pins: list[str] = []
    installer = Installer(bench.work_dir, announce=pins.append, defaults=TUNING)
    runner = web.AppRunner(create_installer_app(installer), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    SHOTS.mkdir(parents=True, exist_ok=True)
    runtime: GatewayRuntime | None = None
    try:
        # No session: writes go nowhere and the state stays untouched.
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/installer/step/discover", data={"scan": "x"},
                                 allow_redirects=False) as resp:  # fmt: skip
                assert resp.status == 303 and resp.headers["Location"] == "/installer/login"
            async with http.get(f"{base}/installer/job.json") as resp:
                assert resp.status == 401
        assert not (bench.work_dir / "installer-inputs.json").exists()

        async with chromium() as browser:
            ctx = await browser.new_context(viewport={"width": 1200, "height": 900})
            page = await ctx.new_page()
            await page.goto(f"{base}/installer/")
            assert page.url.endswith("/installer/login")
            await page.fill("#pin", "000000" if pins[-1] != "000000" else "111111")
            await page.click("button[type=submit]")
            assert "wrong PIN" in await page.inner_text("main")
            first_pin = pins[-1]
            await page.fill("#pin", first_pin)
            await page.click("button[type=submit]")
            await page.wait_for_url(f"{base}/installer/")
            cookie = next(c for c in await ctx.cookies() if c["name"] == "derlink_gw_session")
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
            assert not cookie["secure"]  # plain HTTP on loopback; Secure is set when TLS serves the page
            assert pins[-1] != first_pin  # one-time: a fresh PIN replaced the one just used
            other = await browser.new_context()
            opage = await other.new_page()
            await opage.goto(f"{base}/installer/login")
            await opage.fill("#pin", first_pin)
            await opage.click("button[type=submit]")
            assert "wrong PIN" in await opage.inner_text("main")
            # With a session but without the CSRF token, a write is refused.
            where = await opage.evaluate("async () => (await fetch('/installer/step/discover', "
                                         "{method: 'POST', body: new FormData()})).url")  # fmt: skip
            assert where.endswith("/installer/login")  # not logged in there: sent to the login page
            await other.close()
            status = await page.evaluate("async () => (await fetch('/installer/step/discover', "
                                         "{method: 'POST', body: new FormData()})).status")  # fmt: skip
            assert status == 403

            # 1. Discover: the devices with their nameplate.
            await page.fill("#f-scan", ", ".join(bench.scan()))
            await page.fill("#f-units", "1-3")
            await _submit(page, "discover")
            await _status(page, "discover", "done")
            devices = await page.inner_text("#devices")
            assert "5000 W" in devices and "meter" in devices and "battery" in devices
            # The flow went on to the identity step and waits for a certificate for its CSR.
            await _status(page, "identity", "needs input")
            assert "waiting for a certificate" in await page.inner_text("#msg-identity")
            assert await page.locator("a[href='/installer/download/gateway.csr']").count() == 1

            # 2. Identity: signed by the lab's CA; LFDI/SFDI/PIN to read to the DNSP, also as a QR code.
            await page.fill("#f-sign_with_ca", str(dnsp_pki.directory))
            await page.fill("#f-pin", str(DNSP_PIN))
            await _submit(page, "identity")
            await _status(page, "identity", "done")
            lfdi = (await page.inner_text("#lfdi")).replace("-", "").replace(" ", "").strip()
            sfdi = (await page.inner_text("#sfdi")).replace("-", "").replace(" ", "").strip()
            assert len(lfdi) == 40 and sum(int(c) for c in sfdi) % 10 == 0  # the SFDI's check digit
            assert await page.inner_text("#pin-value") == f"{DNSP_PIN:06d}"
            assert await page.locator("figure.qr svg path").count() == 1
            await _status(page, "site", "needs input")
            assert "--export-limit-w: required" in await page.inner_text("#msg-site")

            # The DNSP registers the site out-of-band from what the installer read out, with a test DOE.
            await bench.register_site(lfdi)
            mrid = await bench.admin.create_control(
                "doe", f"site:{lfdi}", duration=900, base=build_control_base(export_limit_w=2500)
            )

            # 3. Site: a bad number is refused next to its field and nothing is stored ...
            await page.fill("#f-export_limit_w", "lots")
            await page.fill("#f-fallback_export_w", "1500")
            await _submit(page, "site")
            err = await page.inner_text('[data-error-for="export_limit_w"]')
            assert "expected a number" in err
            assert "export_limit_w" not in installer.inputs()
            # ... a malformed NMI is named next to the NMI field (the limits are applied already) ...
            await page.fill("#f-export_limit_w", "3000")
            await page.fill("#f-nmi", "41020000")
            await _submit(page, "site")
            await _status(page, "site", "failed")
            assert "NMI malformed" in await page.inner_text('[data-error-for="nmi"]')
            # ... and the right one.
            await page.fill("#f-nmi", NMI)
            await _submit(page, "site")
            await _status(page, "site", "done")
            assert NMI in await page.inner_text("#site-record")
            assert "30 %" in await page.inner_text("#static-cap")  # 3 kW over 10 kW of inverters
            await _status(page, "register", "needs input")
            await page.screenshot(path=str(SHOTS / "installer.png"), full_page=True)

            # 4-6. Register, verify end to end (live values while it runs), report.
            await page.fill("#f-dcap_url", bench.dcap_url)
            await page.set_input_files("#f-server_ca", str(dnsp_pki.ca_chain))
            await _submit(page, "register")
            live = page.locator("#live tbody tr")
            await wait_until(lambda: live.count(), 15, "live values")
            assert " W" in await page.inner_text("#live")
            await _status(page, "report", "done", within=60)
            assert NMI in await page.inner_text("#registration")
            assert "out-of-band" in await page.inner_text("#registration")
            assert await page.inner_text("#verify-result") == "PASSED"
            assert mrid.upper() in (await page.inner_text("#test-control")).upper()
            report = await page.evaluate(
                "async () => (await fetch('/installer/download/report.json')).json()"
            )
            assert report["site"]["nmi"] == NMI and report["verification"]["passed"] is True
            assert report["identity"]["lfdi"] == lfdi and "key_path" not in report["identity"]
            await page.screenshot(path=str(SHOTS / "installer-done.png"), full_page=True)
            state = CommissioningState.load(bench.work_dir / "commissioning.json")
            assert state.first_unfinished() is None

            # On a phone: no sideways scrolling.
            phone = await browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
            ppage = await phone.new_page()
            await ppage.goto(f"{base}/installer/login")
            await ppage.fill("#pin", pins[-1])
            await ppage.click("button[type=submit]")
            await ppage.wait_for_url(f"{base}/installer/")
            await assert_no_sideways_scroll(ppage)
            await phone.close()

            # The commissioned gateway runs from the page's site.toml; its status page shows its limits.
            settings = load_settings(bench.work_dir / "site.toml")
            runtime = GatewayRuntime(settings)
            await runtime.start()
            assert runtime.client is not None
            await runtime.client.wait_ready(10)
            ui = f"http://127.0.0.1:{runtime.local_api_port}/ui/"
            await page.goto(ui)
            assert page.url.endswith("/ui/login")
            await page.fill("#pin", "not-the-token")
            await page.click("button[type=submit]")
            assert "wrong token" in await page.inner_text("main")
            await page.fill("#pin", settings.local_api.token or "")
            await page.click("button[type=submit]")
            await page.wait_for_url(ui)

            async def doe_in_force() -> bool:
                await page.reload()
                return "2500 W" in await page.inner_text("#export-limit")

            await wait_until(doe_in_force, 15, "the DOE on the status page")
            row = await page.inner_text("tr[data-limit=export_w]")
            assert "2500 W" in row and "UTILITY" in row and mrid.upper() in row.upper()  # which DERControl
            assert await page.inner_text("#comms") == "online"
            assert "UTC (in " in await page.inner_text("#next-change")  # the DOE's end
            assert "export_w: 2500 W" in await page.inner_text("#explain")
            await page.screenshot(path=str(SHOTS / "gateway-status.png"), full_page=True)
            async with aiohttp.ClientSession() as http:  # the JSON API still wants its bearer token
                async with http.get(f"http://127.0.0.1:{runtime.local_api_port}/status") as resp:
                    assert resp.status == 401
    finally:
        if runtime is not None:
            await runtime.stop()
        await runner.cleanup()
