"""The demo's second half: request an exception over HTTP as one user, approve it as another.

Runs the app's HTTP functions on the local host (which plays App Service and Easy Auth), with the
approval mail taken from the tenant emulator's outbox, exactly as the browser test does.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from html import unescape
from urllib.parse import urlencode

import aiohttp

from devservices.localhost import LocalHost
from emulator.tenant import Mailbox, Tenant

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def _cookies(host: LocalHost, user: Mailbox, csrf: str | None = None) -> str:
    cookies = host.session_cookie(user.external_directory_object_id)
    if csrf:
        cookies["smtpguard_csrf"] = csrf
    return "; ".join(f"{k}={v}" for k, v in cookies.items())


def _text(page: str) -> str:
    """The visible text of a page's <main>."""
    main = re.search(r"<main>(.*)</main>", page, re.S)
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", main.group(1) if main else page)).split())


@dataclass(frozen=True, slots=True)
class Browser:
    """What a signed-in person's browser does here: the session cookie, and the form posts with CSRF."""

    http: aiohttp.ClientSession
    host: LocalHost
    base: str  # the origin the app expects (CSRF and link checks)

    async def get(self, url: str, user: Mailbox) -> tuple[int, str]:
        async with self.http.get(url, headers={"Cookie": _cookies(self.host, user)}) as r:
            return r.status, await r.text()

    async def post_form(
        self, url: str, user: Mailbox, fields: dict[str, str], *, allow_redirects: bool = True
    ) -> tuple[int, str, str]:
        """(status, Location, page) of a form post; `fields` carries the page's csrf_token."""
        async with self.http.post(
            url,
            data=urlencode(fields),
            headers={
                "Cookie": _cookies(self.host, user, fields["csrf_token"]),
                "Content-Type": "application/x-www-form-urlencoded",
                "Origin": self.base,
            },
            allow_redirects=allow_redirects,
        ) as r:
            return r.status, r.headers.get("Location", ""), await r.text()


def _csrf(page: str) -> str:
    return CSRF.search(page).group(1)  # type: ignore[union-attr]


async def _request(browser: Browser, requester: Mailbox, printer: Mailbox) -> None:
    """Steps 1 and 2: the requester opens the form and submits a request for the printer's mailbox."""
    base = browser.base
    print(f"1. {requester.user_principal_name} opens {base}/api/exceptions/new")
    status, form = await browser.get(f"{base}/api/exceptions/new", requester)
    print(f"   HTTP {status}: the form, with guidance on the alternatives and Microsoft's timeline")
    fields = {
        "csrf_token": _csrf(form),
        "mailbox": printer.primary_smtp_address,
        "sender_kind": "mfp",
        "vendor": "Ricoh IM C3000",
        "auth_method": "oauth",
        "alternatives_reason": "no-oauth-support",
        "alternatives_detail": "Firmware 2.1 has no OAuth; the vendor ships it in Q2.",
        "days": "60",
        "owner": requester.primary_smtp_address,
        "contact": "Facilities, ext. 4411",
    }
    print(f"2. submits a request for {printer.primary_smtp_address} (OAuth, 60 days)")
    status, location, _ = await browser.post_form(f"{base}/api/exceptions", requester, fields, allow_redirects=False)
    print(f"   HTTP {status} -> {location} (stored as pending; the approvers' mail is in the outbox)")


async def _approval_link(host: LocalHost, tenant: Tenant) -> str:
    """Step 3: send the outbox, and take the approval link from the approvers' mail."""
    await host.fire_async("send_notifications")
    # The outbox also tells the printer's mailbox that someone asked for it: find the approvers' mail.
    approval = r"https?://\S+/api/approvals/\S+?#token=[\w\-%]+"
    mail = next(m for m in reversed(tenant.sent_mail) if re.search(approval, str(m.get("text_body") or m)))
    link = re.search(approval, str(mail.get("text_body") or mail))
    assert link, "no approval link in the mail"
    print(f"3. the approval mail from {mail['from']} to {', '.join(mail['to'])}: {mail['subject']!r}")
    print(f"   link: {link.group(0)}")
    return link.group(0)


async def _approve(browser: Browser, tenant: Tenant, approver: Mailbox, printer: Mailbox, link: str) -> None:
    """Steps 4 and 5: the approver opens the link, approves, and Exchange and the requester see it."""
    url, token = link.split("#token=", 1)  # a browser never sends the part after "#"
    status, page = await browser.get(url, approver)
    state = printer.smtp_client_authentication_disabled
    print(
        f"4. {approver.user_principal_name} opens it: HTTP {status}, nothing changed "
        f"(SmtpClientAuthenticationDisabled still {state})"
    )
    decision = {"csrf_token": _csrf(page), "token": token, "decision": "approve", "days": "30", "comment": "OK for Q1"}
    status, _, answer = await browser.post_form(url, approver, decision)
    print(f"   approves for 30 days: HTTP {status}: {_text(answer)[:160]}")
    print(
        f"5. in Exchange, {printer.primary_smtp_address}: SmtpClientAuthenticationDisabled="
        f"{tenant.find(printer.guid).smtp_client_authentication_disabled}"
    )  # type: ignore[union-attr]
    await browser.host.fire_async("send_notifications")
    print(f"   the requester is told: {tenant.sent_mail[-1]['subject']!r}")


async def request_and_approve(
    host: LocalHost, tenant: Tenant, requester: Mailbox, approver: Mailbox, printer: Mailbox
) -> None:
    async with aiohttp.ClientSession() as http:
        browser = Browser(http, host, os.environ["PUBLIC_BASE_URL"])
        await _request(browser, requester, printer)
        link = await _approval_link(host, tenant)
        await _approve(browser, tenant, approver, printer, link)
