"""The inventory: every mailbox with SMTP AUTH effectively on, and every one that used it lately.

Reads only: one Get-TransportConfig, the CAS listing (a page per 1,000 mailboxes), and a Get-Mailbox
per listed row, ten to a $batch, for what the listing lacks (type and UPN); plus the sign-in pages.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Final

from shared.microsoft.exchange import ExchangeClient
from shared.model.inventory import InventoryRow, effectively_on
from shared.model.mailbox import MailboxState
from shared.model.usage import Protocol
from shared.storage import Store
from shared.workflow.evidence import SignInEvidence, read_sign_ins

if TYPE_CHECKING:  # msgraph-sdk is large: only the commands that read Graph import it
    from shared.microsoft.graph import GraphClient

DETAIL_SELECT: Final = ("Guid", "UserPrincipalName", "RecipientTypeDetails")


@dataclass(frozen=True, slots=True)
class Inventory:
    rows: list[InventoryRow]  # the most recently used first; never used after, by address
    scanned: int
    org_smtp_auth_disabled: bool | None
    sign_ins_unavailable: str  # why the sign-in logs could not be read ("" when they were)
    failures_capped: bool = False  # more failed sign-ins than were read: failure counts are lower bounds

    @property
    def effectively_on(self) -> int:
        return sum(r.effective for r in self.rows)

    @property
    def used(self) -> int:
        return sum(bool(r.usage and r.usage.used) for r in self.rows)

    @property
    def without_exception(self) -> int:
        return sum(not r.exception for r in self.rows)


async def take_inventory(
    store: Store,
    exchange: ExchangeClient,
    graph: GraphClient,
    *,
    tenant_id: str,
    days: int,
    protocols: dict[str, Protocol] | None,
    now: datetime,
    progress: Callable[[str], None],
) -> Inventory:
    await store.state.require_marker(tenant_id)
    sign_ins = asyncio.create_task(read_sign_ins(graph, now, days))  # while Exchange lists
    try:
        org = (await exchange.get_transport_config()).get("SmtpClientAuthenticationDisabled")
        mailboxes: list[MailboxState] = []
        async for page in exchange.iter_cas_mailboxes(with_user=True):
            mailboxes.extend(page)
            progress(f"listed {len(mailboxes)} mailboxes")
        evidence = await sign_ins
    finally:
        sign_ins.cancel()
    active = {r.mailbox_guid for r in await store.exceptions.all() if r.is_active(now)}
    listed = [m for m in mailboxes if effectively_on(m.smtp_auth_disabled, org) or _used(evidence, m)]
    progress(f"looking up {len(listed)} listed mailboxes")
    details = await exchange.get_each("Get-Mailbox", [m.guid for m in listed], DETAIL_SELECT)
    rows = []
    for mailbox, detail in zip(listed, details, strict=True):
        upn = str((detail or {}).get("UserPrincipalName") or "")
        rows.append(
            InventoryRow(
                mailbox=mailbox.address,
                mailbox_guid=mailbox.guid,
                type=str((detail or {}).get("RecipientTypeDetails") or ""),
                setting=mailbox.smtp_auth_disabled,
                effective=effectively_on(mailbox.smtp_auth_disabled, org),
                exception=mailbox.guid in active,
                usage=evidence.usage(mailbox.user_id, mailbox.address, upn),
                protocol=_protocol(protocols, mailbox.address, upn),
            )
        )
    rows.sort(key=lambda r: r.mailbox.lower())
    rows.sort(key=lambda r: r.last_use.timestamp() if r.last_use else float("-inf"), reverse=True)
    return Inventory(rows, len(mailboxes), org, evidence.unavailable, evidence.failures_capped)


def _used(evidence: SignInEvidence, mailbox: MailboxState) -> bool:
    usage = evidence.usage(mailbox.user_id, mailbox.address)
    return bool(usage and usage.used)


def _protocol(protocols: dict[str, Protocol] | None, *addresses: str) -> Protocol | None:
    if not protocols:
        return None
    return next((protocols[a.lower()] for a in addresses if a and a.lower() in protocols), None)
