"""End to end in a real browser: Chromium from Debian's packages, driven by pytest-playwright, against the
local host (which plays App Service and Easy Auth), Azurite and the tenant emulator.

A requester and an approver use two browser contexts; the approval link comes from the emulator's
mail outbox. Screenshots are saved in .artifacts/screenshots/.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from emulator.server import EmulatorServer
from tests.workflow_support import Site, approval_link, run_async

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[2] / ".artifacts" / "screenshots"
# Without the background-networking flags Chromium keeps calling home, which this closed network refuses.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    if not CHROMIUM.exists():
        pytest.fail(f"Chromium is not installed at {CHROMIUM}: run `apt-get install -y chromium`", pytrace=False)
    return {**browser_type_launch_args, "executable_path": str(CHROMIUM), "args": CHROMIUM_ARGS}


def sign_in(page: Any, user_id: str) -> None:
    """The local host's Easy Auth sign-in page: pick an emulator user."""
    page.get_by_label("Sign in as").select_option(user_id)
    page.get_by_role("button", name="Sign in").click()


def shot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def test_request_and_approve_in_two_browsers(site: Site, browser: Any, emulator: EmulatorServer) -> None:
    base, people, host = site.base, site.people, site.host
    tenant = emulator.tenant

    requester = browser.new_context()
    page = requester.new_page()
    page.goto(f"{base}/api/exceptions/new")
    sign_in(page, people.requester.external_directory_object_id)
    page.wait_for_url(f"{base}/api/exceptions/new")
    assert page.get_by_label("Mailbox that sends").input_value() == people.requester.primary_smtp_address
    shot(page, "01-request-form")

    page.get_by_label("Mailbox that sends").fill(people.printer.primary_smtp_address)
    page.get_by_label("What sends the mail").select_option("mfp")
    page.get_by_label("Vendor and model, or app name").fill("Ricoh IM C3000")
    page.get_by_label("Why the alternatives don't fit").select_option("no-oauth-support")
    page.get_by_label("Details").fill("No OAuth in this firmware; replacement due in Q2.")
    page.get_by_label("Days needed").fill("0")  # first a mistake: shown inline, nothing stored
    page.get_by_label("Business owner's email").fill(people.requester.primary_smtp_address)
    page.get_by_label("Contact").fill("Facilities, ext. 4411")
    page.get_by_role("button", name="Submit request").click()
    assert page.locator("#days-error").is_visible()
    shot(page, "02-inline-error")
    page.get_by_label("Days needed").fill("30")
    page.get_by_role("button", name="Submit request").click()
    page.wait_for_url(f"{base}/api/exceptions/*")
    assert "pending" in page.content()
    request_id = page.url.rsplit("/", 1)[1]
    shot(page, "03-request-pending")

    host.fire("send_notifications")  # the outbox timer, fired on demand
    link = approval_link(tenant, request_id)

    approver = browser.new_context()
    approval = approver.new_page()
    approval.goto(f"{base}{link}")
    sign_in(approval, people.approver.external_directory_object_id)
    approval.wait_for_url(f"{base}/api/approvals/**")
    assert "Opening this page changes nothing" in approval.content()
    # The link's code came through sign-in in the fragment, went into the form, and left the address bar.
    assert approval.locator("#token").input_value() == link.split("#token=", 1)[1]
    assert approval.locator("#link-code").is_hidden()
    assert "token" not in approval.url
    assert tenant.find(people.printer.guid).smtp_client_authentication_disabled is True
    shot(approval, "04-approval-page")

    approval.get_by_label("Days to grant").fill("14")
    approval.get_by_role("button", name="Approve").click()
    approval.wait_for_load_state()
    assert "approved" in approval.content()
    shot(approval, "05-approved")

    assert tenant.find(people.printer.guid).smtp_client_authentication_disabled is False
    host.fire("send_notifications")
    assert "approved" in tenant.sent_mail[-1]["subject"]

    async def audit_rows() -> list[dict[str, Any]]:
        from shared.bootstrap import open_store
        from shared.microsoft.identity import build_credential
        from shared.settings import load_settings

        credential = build_credential()
        async with open_store(load_settings(), credential) as store:
            rows = await store.audit.of_run(f"approval-{request_id}")
        await credential.close()
        return rows

    rows = run_async(audit_rows())
    assert [(r["MailboxAddress"], r["After"], r["Actor"]) for r in rows] == [
        (people.printer.primary_smtp_address, "false", people.approver.external_directory_object_id)
    ]
    page.reload()
    assert "approved" in page.content()
    requester.close()
    approver.close()


class _Attacker(ThreadingHTTPServer):
    """A page on a sibling origin (same host, another port: same-site, not same-origin), as in the review."""

    target = ""
    planted = "P" * 43


class _AttackPage(BaseHTTPRequestHandler):
    server: _Attacker

    def do_GET(self) -> None:  # plants a CSRF cookie for the host (cookies ignore ports) and posts at once
        page = (
            '<form id="f" method="post" action="/hop">'
            f'<input name="csrf_token" value="{self.server.planted}"></form>'
            '<script>document.getElementById("f").submit()</script>'
        ).encode()
        self.send_response(200)
        self.send_header("Set-Cookie", f"smtpguard_csrf={self.server.planted}; Path=/api")
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)

    def do_POST(self) -> None:  # a 307 keeps the method and the body; Chromium then sends Origin: null
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(307)
        self.send_header("Location", self.server.target)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_a_planted_cookie_posted_through_a_redirect_does_not_revoke(
    site: Site, browser: Any, emulator: EmulatorServer
) -> None:
    from devservices.azurite import free_port
    from shared.model.exception_records import ExceptionStatus
    from tests.workflow_support import grant_as_admin

    base, people = site.base, site.people
    printer = emulator.tenant.find(people.printer.guid)

    async def grant() -> Any:
        from shared.bootstrap import open_store
        from shared.microsoft.identity import build_credential
        from shared.settings import load_settings

        credential = build_credential()
        async with open_store(load_settings(), credential) as store:
            record = await grant_as_admin(store, people.printer.primary_smtp_address)
        await credential.close()
        return record

    async def status_of(exception_id: str) -> Any:
        from shared.bootstrap import open_store
        from shared.microsoft.identity import build_credential
        from shared.settings import load_settings

        credential = build_credential()
        async with open_store(load_settings(), credential) as store:
            found = await store.exceptions.get(exception_id)
        await credential.close()
        return found.status

    record = run_async(grant())
    printer.smtp_client_authentication_disabled = False  # the approved device sends
    attacker = _Attacker(("127.0.0.1", free_port()), _AttackPage)
    attacker.target = f"{base}/api/exceptions/{record.id}/revoke"
    threading.Thread(target=attacker.serve_forever, daemon=True).start()
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"{base}/api/exceptions/new")
        sign_in(page, people.approver.external_directory_object_id)  # the victim: a signed-in approver
        page.wait_for_url(f"{base}/api/exceptions/new")
        with page.expect_response(attacker.target) as answer:
            page.goto(f"http://localhost:{attacker.server_port}/")
        assert answer.value.status == 403
        planted = [c for c in context.cookies() if c["name"] == "smtpguard_csrf"]
        assert any(c["value"] == attacker.planted for c in planted)  # the plant itself worked
        shot(page, "06-csrf-refused")
    finally:
        context.close()
        attacker.shutdown()
    assert run_async(status_of(record.id)) is ExceptionStatus.APPROVED
    assert printer.smtp_client_authentication_disabled is False
