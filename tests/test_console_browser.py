"""The operator console in a real browser (Debian's Chromium driven by Playwright), against a real server
over mutual TLS with a simulated site and its gateway (tests.test_gateway_runtime_harness).

One walk through the console, as an operator and then as a viewer, with the security checks on the way:
the session cookie's attributes, CSRF on every write, a ``<script>`` label escaped. Screenshots of the
main pages go to docs/screenshots/ with DERLINK_SCREENSHOTS=1 (see tests/browser.py).
"""

from __future__ import annotations

import time
from pathlib import Path

import aiohttp

from tests.browser import (
    SHOTS,
    assert_no_sideways_scroll,
    chromium,
    focus_outline,
    needs_chromium,
    tab_to,
)
from tests.test_gateway_runtime_harness import Pki, make_lab, wait_until

pytest_plugins = ["tests.test_gateway_runtime_harness"]

OPERATOR = "operator-token-0123456789"
VIEWER = "viewer-token-0123456789ab"
EVIL = "<script>window.__pwned = 1</script>"

pytestmark = needs_chromium


def _rose(locator, first: int):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        return int(await locator.inner_text()) > first

    return check


async def _login(page, base: str, token: str) -> None:  # type: ignore[no-untyped-def]
    await page.goto(f"{base}/console/")
    assert "/console/login" in page.url  # no session: sent to the login page
    await page.fill("#token", token)
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{base}/console/")


async def test_console_operator_and_viewer_in_chromium(tmp_path: Path, gw_pki: Pki) -> None:
    tokens = [
        {"name": "alice", "token": OPERATOR, "role": "operator"},
        {"name": "victor", "token": VIEWER, "role": "viewer"},
    ]
    async with make_lab(tmp_path, gw_pki, headend_enabled=True, headend_port=0, headend_tokens=tokens) as lab:
        admin = lab.admin
        await admin.create_group("zone-a", description="Feeder A")
        await admin.set_membership(lab.lfdi, "zone-a", True)
        await admin.register_site("AB" * 20, nmi="4102000999", label=EVIL)
        gw = await lab.gateway()
        assert gw.client is not None
        await gw.client.wait_ready(10)
        base = f"http://127.0.0.1:{lab.server.headend_port}"
        SHOTS.mkdir(parents=True, exist_ok=True)

        # No session, no CSRF: the API refuses writes that a browser could be tricked into sending.
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/api/controls", json={"program": "doe"}) as resp:
                assert resp.status == 401

        async with chromium() as browser:
            ctx = await browser.new_context(viewport={"width": 1280, "height": 900})
            page = await ctx.new_page()
            dialogs: list[str] = []
            page.on("dialog", lambda d: dialogs.append(d.message))

            # Login: a wrong token is refused, the right one sets the session cookie.
            await page.goto(f"{base}/console/login")
            await page.fill("#token", "not-a-real-token-at-all")
            await page.click("button[type=submit]")
            assert "token: unknown token" in await page.inner_text("main")
            await _login(page, base, OPERATOR)
            cookie = next(c for c in await ctx.cookies() if c["name"] == "derlink_session")
            assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
            assert cookie["secure"] is False  # plain HTTP on loopback here; Secure is set when TLS serves it
            assert "alice (operator)" in await page.inner_text("header")
            assert await page.inner_text("#sites-total") == "2"
            await page.screenshot(path=str(SHOTS / "overview.png"), full_page=True)

            # With the session but without the CSRF header, a write is refused (and nothing changes).
            status = await page.evaluate(
                """async () => (await fetch('/api/controls', {method: 'POST', headers: {'Content-Type':
                'application/json'}, body: JSON.stringify({program: 'doe', target: 'all', duration: 60,
                export_limit_w: 1})})).status"""
            )
            assert status == 403

            # Find the site by NMI; the evil label is shown as text, never run.
            await page.goto(f"{base}/console/sites")
            await page.fill("#q", "4102000077")
            await page.click("form.search button")
            await page.wait_for_url("**q=4102000077**")
            assert "1 site(s)" in await page.inner_text("main")
            await page.goto(f"{base}/console/sites?q=41020009")
            assert EVIL in await page.inner_text("main")
            assert "&lt;script&gt;" in await page.content()
            assert await page.evaluate("window.__pwned") is None
            await page.goto(f"{base}/console/sites")
            await page.screenshot(path=str(SHOTS / "sites.png"), full_page=True)

            # A group control: the API's error shows next to the field; then it is created and acknowledged.
            await page.goto(f"{base}/console/controls")
            await page.select_option("#f-program", "doe")
            await page.fill("#f-target", "group:zone-a")
            await page.fill("#f-export_limit_w", "lots")
            await page.click("#control-form button[type=submit]")
            err = page.locator('[data-error-for="export_limit_w"]')
            await err.wait_for()
            await wait_until(lambda: err.inner_text(), 5, "the field error")
            assert "export_limit_w: expected a number" in await err.inner_text()
            await page.fill("#f-export_limit_w", "1500")
            await page.fill("#f-reason", "feeder A overvoltage")
            await page.click("#control-form button[type=submit]")
            await page.wait_for_url("**/console/controls/*")
            assert "group:zone-a" in await page.inner_text("main")
            responded = page.locator("#ack-responded")
            # The page polls the ack summary; the count rises from 0 as the gateway's Responses arrive (on a
            # fast run they may all be in before the page first renders, so wait for > 0, not for a change).
            await wait_until(_rose(responded, 0), 20, "the acknowledgement count to rise")
            await page.screenshot(path=str(SHOTS / "control.png"), full_page=True)
            await wait_until(lambda: 1200 <= lab.export_w() <= 1600, 10, "the site at the group control")

            # Site detail with its plot of power against the envelope, and Responses in words.
            await page.goto(f"{base}/console/sites/{lab.lfdi}")
            main = await page.inner_text("main")
            assert "zone-a" in main and "received the control" in main
            assert await page.locator("svg.plot polyline.power").count() == 1
            await page.screenshot(path=str(SHOTS / "site.png"), full_page=True)

            # Emergency: the confirmation names the scope; the banner shows; the site goes to zero export.
            await page.goto(f"{base}/console/emergency")
            await page.fill("#e-target", "group:zone-a")
            await page.select_option("#e-action", "zero_export")
            await page.fill("#e-reason", "fault on feeder A")
            await page.click("#emergency-form button")
            await page.locator("#confirm[open]").wait_for()
            assert await page.inner_text("#confirm-text") == "Issue zero_export to 1 site(s) in zone-a?"
            await page.click("#confirm-ok")
            await page.locator(".banner").first.wait_for()
            assert "EMERGENCY live" in await page.inner_text(".banner")
            await page.screenshot(path=str(SHOTS / "emergency.png"), full_page=True)
            await wait_until(lambda: lab.export_w() <= 100, 10, "zero export under the emergency")
            await page.fill("#l-target", "group:zone-a")
            await page.click("#lift-form button")
            await page.locator("#confirm[open]").wait_for()
            assert await page.inner_text("#confirm-text") == "Lift the emergency?"
            await page.click("#confirm-ok")
            await page.locator(".banner").wait_for(state="detached", timeout=10000)
            await wait_until(lambda: 1200 <= lab.export_w() <= 1600, 10, "back at the group control")

            # DOE upload: one bad row names its line and field and publishes nothing; then a good file.
            now = int(time.time()) + 3600
            bad_csv = tmp_path / "bad.csv"
            bad_csv.write_text(
                "nmi,start,duration,import_limit_w,export_limit_w\n"
                f"4102000077,{now},1800,5000,2000\n4102000077,{now + 1800},1800,5000,lots\n"
            )
            good_csv = tmp_path / "good.csv"
            good_csv.write_text(
                "nmi,start,duration,import_limit_w,export_limit_w\n"
                f"4102000077,{now},1800,5000,2000\n4102000077,{now + 1800},1800,5000,2500\n"
            )
            await page.goto(f"{base}/console/does")
            await page.set_input_files("#doe-file", str(bad_csv))
            await page.locator("#doe-preview table").wait_for()
            await page.click("#doe-form button")
            await page.locator("#doe-result.error li").first.wait_for()
            result = await page.inner_text("#doe-result")
            assert "line 3" in result and "export_limit_w" in result and "nothing was published" in result
            assert await page.locator("#doe-result li").count() == 1
            await page.set_input_files("#doe-file", str(good_csv))
            await page.click("#doe-form button")
            await page.locator("#doe-result.ok").wait_for()
            assert "2 interval(s) for 1 site(s)" in await page.inner_text("#doe-result")
            assert await page.get_attribute("#up-progress", "value") == "100"
            await page.screenshot(path=str(SHOTS / "doe-upload.png"), full_page=True)

            # Compliance: the controls with their responders, silent sites, a CSV export.
            await page.goto(f"{base}/console/compliance")
            main = await page.inner_text("main")
            assert "group:zone-a" in main and "4102000999" in main  # the never-heard site is listed silent
            csv_text = await page.evaluate(
                "async () => (await fetch('/console/compliance?format=csv')).text()"
            )
            assert csv_text.startswith("kind,control,target") and "silent_site" in csv_text
            await page.screenshot(path=str(SHOTS / "compliance.png"), full_page=True)

            await page.goto(f"{base}/console/audit?action=emergency.*")
            assert "emergency.lift" in await page.inner_text("main")
            await page.screenshot(path=str(SHOTS / "audit.png"), full_page=True)

            # Incidents (seed 002): raise one for the site, acknowledge it, see a refused step named next to
            # its field, then ready to verify and resolve; every transition is in the audit log.
            await page.goto(f"{base}/console/incidents")
            await page.fill("#f-subject", f"site:{lab.lfdi}")
            await page.select_option("#f-kind", "non_responder")
            await page.select_option("#f-severity", "high")
            await page.fill("#f-text", f"no response to the zone-a control {EVIL}")
            await page.click("#incident-form button[type=submit]")
            await page.wait_for_url("**/console/incidents/INC-*")
            incident = page.url.rsplit("/", 1)[1]
            assert await page.inner_text("#incident-state") == "open"
            assert EVIL in await page.inner_text("#timeline")
            assert await page.evaluate("window.__pwned") is None

            async def act(action: str, reason: str, state: str | None, **extra: str) -> None:
                await page.select_option("#f-action", action)
                await page.fill("#f-reason", reason)
                for name, value in extra.items():
                    await page.fill(f"#f-{name}", value)
                await page.click("#action-form button[type=submit]")
                if state is not None:
                    await page.locator("#incident-state", has_text=state).wait_for()

            await act("triage", "seen; checking the gateway", "triaged")
            await act("ready", "gateway was offline", None)
            err = page.locator('[data-error-for="root_cause"]')
            await wait_until(lambda: err.inner_text(), 5, "the root cause error")
            assert "root_cause: required before ready to verify" in await err.inner_text()
            assert await page.inner_text("#incident-state") == "triaged"  # refused: nothing changed
            await act("ready", "gateway back online", "ready to verify", root_cause="site router rebooted")
            await act("resolve", "responses seen again", "resolved")
            assert await page.locator("#action-form").count() == 0  # nothing more to do
            status, body = await page.evaluate(
                """async (id) => { const r = await fetch(`/api/incidents/${id}/actions`, {method: 'POST',
                headers: {'Content-Type': 'application/json', 'X-CSRF-Token': document.querySelector(
                'meta[name=csrf-token]').content}, body: JSON.stringify({action: 'refer', reason: 'x',
                referred_to: 'gw vendor'})}); return [r.status, await r.json()]; }""",
                incident,
            )
            assert status == 409 and body["field"] == "action"
            assert "not allowed from resolved" in body["error"]
            await page.screenshot(path=str(SHOTS / "incident.png"), full_page=True)
            await page.goto(f"{base}/console/audit?target={incident}")
            audit_text = await page.inner_text("main")
            for action in ("incident.raise", "incident.triage", "incident.ready", "incident.resolve"):
                assert action in audit_text
            await page.goto(f"{base}/console/incidents?open=0")
            assert incident in await page.inner_text("#incidents")

            # Readable on a phone: no page scrolls sideways (wide tables scroll inside their own box).
            phone = await browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
            ppage = await phone.new_page()
            await _login(ppage, base, OPERATOR)
            await ppage.screenshot(path=str(SHOTS / "overview-phone.png"), full_page=True)
            pages = ["/console/", "/console/sites", f"/console/sites/{lab.lfdi}", "/console/groups",
                     "/console/controls", "/console/emergency", "/console/does", "/console/compliance",
                     "/console/incidents", f"/console/incidents/{incident}", "/console/audit"]  # fmt: skip
            for where in pages:
                await ppage.goto(f"{base}{where}")
                await assert_no_sideways_scroll(ppage)
            await phone.close()

            # Keyboard only: log in, skip to the content, open the raise form and raise an incident, then
            # acknowledge it, with no pointer at all; focus is visible all the way.
            kctx = await browser.new_context()
            kpage = await kctx.new_page()
            await kpage.goto(f"{base}/console/login")
            await tab_to(kpage, "#token")
            await kpage.keyboard.type(OPERATOR)
            await kpage.keyboard.press("Enter")
            await kpage.wait_for_url(f"{base}/console/")
            await kpage.goto(f"{base}/console/incidents")
            await kpage.keyboard.press("Tab")
            assert await kpage.evaluate("document.activeElement.className") == "skip"
            assert await kpage.evaluate("document.activeElement.getBoundingClientRect().left") >= 0  # shown
            await kpage.keyboard.press("Enter")
            await tab_to(kpage, "details summary")
            assert await focus_outline(kpage) == "solid"
            is_open = "document.activeElement.parentElement.open"
            if await kpage.evaluate(is_open):  # open when no incident is open: close it first
                await kpage.keyboard.press("Enter")
            await kpage.keyboard.press("Enter")
            assert await kpage.evaluate(is_open)  # the raise form opened from the keyboard
            await tab_to(kpage, "#f-subject")
            assert await focus_outline(kpage) == "solid"
            await kpage.keyboard.type("group:zone-a")
            await tab_to(kpage, "#f-text")
            await kpage.keyboard.type("export above the envelope on feeder A")
            async with kpage.expect_navigation(url="**/console/incidents/INC-*"):
                await kpage.keyboard.press("Enter")
            assert "breach" in await kpage.inner_text("h1")
            await tab_to(kpage, "#f-action")
            await kpage.keyboard.press("ArrowDown")  # note -> acknowledge (triage)
            assert await kpage.evaluate("document.activeElement.value") == "triage"
            await tab_to(kpage, "#f-reason")
            await kpage.keyboard.type("looking at it")
            await kpage.keyboard.press("Enter")
            await kpage.locator("#incident-state", has_text="triaged").wait_for()
            await kctx.close()

            # Viewer: sees everything, every write control disabled, and the API refuses its writes.
            vctx = await browser.new_context()
            vpage = await vctx.new_page()
            await _login(vpage, base, VIEWER)
            for where in ("/console/controls", "/console/emergency", "/console/does", "/console/incidents"):
                await vpage.goto(f"{base}{where}")
                buttons = vpage.locator("[data-write]")
                assert await buttons.count() >= 1
                for i in range(await buttons.count()):
                    assert await buttons.nth(i).is_disabled()
            status, body = await vpage.evaluate(
                """async () => { const r = await fetch('/api/emergency', {method: 'POST', headers: {
                'Content-Type': 'application/json', 'X-CSRF-Token': document.querySelector(
                'meta[name=csrf-token]').content}, body: JSON.stringify({target: 'all', action:
                'zero_export'})}); return [r.status, await r.json()]; }"""
            )
            assert status == 403 and body["field"] == "role"
            assert not dialogs
