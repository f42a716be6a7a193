"""The outbox sender: turns queued notifications into mail (Graph sendMail) and Teams cards.

Rows are rendered at send time from the current request or exception, so an approval link's token
is made at the moment it is mailed and only its hash is stored. A failed send stays pending with a
growing delay; nothing is dropped.
"""

from __future__ import annotations

import logging
from contextlib import suppress
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Final
from urllib.parse import urlencode

from azure.core import AsyncPipelineClient
from azure.core.exceptions import AzureError
from azure.core.rest import HttpRequest

from shared.bootstrap import Clients
from shared.errors import GuardError, NotYetStoredError, RefusedError
from shared.microsoft.exchange import ExchangeRetryPolicy
from shared.microsoft.transport import transport_options
from shared.model.backoff import exponential
from shared.model.clock import utc_now
from shared.model.exception_records import ExceptionRecord
from shared.model.notifications import NotificationKind, OutboxItem, OutboxStatus
from shared.model.requests import ExceptionRequest, RequestStatus
from shared.storage.requests import CLAIM_GRACE
from shared.workflow.mail import render_mail
from shared.workflow.requests import new_link_token

logger = logging.getLogger(__name__)

FIRST_DELAY: Final = timedelta(minutes=1)
MAX_DELAY: Final = timedelta(hours=1)
BATCH: Final = 50  # notifications sent per timer run


@dataclass(frozen=True, slots=True)
class SendReport:
    sent: int
    failed: int
    skipped: int


def retry_delay(attempts: int) -> timedelta:
    return timedelta(seconds=exponential(attempts, FIRST_DELAY.total_seconds(), MAX_DELAY.total_seconds()))


async def send_due(c: Clients, now: datetime | None = None) -> SendReport:
    now = now or utc_now()
    await c.require_installed()
    sent = failed = skipped = 0
    for item, ref in (await c.store.outbox.due(now))[:BATCH]:
        try:
            delivered = await _deliver(c, item, now)
        except GuardError as err:
            failed += 1
            attempts = item.attempts + 1
            logger.warning("notification %s/%s failed (attempt %d): %s", item.about, item.kind, attempts, err)
            retry = replace(
                item, attempts=attempts, last_error=str(err)[:1000], next_attempt_at=now + retry_delay(attempts)
            )
            with suppress(RefusedError):  # another instance handled it
                await c.store.outbox.save(retry, ref)
            continue
        sent += 1 if delivered else 0
        skipped += 0 if delivered else 1
        with suppress(RefusedError):
            await c.store.outbox.save(
                replace(item, status=OutboxStatus.SENT, sent_at=now, attempts=item.attempts + 1), ref
            )
    return SendReport(sent, failed, skipped)


async def _deliver(c: Clients, item: OutboxItem, now: datetime) -> bool:
    """Send one notification. False when there is nothing to send any more (e.g. already decided)."""
    request: ExceptionRequest | None = None
    etag = ""
    if not item.about.startswith("exception-"):
        loaded = await c.store.requests.get(item.about)
        if loaded is None:
            # Notices are written before their request: a young one may be ahead of it. Retry it
            # rather than mark it done, or the approvers would never hear of the request.
            if now - item.created_at < CLAIM_GRACE:
                raise NotYetStoredError(f"request {item.about} is not stored yet")
            return False
        request, etag = loaded
    exception = await c.store.exceptions.get(item.exception_id or (request.id if request else ""))
    base = c.workflow.public_base_url
    context: dict[str, Any] = {
        "request": request,
        "exception": exception,
        "base_url": base,
        "now": now,
        "retirement": c.workflow.basic_auth_retirement_date,
    }
    kind = item.kind
    if kind is NotificationKind.APPROVAL_REQUEST:
        if request is None or request.status is not RequestStatus.PENDING or now >= request.expires_at:
            return False
        token, hashed = new_link_token()
        await c.store.requests.update(replace(request, token_hash=hashed), etag)  # the old link stops working
        # After "#": a fragment never reaches a server, so the code stays out of every request log.
        context["approval_url"] = f"{base}/api/approvals/{request.id}#{urlencode({'token': token})}"
        return await _mail(c, await approver_mails(c), kind.value, context)
    if kind is NotificationKind.TEAMS_CARD:
        if request is None or not c.workflow.teams_workflow_url:
            return False
        await post_teams_card(c.workflow.teams_workflow_url, _card(request, base))
        return True
    if kind in (
        NotificationKind.REMINDER_14,
        NotificationKind.REMINDER_1,
        NotificationKind.EXPIRED,
        NotificationKind.REVOKED,
    ):
        if exception is None:
            return False
        context["renew_url"] = renewal_url(base, exception)
        context["days_left"] = max(0, (exception.expires_at - now).days)
        recipients = [exception.owner, request.requester_upn if request else ""]
        if kind in (NotificationKind.REMINDER_14, NotificationKind.REMINDER_1):
            recipients += await approver_mails(c)
        return await _mail(c, recipients, kind.value, context)
    if request is None:
        return False
    if kind is NotificationKind.MAILBOX_NOTICE:  # like an account-change notice: sent however it ends
        return await _mail(c, [request.mailbox_address], kind.value, context)
    return await _mail(c, [request.requester_upn, request.owner], kind.value, context)


async def _mail(c: Clients, recipients: list[str], template: str, context: dict[str, Any]) -> bool:
    to = sorted({r.lower() for r in recipients if r})
    if not to:
        return False
    subject, text, html = render_mail(template, **context)
    await c.graph.send_mail(c.workflow.notify_from, to, subject, html, text)
    return True


async def approver_mails(c: Clients) -> list[str]:
    mails: list[str] = []
    for object_id in sorted(c.workflow.approvers):
        user = await c.graph.get_user(object_id)
        if user is not None and user.mail:
            mails.append(user.mail)
    if c.workflow.approver_group_id:
        mails += await c.graph.group_member_mails(c.workflow.approver_group_id)
    return mails


def renewal_url(base: str, exception: ExceptionRecord) -> str:
    query = {"mailbox": exception.mailbox_address, "renews": exception.id, "auth_method": exception.auth_method.value}
    return f"{base}/api/exceptions/new?{urlencode(query)}"


def _card(request: ExceptionRequest, base: str) -> dict[str, Any]:
    facts = [
        {"title": "Mailbox", "value": request.mailbox_address},
        {"title": "Sender", "value": f"{request.sender_kind.value}: {request.vendor}"},
        {"title": "Auth", "value": request.auth_method.value},
        {"title": "Days", "value": str(request.days)},
        {"title": "Requested by", "value": request.requester_upn},
    ]
    return {
        "type": "message",
        "attachments": [
            {
                "contentType": "application/vnd.microsoft.card.adaptive",
                "content": {
                    "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                    "type": "AdaptiveCard",
                    "version": "1.4",
                    "body": [
                        {"type": "TextBlock", "weight": "Bolder", "text": "SMTP AUTH exception requested"},
                        {"type": "FactSet", "facts": facts},
                        {
                            "type": "TextBlock",
                            "wrap": True,
                            "text": "Approvers: use the link in your notification mail to decide.",
                        },
                    ],
                    "actions": [
                        {
                            "type": "Action.OpenUrl",
                            "title": "View request",
                            "url": f"{base}/api/exceptions/{request.id}",
                        }
                    ],
                },
            }
        ],
    }


async def post_teams_card(url: str, card: dict[str, Any]) -> None:
    """Post to a Teams Workflows webhook (Office 365 connectors are retired). The URL is a secret: not logged."""
    async with AsyncPipelineClient(
        base_url=url, policies=[ExchangeRetryPolicy(attempts=3)], **transport_options()
    ) as client:
        try:
            response = await client.send_request(HttpRequest("POST", url, json=card))
        except AzureError as err:
            raise GuardError(f"the Teams webhook could not be reached: {type(err).__name__}") from None
        if response.status_code >= 300:
            raise GuardError(f"the Teams webhook answered HTTP {response.status_code}")
