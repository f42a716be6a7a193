"""Helpers for workflow tests: people in the emulated tenant, the platform's principal header, and
calling the app's own HTTP functions (the same function objects the Functions host runs)."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlencode, urlsplit

import azure.functions as func

from emulator.server import EmulatorServer
from emulator.tenant import Mailbox, Tenant

PUBLIC_BASE_URL = "http://localhost:7071"
T = TypeVar("T")


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code, even where a loop already runs in this thread
    (Playwright's sync API keeps one running)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


@dataclass
class People:
    requester: Mailbox
    approver: Mailbox
    second_approver: Mailbox
    outsider: Mailbox
    notify: Mailbox
    printer: Mailbox
    group_id: str


def add_people(tenant: Tenant) -> People:
    people = People(
        requester=tenant.add_mailbox("riley.requester", smtp=True, display_name="Riley Requester"),
        approver=tenant.add_mailbox("avery.approver", smtp=True, display_name="Avery Approver"),
        second_approver=tenant.add_mailbox("blake.approver", smtp=True, display_name="Blake Approver"),
        outsider=tenant.add_mailbox("olly.outsider", smtp=True, display_name="Olly Outsider"),
        notify=tenant.add_mailbox("smtp-guard", type="SharedMailbox", smtp=True),
        printer=tenant.add_mailbox("scanner-3f", type="SharedMailbox", smtp=True, display_name="Scanner 3F"),
        group_id="",
    )
    people.group_id = tenant.add_group(
        "SMTP AUTH approvers",
        [people.approver.external_directory_object_id, people.second_approver.external_directory_object_id],
    )
    return people


@dataclass
class Site:
    """The app on the local host (playing App Service and Easy Auth), with Azurite and the emulator."""

    base: str  # PUBLIC_BASE_URL: http://localhost:PORT
    people: People
    host: Any  # devservices.localhost.LocalHost


def principal_header(mailbox: Mailbox) -> str:
    """What App Service Authentication injects for a signed-in Entra user."""
    claims = [
        {
            "typ": "http://schemas.microsoft.com/identity/claims/objectidentifier",
            "val": mailbox.external_directory_object_id,
        },
        {"typ": "preferred_username", "val": mailbox.user_principal_name},
        {"typ": "name", "val": mailbox.display_name},
    ]
    payload = {"auth_typ": "aad", "claims": claims, "name_typ": "preferred_username", "role_typ": "roles"}
    return base64.b64encode(json.dumps(payload).encode()).decode()


def function(name: str) -> Any:
    """The user function the host would run (indexed once per process, shared with the local host)."""
    import function_app
    from devservices.localhost import index_functions

    return next(f.user_function for f in index_functions(function_app.app) if f.name == name)


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


async def call(
    name: str,
    method: str,
    path: str,
    *,
    user: Mailbox | None = None,
    body: bytes | str | dict[str, Any] | None = None,
    form: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    route_params: dict[str, str] | None = None,
    cookie: str | None = None,
) -> Response:
    """Invoke one of the app's HTTP functions the way the host does."""
    all_headers = {k.lower(): v for k, v in (headers or {}).items()}
    data = b""
    if form is not None:
        data = urlencode(form).encode()
        all_headers.setdefault("content-type", "application/x-www-form-urlencoded")
    elif isinstance(body, dict):
        data = json.dumps(body).encode()
        all_headers.setdefault("content-type", "application/json")
        all_headers.setdefault("accept", "application/json")
    elif isinstance(body, str):
        data = body.encode()
    elif isinstance(body, bytes):
        data = body
    if form is not None and not {"origin", "referer", "sec-fetch-site"} & set(all_headers):
        all_headers["sec-fetch-site"] = "same-origin"  # what a browser sends on a form post of our own page
    if user is not None:
        all_headers["x-ms-client-principal"] = principal_header(user)
    if cookie:
        all_headers["cookie"] = cookie
    parts = urlsplit(path)  # a fragment (the approval link's code) never reaches the server
    params = {k: v[0] for k, v in parse_qs(parts.query).items()}
    request = func.HttpRequest(
        method=method,
        url=f"{PUBLIC_BASE_URL}{path.split('#', 1)[0]}",
        headers=all_headers,
        params=params,
        route_params=route_params or {},
        body=data,
    )
    response: func.HttpResponse = await function(name)(request)
    return Response(response.status_code, dict(response.headers), response.get_body().decode())


def csrf_from(response: Response) -> tuple[str, str]:
    """The CSRF token in a page's form and the cookie the page set (or the one already held)."""
    match = re.search(r'name="csrf_token" value="([^"]+)"', response.text)
    assert match, "the page has no CSRF field"
    token = match.group(1)
    return token, f"smtpguard_csrf={token}"


def approval_link(tenant: Tenant, request_id: str) -> str:
    """The approval link from the newest approval mail in the emulator's outbox."""
    for mail in reversed(tenant.sent_mail):
        found = re.search(rf"(/api/approvals/{request_id}#token=[A-Za-z0-9_\-%]+)", mail_text(mail))
        if found:
            return found.group(1)
    raise AssertionError(f"no approval mail for {request_id}")


def mail_text(mail: dict[str, Any]) -> str:
    return "\n".join(str(mail.get(k, "")) for k in ("subject", "body", "text", "html"))


def valid_request(mailbox: str, owner: str, **overrides: str) -> dict[str, str]:
    fields = {
        "mailbox": mailbox,
        "sender_kind": "mfp",
        "vendor": "Ricoh IM C3000",
        "source_ips": "203.0.113.7, 10.2.0.0/24",
        "auth_method": "oauth",
        "alternatives_reason": "no-oauth-support",
        "alternatives_detail": "Firmware has no OAuth; vendor upgrade planned for Q2.",
        "days": "30",
        "owner": owner,
        "contact": "Facilities, ext. 4411",
        "ticket": "INC-1042",
    }
    fields.update(overrides)
    return fields


async def grant_as_admin(store: Any, address: str, device: str = "MFP") -> Any:
    """`exceptions add` for a 30-day OAuth exception, through the one grant path and the real Exchange client."""
    from datetime import UTC

    from shared.microsoft.exchange import ExchangeClient
    from shared.microsoft.identity import build_credential
    from shared.settings import load_settings
    from shared.workflow.grants import grant_exception, validate_grant

    settings = load_settings()
    grant = validate_grant(
        mailbox=address, days="30", reason="scanner", owner=None, device=device, auth="oauth", max_days=180
    )
    credential = build_credential()
    try:
        async with ExchangeClient(settings.exchange_endpoint, settings.tenant_id, credential) as exchange:
            record, _ = await grant_exception(store, exchange, settings.tenant_id, grant, "admin", datetime.now(UTC))
    finally:
        await credential.close()  # type: ignore[attr-defined]
    return record


# -- the workflow as its users drive it, through the app's HTTP functions --------------------------------


async def send_outbox(now: datetime | None = None) -> Any:
    from shared.bootstrap import clients
    from shared.workflow.notifications import send_due

    return await send_due(await clients(), now)


async def submit_form(people: People, fields: dict[str, str], user: Any = None) -> Any:
    page = await call("exception_form", "GET", "/api/exceptions/new", user=user or people.requester)
    assert page.status == 200
    token, cookie = csrf_from(page)
    return await call(
        "exception_submit",
        "POST",
        "/api/exceptions",
        user=user or people.requester,
        form={**fields, "csrf_token": token},
        cookie=cookie,
    )


async def submitted_request(people: People, **overrides: str) -> str:
    mailbox = overrides.pop("mailbox", people.printer.primary_smtp_address)
    response = await submit_form(people, valid_request(mailbox, people.requester.primary_smtp_address, **overrides))
    assert response.status == 303, response.text
    return response.headers["Location"].rsplit("/", 1)[1]


async def submit_json(people: People, user: Any = None, mailbox: str | None = None) -> Any:
    """`POST /api/exceptions` as an API client; the printer's mailbox and the requester by default."""
    body = valid_request(mailbox or people.printer.primary_smtp_address, people.requester.primary_smtp_address)
    return await call("exception_submit", "POST", "/api/exceptions", user=user or people.requester, body=body)


async def open_approval(people: People, emulator: EmulatorServer, request_id: str, user: Any = None) -> tuple[Any, str]:
    await send_outbox()
    link = approval_link(emulator.tenant, request_id)
    page = await call("approval_page", "GET", link, user=user or people.approver, route_params={"id": request_id})
    return page, link


async def post_decision(people: People, request_id: str, page: Any, link: str, user: Any = None, **fields: str) -> Any:
    csrf, cookie = csrf_from(page)
    token = link.split("token=", 1)[1]
    form = {"csrf_token": csrf, "token": token, "decision": "approve", **fields}
    return await call(
        "approval_decision",
        "POST",
        f"/api/approvals/{request_id}",
        user=user or people.approver,
        form=form,
        cookie=cookie,
        route_params={"id": request_id},
    )


async def decide_through_the_link(
    people: People, emulator: EmulatorServer, request_id: str, user: Any = None, **fields: str
) -> None:
    """Open the link from the approval mail as an approver and post the decision; both must succeed."""
    page, link = await open_approval(people, emulator, request_id, user=user)
    assert page.status == 200, page.text
    decided = await post_decision(people, request_id, page, link, user=user, **fields)
    assert decided.status == 200, decided.text


async def revoke_through_the_api(request_id: str, user: Any) -> Any:
    """`POST /api/exceptions/{id}/revoke` as `user`."""
    return await call(
        "exception_revoke",
        "POST",
        f"/api/exceptions/{request_id}/revoke",
        user=user,
        body={},
        route_params={"id": request_id},
    )


def set_calls(emulator: EmulatorServer) -> int:
    return sum(1 for e in emulator.calllog.entries() if e["cmdlet"] == "Set-CASMailbox" and e["kind"] != "batch")
