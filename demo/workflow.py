"""The demo's second half: request an exception over HTTP as one user, approve it as another.

Runs the app's HTTP functions on the local host (which plays App Service and Easy Auth), with the
approval mail taken from the tenant emulator's outbox, exactly as the browser test does.
"""

from __future__ import annotations

import os
import re
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


async def request_and_approve(
    host: LocalHost, tenant: Tenant, requester: Mailbox, approver: Mailbox, printer: Mailbox
) -> None:
    base = os.environ["PUBLIC_BASE_URL"]  # the origin the app expects (CSRF and link checks)
    async with aiohttp.ClientSession() as http:
        print(f"1. {requester.user_principal_name} opens {base}/api/exceptions/new")
        async with http.get(f"{base}/api/exceptions/new", headers={"Cookie": _cookies(host, requester)}) as r:
            form = await r.text()
            print(f"   HTTP {r.status}: the form, with guidance on the alternatives and Microsoft's timeline")
        csrf = CSRF.search(form).group(1)  # type: ignore[union-attr]

        fields = {
            "csrf_token": csrf,
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
        async with http.post(
            f"{base}/api/exceptions",
            data=urlencode(fields),
            headers={
                "Cookie": _cookies(host, requester, csrf),
                "Content-Type": "application/x-www-form-urlencoded",
                "Origin": base,
            },
            allow_redirects=False,
        ) as r:
            location = r.headers.get("Location", "")
            print(f"   HTTP {r.status} -> {location} (stored as pending; the approvers' mail is in the outbox)")

        await host.fire_async("send_notifications")
        # The outbox also tells the printer's mailbox that someone asked for it: find the approvers' mail.
        approval = r"https?://\S+/api/approvals/\S+?#token=[\w\-%]+"
        mail = next(m for m in reversed(tenant.sent_mail) if re.search(approval, str(m.get("text_body") or m)))
        link = re.search(approval, str(mail.get("text_body") or mail))
        assert link, "no approval link in the mail"
        print(f"3. the approval mail from {mail['from']} to {', '.join(mail['to'])}: {mail['subject']!r}")
        print(f"   link: {link.group(0)}")

        url, token = link.group(0).split("#token=", 1)  # a browser never sends the part after "#"
        async with http.get(url, headers={"Cookie": _cookies(host, approver)}) as r:
            page = await r.text()
        state = printer.smtp_client_authentication_disabled
        print(
            f"4. {approver.user_principal_name} opens it: HTTP {r.status}, nothing changed "
            f"(SmtpClientAuthenticationDisabled still {state})"
        )
        csrf = CSRF.search(page).group(1)  # type: ignore[union-attr]
        decision = {"csrf_token": csrf, "token": token, "decision": "approve", "days": "30", "comment": "OK for Q1"}
        async with http.post(
            url,
            data=urlencode(decision),
            headers={
                "Cookie": _cookies(host, approver, csrf),
                "Content-Type": "application/x-www-form-urlencoded",
                "Origin": base,
            },
        ) as r:
            print(f"   approves for 30 days: HTTP {r.status}: {_text(await r.text())[:160]}")
        print(
            f"5. in Exchange, {printer.primary_smtp_address}: SmtpClientAuthenticationDisabled="
            f"{tenant.find(printer.guid).smtp_client_authentication_disabled}"
        )  # type: ignore[union-attr]
        await host.fire_async("send_notifications")
        print(f"   the requester is told: {tenant.sent_mail[-1]['subject']!r}")
