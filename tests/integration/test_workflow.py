"""The request and approval workflow through the app's HTTP functions, Azurite and the tenant emulator.

These tests play the platform's part exactly as App Service does: WEBSITE_AUTH_ENABLED is set and
the principal header is injected. The browser test (tests/e2e/test_browser.py) goes through the local host.
"""

from __future__ import annotations

import asyncio
import html
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from emulator.server import EmulatorServer
from shared.bootstrap import open_store
from shared.errors import DailyLimitError
from shared.model.exception_records import AuthMethod
from shared.model.notifications import NotificationKind, OutboxItem, OutboxStatus
from shared.model.requests import AlternativesReason, ExceptionRequest, RequestStatus, SenderKind
from shared.model.usage import Protocol
from shared.storage import Store
from tests.workflow_support import (
    People,
    approval_link,
    call,
    csrf_from,
    decide_through_the_link,
    mail_text,
    open_approval,
    post_decision,
    revoke_through_the_api,
    send_outbox,
    set_calls,
    submit_form,
    submit_json,
    submitted_request,
    valid_request,
)

XSS = '<script>alert("x")</script><img src=x onerror=alert(1)>'


async def test_request_to_approval_switches_smtp_auth_on(
    people: People, emulator: EmulatorServer, store: Store
) -> None:
    tenant = emulator.tenant
    request_id = await submitted_request(people)
    loaded = await store.requests.get(request_id)
    assert loaded is not None and loaded[0].status is RequestStatus.PENDING

    page, link = await open_approval(people, emulator, request_id)

    assert page.status == 200
    assert "scanner-3f" in page.text and "Approve" in page.text
    approval_mail = tenant.sent_mail[-1]
    assert people.approver.primary_smtp_address in [a.lower() for a in approval_mail["to"]]
    assert set_calls(emulator) == 0  # opening the link changed nothing

    decided = await post_decision(people, request_id, page, link, days="20")

    assert decided.status == 200, decided.text
    assert tenant.find(people.printer.guid).smtp_client_authentication_disabled is False
    exception = await store.exceptions.get(request_id)
    assert exception is not None and exception.is_active(datetime.now(UTC))
    assert exception.approved_by == people.approver.external_directory_object_id
    assert timedelta(days=19) < exception.expires_at - datetime.now(UTC) <= timedelta(days=20)
    audit = await store.audit.of_run(f"approval-{request_id}")
    assert [(row["MailboxGuid"], row["Before"], row["After"], row["Reason"]) for row in audit] == [
        (people.printer.guid, "true", "false", "exception")
    ]
    await send_outbox()
    decision_mail = tenant.sent_mail[-1]
    assert people.requester.primary_smtp_address in [a.lower() for a in decision_mail["to"]]
    assert "approved" in decision_mail["subject"]


async def test_approved_exception_is_respected_by_an_enforce_sweep(
    people: People, emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared.settings import EnforcementMode, load_settings
    from shared.sweep.engine import SweepRequest, run_sweep

    request_id = await submitted_request(people)
    await decide_through_the_link(people, emulator, request_id)
    summary = await run_sweep(load_settings(), SweepRequest(full=True, mode=EnforcementMode.ENFORCE))
    assert summary.ok, summary.message
    assert emulator.tenant.find(people.printer.guid).smtp_client_authentication_disabled is False
    assert emulator.tenant.find(people.requester.guid).smtp_client_authentication_disabled is True


# -- the security battery ---------------------------------------------------------------------------------------


async def test_forged_replayed_expired_and_foreign_tokens_are_refused(
    people: People, emulator: EmulatorServer, store: Store
) -> None:
    first = await submitted_request(people)
    page, link = await open_approval(people, emulator, first)
    token_of_first = link.split("#token=", 1)[1]
    assert "?token=" not in mail_text(emulator.tenant.sent_mail[-1])  # the code rides after "#", never in a query
    assert token_of_first not in page.text  # the server never saw it, so the page cannot echo it
    csrf, cookie = csrf_from(page)

    async def post(request_id: str, token: str) -> int:
        form = {"csrf_token": csrf, "token": token, "decision": "approve"}
        response = await call(
            "approval_decision",
            "POST",
            f"/api/approvals/{request_id}",
            user=people.approver,
            form=form,
            cookie=cookie,
            route_params={"id": request_id},
        )
        return response.status

    assert await post(first, "A" * 43) == 403
    in_query = await call(
        "approval_decision",
        "POST",
        f"/api/approvals/{first}?token={token_of_first}",
        user=people.approver,
        form={"csrf_token": csrf, "decision": "approve"},
        cookie=cookie,
        route_params={"id": first},
    )
    assert in_query.status == 403  # a code in a URL is never taken: URLs end up in logs
    second = await submitted_request(people, mailbox=people.outsider.primary_smtp_address)
    assert await post(second, token_of_first) == 403  # another request's token
    assert (await store.requests.get(second))[0].status is RequestStatus.PENDING

    assert await post(first, token_of_first) == 200
    assert await post(first, token_of_first) == 409  # replay: already decided, and the token is spent

    await send_outbox()
    link_second = approval_link(emulator.tenant, second)
    request, etag = await store.requests.get(second)
    request.expires_at = datetime.now(UTC) - timedelta(minutes=1)
    await store.requests.update(request, etag)
    assert await post(second, link_second.split("token=", 1)[1]) == 403  # expired
    assert (await store.requests.get(second))[0].status is RequestStatus.PENDING
    lapsed = await call("approval_page", "GET", link_second, user=people.approver, route_params={"id": second})
    assert lapsed.status == 200 and "lapsed" in lapsed.text and 'name="decision"' not in lapsed.text


async def test_the_approval_page_script_is_the_one_its_policy_allows(people: People, emulator: EmulatorServer) -> None:
    import base64
    import hashlib
    import re

    request_id = await submitted_request(people)
    page, _ = await open_approval(people, emulator, request_id)
    scripts = re.findall(r"<script>(.*?)</script>", page.text, flags=re.DOTALL)
    assert len(scripts) == 1
    digest = base64.b64encode(hashlib.sha256(scripts[0].encode()).digest()).decode()
    policy = page.headers["Content-Security-Policy"]
    assert f"script-src 'sha256-{digest}'" in policy and "default-src 'none'" in policy
    assert 'id="token" name="token"' in page.text  # a field to paste the code into when scripts cannot run


async def test_only_group_approvers_decide_and_never_their_own_request(
    people: People, emulator: EmulatorServer, store: Store
) -> None:
    request_id = await submitted_request(people)
    page, link = await open_approval(people, emulator, request_id)
    outsider = await post_decision(people, request_id, page, link, user=people.outsider)
    assert outsider.status == 403
    outsider_page = await call("approval_page", "GET", link, user=people.outsider, route_params={"id": request_id})
    assert outsider_page.status == 403

    own = await submit_form(
        people,
        valid_request(people.approver.primary_smtp_address, people.approver.primary_smtp_address),
        user=people.approver,
    )
    own_id = own.headers["Location"].rsplit("/", 1)[1]
    own_page, own_link = await open_approval(people, emulator, own_id)
    assert "You cannot approve your own request" in own_page.text
    refused = await post_decision(people, own_id, page, own_link)  # the approver tries their own request
    assert refused.status == 403
    assert (await store.requests.get(own_id))[0].status is RequestStatus.PENDING
    assert set_calls(emulator) == 0


async def test_get_head_and_scanner_prefetch_change_nothing(
    people: People, emulator: EmulatorServer, store: Store
) -> None:
    request_id = await submitted_request(people)
    _, link = await open_approval(people, emulator, request_id)
    before = await store.requests.get(request_id)
    for method in ("GET", "HEAD", "GET"):
        response = await call(
            "approval_page",
            method,
            link,
            user=people.approver,
            route_params={"id": request_id},
            headers={"purpose": "prefetch", "user-agent": "Safe Links scanner"},
        )
        assert response.status == 200
    # A scanner without a signed-in session never reaches the app behind Easy Auth; with one, it still only reads.
    after = await store.requests.get(request_id)
    assert after[0] == before[0]
    assert set_calls(emulator) == 0


async def test_two_approvers_at_once_make_one_decision(people: People, emulator: EmulatorServer) -> None:
    request_id = await submitted_request(people)
    page, link = await open_approval(people, emulator, request_id)
    second_page = await call("approval_page", "GET", link, user=people.second_approver, route_params={"id": request_id})

    results = await asyncio.gather(
        post_decision(people, request_id, page, link),
        post_decision(
            people,
            request_id,
            second_page,
            link,
            user=people.second_approver,
            decision="deny",
            comment="Use a connector",
        ),
    )

    statuses = sorted(r.status for r in results)
    assert statuses == [200, 409], [r.text[:200] for r in results]
    loser = next(r for r in results if r.status == 409)
    assert "already" in loser.text or "decided first" in loser.text


async def test_free_text_is_escaped_in_pages_and_mail(people: People, emulator: EmulatorServer) -> None:
    request_id = await submitted_request(people, vendor=XSS, alternatives_detail=XSS, contact=XSS, ticket="T<b>1</b>")
    page, link = await open_approval(people, emulator, request_id)
    assert XSS not in page.text and "&lt;script&gt;" in page.text
    assert "<b>1</b>" not in page.text
    mail = emulator.tenant.sent_mail[-1]
    assert "<script>" not in str(mail.get("html") or mail.get("body"))
    status = await call(
        "exception_status",
        "GET",
        f"/api/exceptions/{request_id}",
        user=people.requester,
        route_params={"id": request_id},
    )
    assert XSS not in status.text and "&lt;script&gt;" in status.text
    denied = await post_decision(people, request_id, page, link, decision="deny", comment=XSS)
    assert XSS not in denied.text


async def test_spoofed_principal_without_easy_auth_is_unauthenticated(
    people: People, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WEBSITE_AUTH_ENABLED")
    for name, method, path in (
        ("exception_form", "GET", "/api/exceptions/new"),
        ("exception_submit", "POST", "/api/exceptions"),
    ):
        response = await call(
            name,
            method,
            path,
            user=people.approver,
            body=valid_request("a@contoso.com", "b@contoso.com") if method == "POST" else None,
        )
        assert response.status == 401


async def test_bad_bodies_get_4xx_with_field_messages(people: People, store: Store) -> None:
    huge = await call(
        "exception_submit",
        "POST",
        "/api/exceptions",
        user=people.requester,
        body=b"x" * 20_000,
        headers={"content-type": "application/json"},
    )
    assert huge.status == 413
    malformed = await call(
        "exception_submit",
        "POST",
        "/api/exceptions",
        user=people.requester,
        body=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert malformed.status == 400 and malformed.json()["errors"]
    invalid = await call(
        "exception_submit",
        "POST",
        "/api/exceptions",
        user=people.requester,
        body={**valid_request("not-an-address", "x"), "days": "900", "auth_method": "kerberos"},
    )
    assert invalid.status == 400
    assert {"mailbox", "owner", "days", "auth_method"} <= set(invalid.json()["errors"])
    form = await submit_form(people, valid_request("", "", vendor="", days="0"))
    assert form.status == 400
    assert 'id="vendor-error"' in form.text and 'aria-invalid="true"' in form.text
    unknown = await submit_json(people, mailbox="ghost@contoso.onmicrosoft.com")
    assert unknown.status == 422 and "mailbox" in unknown.json()["errors"]
    assert await store.requests.query("Status eq @s", {"s": "pending"}) == []


async def test_cross_site_form_post_without_csrf_token_is_refused(people: People, store: Store) -> None:
    fields = valid_request(people.printer.primary_smtp_address, people.requester.primary_smtp_address)
    no_token = await call("exception_submit", "POST", "/api/exceptions", user=people.requester, form=fields)
    assert no_token.status == 403
    page = await call("exception_form", "GET", "/api/exceptions/new", user=people.requester)
    token, cookie = csrf_from(page)
    cross_site = await call(
        "exception_submit",
        "POST",
        "/api/exceptions",
        user=people.requester,
        form={**fields, "csrf_token": token},
        cookie=cookie,
        headers={"origin": "https://evil.example"},
    )
    assert cross_site.status == 403
    assert await store.requests.query("Status eq @s", {"s": "pending"}) == []


async def test_a_malformed_neighbour_cookie_does_not_break_csrf(people: People) -> None:
    # A parent domain's JSON-valued cookie arrives beside ours; the form post must still go through.
    page = await call("exception_form", "GET", "/api/exceptions/new", user=people.requester)
    token, cookie = csrf_from(page)
    fields = valid_request(people.printer.primary_smtp_address, people.requester.primary_smtp_address)
    posted = await call(
        "exception_submit",
        "POST",
        "/api/exceptions",
        user=people.requester,
        form={**fields, "csrf_token": token},
        cookie=f'consent={{"analytics":true}}; {cookie}; theme=dark mode',
    )
    assert posted.status == 303, posted.text


async def test_duplicate_pending_request_gets_409_with_a_link(people: People) -> None:
    first = await submitted_request(people)
    again = await submit_json(people)
    assert again.status == 409
    assert again.json()["errors"]["request_id"] == first


async def test_a_lapsed_request_does_not_hold_its_mailbox(people: People, store: Store) -> None:
    first = await submitted_request(people)
    request, etag = await store.requests.get(first)
    await store.requests.update(replace(request, expires_at=datetime.now(UTC) - timedelta(minutes=1)), etag)
    # Still "pending" until the daily lifecycle run marks it expired, but nobody can approve it now.
    second = await submitted_request(people)
    assert second != first


async def test_json_api_submit_and_status(people: People) -> None:
    created = await submit_json(people)
    assert created.status == 201
    body = created.json()
    assert body["status"] == "pending" and "token_hash" not in body
    assert created.headers["Location"] == f"/api/exceptions/{body['id']}"
    mine = await call(
        "exception_status",
        "GET",
        created.headers["Location"],
        user=people.requester,
        headers={"accept": "application/json"},
        route_params={"id": body["id"]},
    )
    assert mine.status == 200 and mine.json()["id"] == body["id"]
    theirs = await call(
        "exception_status",
        "GET",
        created.headers["Location"],
        user=people.outsider,
        headers={"accept": "application/json"},
        route_params={"id": body["id"]},
    )
    assert theirs.status == 403


async def test_rate_limit_per_requester(people: People, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REQUEST_RATE_LIMIT_PER_DAY", "2")
    targets = [people.printer, people.outsider, people.notify]
    codes = []
    for target in targets:
        codes.append((await submit_json(people, mailbox=target.primary_smtp_address)).status)
    assert codes == [201, 201, 429]
    refused = await submit_json(people, mailbox=people.notify.primary_smtp_address)
    assert refused.status == 429 and "2 requests a day (UTC)" in refused.text
    assert 0 < int(refused.headers["Retry-After"]) <= 86_400  # until midnight UTC
    page = await call("exception_form", "GET", "/api/exceptions/new", user=people.requester)
    token, cookie = csrf_from(page)
    form = valid_request(people.notify.primary_smtp_address, people.requester.primary_smtp_address)
    as_form = await call(
        "exception_submit", "POST", "/api/exceptions", user=people.requester, form={**form, "csrf_token": token},
        cookie=cookie,
    )  # fmt: skip
    assert as_form.status == 429 and 0 < int(as_form.headers["Retry-After"]) <= 86_400  # the form path too
    # The refused request reserved nothing: someone else may still ask for that mailbox.
    assert (await submit_json(people, mailbox=people.notify.primary_smtp_address, user=people.outsider)).status == 201


async def test_revoke_switches_smtp_auth_off_again(people: People, emulator: EmulatorServer, store: Store) -> None:
    request_id = await submitted_request(people)
    await decide_through_the_link(people, emulator, request_id)
    assert emulator.tenant.find(people.printer.guid).smtp_client_authentication_disabled is False
    by_requester = await revoke_through_the_api(request_id, people.requester)
    assert by_requester.status == 403
    revoked = await revoke_through_the_api(request_id, people.approver)
    assert revoked.status == 200, revoked.text
    assert emulator.tenant.find(people.printer.guid).smtp_client_authentication_disabled is True
    audit = await store.audit.of_run(f"revoke-{request_id}")
    assert [(r["Before"], r["After"]) for r in audit] == [("false", "true")]


# -- lifecycle and the outbox -----------------------------------------------------------------------------------


async def test_expired_exception_is_revoked_by_the_reconcile_and_the_owner_told(
    people: People, emulator: EmulatorServer, store: Store
) -> None:
    from shared.bootstrap import clients
    from shared.settings import EnforcementMode, load_settings
    from shared.sweep.engine import SweepRequest, run_sweep
    from shared.workflow.lifecycle import run_lifecycle

    request_id = await submitted_request(people, days="3")
    await decide_through_the_link(people, emulator, request_id)
    await send_outbox()
    sent_before = len(emulator.tenant.sent_mail)

    c = await clients()
    soon = datetime.now(UTC) + timedelta(hours=1)  # 3 days left: the 14-day reminder, not the 1-day one
    later = datetime.now(UTC) + timedelta(days=1, hours=12)  # 36 hours left: the 1-day reminder
    last = datetime.now(UTC) + timedelta(days=2, hours=12)  # 12 hours left: nothing new
    counts = [(await run_lifecycle(c, moment)).reminders for moment in (soon, soon, later, later, last)]
    assert counts == [1, 0, 1, 0, 0]  # each reminder once, never two at once
    await send_outbox(last)
    reminders = emulator.tenant.sent_mail[sent_before:]
    assert len(reminders) == 2 and all("expires in" in m["subject"] for m in reminders)
    assert all("/api/exceptions/new?" in mail_text(m) for m in reminders)  # renewal link that prefills

    expired_at = datetime.now(UTC) + timedelta(days=4)
    report = await run_lifecycle(c, expired_at)
    assert report.expiry_notices == 1
    assert (await run_lifecycle(c, expired_at)).expiry_notices == 0
    await send_outbox(expired_at)
    notice = emulator.tenant.sent_mail[-1]
    assert "expired" in notice["subject"]
    assert people.requester.primary_smtp_address in [a.lower() for a in notice["to"]]  # the owner

    summary = await run_sweep(
        load_settings(), SweepRequest(full=True, mode=EnforcementMode.ENFORCE), clock=lambda: expired_at
    )
    assert summary.ok, summary.message
    assert summary.by_reason.get("expired") == 1
    assert emulator.tenant.find(people.printer.guid).smtp_client_authentication_disabled is True


async def test_notifications_survive_graph_being_down(people: People, emulator: EmulatorServer, store: Store) -> None:
    emulator.faults.configure(graph_down=True)
    request_id = await submitted_request(people)  # Exchange answers; Graph does not
    report = await send_outbox()
    assert report.failed >= 1 and report.sent == 0
    assert emulator.tenant.sent_mail == []
    emulator.faults.reset()
    assert (await send_outbox()).sent == 0  # not due yet: it backs off
    report = await send_outbox(datetime.now(UTC) + timedelta(minutes=5))
    assert report.sent == 2  # the approvers' mail and the notice to the printer's mailbox
    assert approval_link(emulator.tenant, request_id)


async def test_pending_requests_lapse(people: People, emulator: EmulatorServer, store: Store) -> None:
    from shared.bootstrap import clients
    from shared.workflow.lifecycle import run_lifecycle

    request_id = await submitted_request(people)
    report = await run_lifecycle(await clients(), datetime.now(UTC) + timedelta(days=15))
    assert report.requests_expired == 1
    assert (await store.requests.get(request_id))[0].status is RequestStatus.EXPIRED


async def test_health_is_anonymous_and_names_a_bad_setting(people: People, monkeypatch: pytest.MonkeyPatch) -> None:
    ok = await call("health", "GET", "/api/health")
    assert ok.status == 200 and ok.json()["status"] == "ok"
    assert people.notify.primary_smtp_address not in ok.text
    monkeypatch.setenv("NOTIFY_FROM", "not an address")
    bad = await call("health", "GET", "/api/health")
    assert bad.status == 503
    assert "NOTIFY_FROM" in bad.json()["checks"]["settings"]
    assert "not an address" not in bad.text


async def test_teams_card_goes_out_when_configured(
    people: People, emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEAMS_WORKFLOW_URL", f"{emulator.base_url}/teams/workflows/smtp-guard")
    request_id = await submitted_request(people)
    report = await send_outbox()
    assert report.sent == 3  # the approvers' mail, the notice to the printer's mailbox and the card
    post = emulator.tenant.teams_posts[-1]
    card = post["body"]["attachments"][0]["content"] if "body" in post else post["attachments"][0]["content"]
    assert card["type"] == "AdaptiveCard"
    assert any(f.get("value") == people.printer.primary_smtp_address for f in card["body"][1]["facts"])
    assert all("token=" not in action["url"] for action in card["actions"])  # the link stays in mail
    assert request_id in card["actions"][0]["url"]


async def test_two_simultaneous_requests_for_one_mailbox_make_one_pending(people: People, store: Store) -> None:
    results = await asyncio.gather(*(submit_json(people, user=user) for user in (people.requester, people.outsider)))
    assert sorted(r.status for r in results) == [201, 409]
    pending = await store.requests.query("Status eq @s", {"s": "pending"})
    assert len(pending) == 1


async def test_a_decided_request_frees_its_mailbox(people: People, emulator: EmulatorServer, store: Store) -> None:
    first = await submitted_request(people)
    await decide_through_the_link(people, emulator, first, decision="deny", comment="Use a connector")
    second = await submit_json(people)
    assert second.status == 201, second.text


async def test_a_lost_reservation_release_is_taken_over(people: People, store: Store, storage: str) -> None:
    from azure.data.tables.aio import TableClient

    from shared.storage.tables import PENDING_PARTITION, WORKFLOW_TABLE

    first = await submitted_request(people)
    request, etag = await store.requests.get(first)
    request.status = RequestStatus.DENIED  # decided, but its mailbox reservation was never released
    await store.requests.update(request, etag)
    async with TableClient.from_connection_string(storage, WORKFLOW_TABLE) as table:
        assert (await table.get_entity(PENDING_PARTITION, people.printer.guid))["RequestId"] == first
        again = await submit_json(people)
        assert again.status == 201, again.text
        assert (await table.get_entity(PENDING_PARTITION, people.printer.guid))["RequestId"] == again.json()["id"]


async def test_renewal_adds_a_device_and_supersedes_the_old_exception(
    people: People, emulator: EmulatorServer, store: Store
) -> None:
    first = await submitted_request(people, vendor="Ricoh IM C3000")
    await decide_through_the_link(people, emulator, first)

    renewal = await submitted_request(people, vendor="Canon iR-ADV C5535", renews=first, days="60")
    await decide_through_the_link(people, emulator, renewal)

    old, new = await store.exceptions.get(first), await store.exceptions.get(renewal)
    assert old is not None and old.status.value == "superseded"
    assert new is not None and new.is_active(datetime.now(UTC))
    assert new.device == "Ricoh IM C3000; Canon iR-ADV C5535"
    assert emulator.tenant.find(people.printer.guid).smtp_client_authentication_disabled is False
    wrong = await submit_form(
        people,
        valid_request(people.outsider.primary_smtp_address, people.requester.primary_smtp_address, renews=first),
    )
    assert wrong.status == 422 and "is not an exception of this mailbox" in wrong.text


def stored_request(requester: str, at: datetime) -> tuple[ExceptionRequest, list[OutboxItem]]:
    """A new request as submit_request builds it, with its approval notice filed under the requester."""
    request = ExceptionRequest(
        id=str(uuid.uuid4()),
        mailbox_guid=str(uuid.uuid4()),
        mailbox_address="scanner@contoso.example",
        sender_kind=SenderKind.MFP,
        vendor="Ricoh",
        source_ips="",
        auth_method=AuthMethod.OAUTH,
        alternatives_reason=AlternativesReason.NO_OAUTH_SUPPORT,
        alternatives_detail="",
        days=30,
        owner="owner@contoso.example",
        contact="Facilities",
        ticket="",
        requester_id=requester,
        requester_upn="riley@contoso.example",
        status=RequestStatus.PENDING,
        created_at=at,
        expires_at=at + timedelta(days=14),
    )
    notice = OutboxItem(
        request.id, NotificationKind.APPROVAL_REQUEST, OutboxStatus.PENDING, at, at, requester_id=requester
    )
    return request, [notice]


async def store_or_limit(store: Store, requester: str, at: datetime, limit: int) -> str:
    """'stored' or 'limit'; a request refused at the limit must leave nothing behind."""
    request, notify = stored_request(requester, at)
    try:
        await store.requests.create(request, notify, limit)
    except DailyLimitError:
        assert await store.requests.get(request.id) is None
        return "limit"
    return "stored"


async def notices_of(store: Store, requester: str, now: datetime) -> list[OutboxItem]:
    return [item for item, _ in await store.outbox.due(now) if item.requester_id == requester]


async def test_the_daily_rate_is_a_slot_per_request_per_utc_day(store: Store, app_env: dict[str, str]) -> None:
    from shared.microsoft.identity import build_credential
    from shared.settings import load_settings

    await store.state.initialise("tenant-for-this-test", "test")
    day_end = datetime(2026, 11, 27, 23, 59, 30, tzinfo=UTC)
    alice, bob, carol = (str(uuid.uuid4()) for _ in range(3))

    outcomes = [await store_or_limit(store, alice, day_end, limit=2) for _ in range(3)]
    assert outcomes == ["stored", "stored", "limit"]
    assert await store_or_limit(store, alice, day_end + timedelta(seconds=31), limit=2) == "stored"  # a new UTC day
    later = day_end + timedelta(hours=1)
    assert sorted(item.daily_slot for item in await notices_of(store, alice, later)) == [0, 0, 1]

    # Another worker knows nothing of this one's slots: the insert that fails on a taken slot is the check.
    credential = build_credential()
    async with open_store(load_settings(), credential) as other:
        assert await store_or_limit(store, bob, day_end, limit=2) == "stored"
        assert await store_or_limit(other, bob, day_end, limit=2) == "stored"
        assert await store_or_limit(other, bob, day_end, limit=2) == "limit"
        assert await store_or_limit(store, bob, day_end, limit=2) == "limit"
        # Both workers at once, racing for the same slots: exactly the limit gets through.
        racing = await asyncio.gather(*(store_or_limit(s, carol, day_end, limit=3) for s in (store, other) * 4))
    await credential.close()
    assert sorted(racing) == ["limit"] * 5 + ["stored"] * 3
    assert sorted(item.daily_slot for item in await notices_of(store, carol, later)) == [0, 1, 2]

    # The sender finds notices in their slots, and marking one sent keeps its row, so it still counts.
    sent, ref = next((i, r) for i, r in await store.outbox.due(later) if i.requester_id == carol)
    await store.outbox.save(replace(sent, status=OutboxStatus.SENT, sent_at=later), ref)
    assert len(await notices_of(store, carol, later)) == 2
    assert await store_or_limit(store, carol, day_end, limit=3) == "limit"


async def test_a_member_of_a_nested_approver_group_gets_the_mail_and_may_decide(
    people: People, emulator: EmulatorServer, store: Store
) -> None:
    # Graph's checkMemberGroups is transitive, so a nested group's members may approve; they must be mailed too.
    inner = emulator.tenant.add_group("Messaging admins", [people.outsider.external_directory_object_id])
    emulator.tenant.add_group_member(people.group_id, inner)
    request_id = await submitted_request(people)
    await send_outbox()
    (mail,) = [m for m in emulator.tenant.sent_mail if request_id in mail_text(m)]
    assert sorted(mail["to"]) == sorted(
        m.primary_smtp_address.lower() for m in (people.approver, people.second_approver, people.outsider)
    )
    await decide_through_the_link(people, emulator, request_id, user=people.outsider)
    assert (await store.requests.get(request_id))[0].status is RequestStatus.APPROVED
    assert emulator.tenant.find(people.printer.guid).smtp_client_authentication_disabled is False


async def test_outbox_rows_from_earlier_layouts_are_sent_and_marked_sent_once(store: Store, storage: str) -> None:
    from azure.data.tables.aio import TableClient

    from shared.storage.tables import WORKFLOW_TABLE

    await store.state.initialise("tenant-for-this-test", "test")
    about, request_id, requester, now = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4()), datetime.now(UTC)
    pending = {"Status": "pending", "CreatedAt": now, "NextAttemptAt": now, "Attempts": 0}
    # No `About` column: it lived beside what it was about.
    revoked = {"PartitionKey": about, "RowKey": "outbox-revoked", "Kind": "revoked", "ExceptionId": about} | pending
    # An approval notice keyed by time, before the daily slots.
    timed_key = f"outbox-approval-request-{now:%Y%m%dT%H%M%S%f}-{request_id}"
    approval = {"PartitionKey": f"requester-{requester}", "RowKey": timed_key, "About": request_id}
    approval |= {"Kind": "approval-request", "RequesterId": requester} | pending
    async with TableClient.from_connection_string(storage, WORKFLOW_TABLE) as table:
        await table.create_entity(revoked)
        await table.create_entity(approval)
        due = {item.about: (item, ref) for item, ref in await store.outbox.due(now)}
        assert due[about][0].kind is NotificationKind.REVOKED
        assert due[request_id][0].kind is NotificationKind.APPROVAL_REQUEST
        for item, ref in due.values():
            await store.outbox.save(replace(item, status=OutboxStatus.SENT, sent_at=now), ref)
        assert await store.outbox.due(now) == []  # marked sent where they are, so never sent again
        rows = [e async for e in table.list_entities()]
    assert sorted(e["RowKey"] for e in rows if e["RowKey"].startswith("outbox-")) == sorted(
        ["outbox-revoked", timed_key]
    )


async def test_a_request_that_cannot_be_stored_leaves_no_notice_behind(store: Store) -> None:
    from shared.errors import StoreError

    await store.state.initialise("tenant-for-this-test", "test")
    now, requester = datetime.now(UTC), str(uuid.uuid4())
    request, notify = stored_request(requester, now)
    await store.requests.create(request, notify, 2)
    # The same request id again: its request row exists, so the second store fails after its notice.
    again = [replace(notify[0], created_at=now + timedelta(seconds=1))]
    with pytest.raises(StoreError):
        await store.requests.create(request, again, 2)
    assert [item.created_at for item in await notices_of(store, requester, now + timedelta(seconds=2))] == [now]
    # Its slot was given back: the requester's second request of the day still fits under a limit of 2.
    assert await store_or_limit(store, requester, now, limit=2) == "stored"


async def test_the_approval_page_shows_what_would_make_a_basic_approval_useless(
    people: People, emulator: EmulatorServer, store: Store
) -> None:
    tenant = emulator.tenant
    tenant.authentication_policies = [
        {"Name": "Block Basic SMTP", "AllowBasicAuthSmtp": False},
        {"Name": "Allow Basic SMTP", "AllowBasicAuthSmtp": True},
        {"Name": "Kiosk users", "AllowBasicAuthSmtp": False},
    ]
    tenant.default_authentication_policy = "Allow Basic SMTP"
    tenant.assign_authentication_policy(people.printer.guid, "Block Basic SMTP")
    tenant.security_defaults = True
    tenant.block_legacy_auth_policy()
    two_days_ago = datetime.now(UTC) - timedelta(days=2)
    tenant.add_signin(people.printer.primary_smtp_address, when=two_days_ago, ip="198.51.100.7")
    for _ in range(3):  # password spray: counted apart, its IP never shown
        tenant.add_signin(
            people.printer.primary_smtp_address, when=two_days_ago, ip="192.0.2.66", status_error_code=50126
        )
    await store.usage.remember({people.printer.primary_smtp_address: Protocol.BOTH}, "admin", datetime.now(UTC))

    request_id = await submitted_request(people, auth_method="basic")
    link = f"/api/approvals/{request_id}"

    async def page_text() -> str:
        page = await call("approval_page", "GET", link, user=people.approver, route_params={"id": request_id})
        assert page.status == 200
        return " ".join(html.unescape(page.text).split())

    text = await page_text()
    assert "The authentication policy Block Basic SMTP (assigned to the user) blocks Basic SMTP AUTH" in text
    assert "Security defaults are on: they block Basic authentication." in text
    assert "Conditional Access policies block legacy authentication: Block legacy authentication." in text
    assert "198.51.100.7" in text and "success" in text  # the recent SMTP AUTH sign-in
    assert "Successful Basic SMTP AUTH sign-ins: 1, the last on" in text
    assert "Failed sign-ins (mostly password spray, never counted as use): 3" in text and "192.0.2.66" not in text
    assert "The last SMTP AUTH clients report shows this sender using <strong>both</strong>" in text

    tenant.assign_authentication_policy(people.printer.guid, None)
    assert "Authentication policy Allow Basic SMTP (the organisation's default) allows Basic SMTP AUTH." in (
        await page_text()
    )
    tenant.default_authentication_policy = None
    assert "No authentication policy applies to this user, so none blocks Basic SMTP AUTH." in await page_text()

    # Without the Exchange role to read the user: every blocking policy, and why it could not say which applies.
    emulator.faults.configure(failing_cmdlets={"Get-User": 403})
    text = await page_text()
    assert "Authentication policies that block Basic SMTP: Block Basic SMTP, Kiosk users." in text
    assert "Which one applies: not available (Get-User, Get-OrganizationConfig:" in text

    # Sign-in logs need Entra ID P1: without it the page says so instead of "None".
    tenant.premium = False
    text = await page_text()
    assert "198.51.100.7" not in text and "not available" in text and "Entra ID P1" in text


async def test_an_oauth_request_reads_no_basic_auth_blockers(people: People, emulator: EmulatorServer) -> None:
    request_id = await submitted_request(people)  # OAuth
    emulator.calllog.clear()
    page = await call(
        "approval_page", "GET", f"/api/approvals/{request_id}", user=people.approver, route_params={"id": request_id}
    )
    assert page.status == 200 and "OAuth: no Basic-auth blocker applies." in page.text
    assert emulator.calllog.count("Get-AuthenticationPolicy") == emulator.calllog.count("Get-User") == 0
    assert emulator.calllog.count("Get-CASMailbox") == 1  # the mailbox's own state is still shown


async def test_an_approval_notice_written_ahead_of_its_request_waits_for_it(
    people: People, emulator: EmulatorServer, store: Store
) -> None:
    # create_request writes the notice first: an outbox run between the two writes must not drop it.
    now = datetime.now(UTC)
    request, notify = stored_request(people.requester.external_directory_object_id, now)
    request = replace(request, mailbox_guid=people.printer.guid, mailbox_address=people.printer.primary_smtp_address)
    assert await store.outbox.enqueue(notify[0])

    early = await send_outbox(now)
    assert (early.sent, early.failed, early.skipped) == (0, 1, 0)
    (waiting,) = [item for item, _ in await store.outbox.due(now + timedelta(minutes=1))]
    assert waiting.status is OutboxStatus.PENDING and "not stored yet" in waiting.last_error

    await store.requests.create(request, [], 10)  # the request row lands
    later = await send_outbox(now + timedelta(minutes=1))
    assert (later.sent, later.failed) == (1, 0)
    assert approval_link(emulator.tenant, request.id)

    # A notice whose request never appears is dropped once the submission counts as failed.
    orphan = OutboxItem(str(uuid.uuid4()), NotificationKind.APPROVAL_REQUEST, OutboxStatus.PENDING, now, now)
    assert await store.outbox.enqueue(orphan)
    dropped = await send_outbox(now + timedelta(minutes=10))
    assert (dropped.sent, dropped.skipped) == (0, 1)


async def test_no_basic_exception_runs_past_the_retirement_date_even_when_approved_later(
    people: People, emulator: EmulatorServer, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    today = datetime.now(UTC).date()
    monkeypatch.setenv("BASIC_AUTH_RETIREMENT_DATE", (today + timedelta(days=60)).isoformat())
    request_id = await submitted_request(people, auth_method="basic", days="30")
    # The date comes forward before the approver gets to the request: the grant is capped at it.
    retirement = today + timedelta(days=10)
    monkeypatch.setenv("BASIC_AUTH_RETIREMENT_DATE", retirement.isoformat())
    page, link = await open_approval(people, emulator, request_id)
    assert 'max="9"' in page.text and f"because Basic ends on {retirement.isoformat()}" in page.text
    too_long = await post_decision(people, request_id, page, link, days="30")
    assert too_long.status == 400 and "an approver may shorten, not extend" in html.unescape(too_long.text)
    assert (await post_decision(people, request_id, page, link)).status == 200
    granted = await store.exceptions.get(request_id)
    assert granted is not None and granted.expires_at <= datetime.combine(retirement, datetime.min.time(), UTC)

    # On the retirement date itself a pending Basic request can only be denied.
    outsider = people.outsider.primary_smtp_address
    second = await submitted_request(people, auth_method="basic", days="5", mailbox=outsider)
    monkeypatch.setenv("BASIC_AUTH_RETIREMENT_DATE", today.isoformat())
    page, link = await open_approval(people, emulator, second)
    assert "this request can only be denied" in page.text and 'name="days"' not in page.text
    refused = await post_decision(people, second, page, link)
    assert refused.status == 400 and "can only be denied" in refused.text
    assert (await post_decision(people, second, page, link, decision="deny", comment="Basic is retired")).status == 200
    assert (await store.requests.get(second))[0].status is RequestStatus.DENIED


async def test_graph_unreachable_fails_softly(
    people: People, emulator: EmulatorServer, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from devservices.azurite import free_port

    request_id = await submitted_request(people)
    # Nothing listens there, and Entra issues no token for it: azure-identity raises, not Graph.
    monkeypatch.setenv("GRAPH_ENDPOINT", f"https://127.0.0.1:{free_port()}")
    report = await send_outbox()
    assert (report.sent, report.failed) == (0, 2)  # the approvers' mail and the mailbox's notice
    waiting = [item for item, _ in await store.outbox.due(datetime.now(UTC) + timedelta(hours=1))]
    assert len(waiting) == 2
    assert all(item.about == request_id and "ClientAuthenticationError" in item.last_error for item in waiting)
    page = await call(
        "approval_page", "GET", f"/api/approvals/{request_id}", user=people.approver, route_params={"id": request_id}
    )
    assert page.status == 503  # the approver check needs Graph: a clear "unavailable", not a 500


async def test_graph_network_errors_become_graph_errors() -> None:
    from azure.core.credentials import AccessToken

    from devservices.azurite import free_port
    from shared.microsoft.graph import GraphClient, GraphError

    class StaticToken:  # a credential that always has a token, so only the network can fail
        async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
            return AccessToken("token", int(datetime.now(UTC).timestamp()) + 3600)

        async def close(self) -> None:
            return None

    graph = GraphClient(f"https://127.0.0.1:{free_port()}", StaticToken())  # type: ignore[arg-type]
    with pytest.raises(GraphError, match="ConnectError"):
        await graph.get_user("someone@contoso.example")
    evidence = await graph.security_defaults()
    assert evidence.unavailable == "not available: Graph could not be reached (ConnectError)"


async def test_an_interrupted_approval_is_repaired_once_and_never_overwrites(
    people: People, emulator: EmulatorServer, store: Store, storage: str
) -> None:
    from azure.data.tables.aio import TableClient

    from shared.bootstrap import clients
    from shared.errors import RefusedError
    from shared.storage.tables import EXCEPTIONS_TABLE
    from shared.workflow.lifecycle import run_lifecycle

    request_id = await submitted_request(people)
    await decide_through_the_link(people, emulator, request_id)
    granted = await store.exceptions.get(request_id)
    assert granted is not None
    # The approving process died after the decision, before the exception was written.
    async with TableClient.from_connection_string(storage, EXCEPTIONS_TABLE) as table:
        await table.delete_entity(granted.mailbox_guid, granted.id)

    def sets() -> int:
        return sum(1 for e in emulator.calllog.entries() if e["cmdlet"] == "Set-CASMailbox")

    c = await clients()
    before = sets()
    assert (await run_lifecycle(c)).repaired == 1
    assert sets() == before  # the repair writes storage only: the sweeps set Exchange
    repaired = await store.exceptions.get(request_id)
    assert repaired is not None and repaired.is_active(datetime.now(UTC)) and repaired.device == granted.device
    assert (await run_lifecycle(c)).repaired == 0

    # The repair only inserts: an exception with that id, whatever its state now, is never overwritten.
    await store.exceptions.revoke(repaired.mailbox_guid, "admin", datetime.now(UTC), only_id=repaired.id)
    with pytest.raises(RefusedError, match="exists already"):
        await store.exceptions.grant(granted, created_by="repair")
    assert (await store.exceptions.get(request_id)).status.value == "revoked"
