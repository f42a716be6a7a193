"""`exceptions import`: grandfather many devices at once from a CSV file, all or nothing for bad input.

Every row is checked by the rules of `exceptions add` (shared.workflow.grants). Mailboxes and owners
are looked up in Exchange ten to a $batch (owners once each), never one call a row. Only when every
row is good is anything written, each grant through the one grant path (storage only: the sweeps
then act, under their report mode and cap). A mailbox that already holds an active exception is
skipped, so an import that stopped halfway is simply run again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Final

from shared.errors import GuardError, InputError
from shared.microsoft.exchange import ExchangeClient
from shared.model.mailbox import MailboxState, Recipient
from shared.model.spreadsheet import Table, read_table, unquote_safe
from shared.model.usage import Protocol
from shared.storage import Store
from shared.workflow.grants import ExceptionGrant, exception_record, owner_problem, validate_grant

REQUIRED: Final = ("mailbox", "days", "reason")
ERRORS_SHOWN: Final = 50
GRANTS_AT_ONCE: Final = 8  # grants written concurrently (each is one storage read and one transaction)
# The inventory's protocol column, when the file has no auth column: Basic use anywhere means Basic.
_AUTH_OF_PROTOCOL: Final = {Protocol.BASIC.value: "basic", Protocol.BOTH.value: "basic", Protocol.OAUTH.value: "oauth"}


@dataclass(frozen=True, slots=True)
class ImportRow:
    line: int
    grant: ExceptionGrant


@dataclass(slots=True)
class ImportResult:
    checked: int = 0
    granted: list[ImportRow] = field(default_factory=list)
    skipped: list[ImportRow] = field(default_factory=list)  # already hold an active exception
    errors: list[str] = field(default_factory=list)  # `line N: field: problem`, for every bad row
    failed: str = ""  # a write that failed part-way: what happened, and that a rerun resumes


def read_rows(text: str, *, max_days: int, retirement: date | None, now: datetime) -> tuple[list[ImportRow], list[str]]:
    """Parse and check every row that needs no lookup; (good rows, one error line per bad field)."""
    try:
        table = read_table(text)
    except ValueError as err:
        raise InputError("csv", str(err)) from None
    missing = [c for c in REQUIRED if not table.has(c)]
    if not table.has("auth") and not table.has("protocol"):
        missing.append("auth")
    if missing:
        raise InputError(
            "csv",
            f"the header has no {', '.join(missing)} column: expected mailbox, days, reason and auth (or the "
            f"inventory's protocol), with owner and device optional (found {', '.join(table.columns) or 'none'})",
        )
    rows: list[ImportRow] = []
    errors: list[str] = []
    first_line: dict[str, int] = {}
    for line, cells in table.rows:
        try:
            grant = validate_grant(
                mailbox=unquote_safe(cells["mailbox"]),
                days=cells["days"],
                reason=cells["reason"],
                owner=unquote_safe(cells.get("owner", "")),
                device=cells.get("device", ""),
                auth=_auth(table, cells),
                max_days=max_days,
                retirement=retirement,
                now=now,
            )
        except InputError as err:
            errors.append(f"line {line}: {err.field}: {err.problem}")
            continue
        if grant.mailbox in first_line:
            errors.append(f"line {line}: mailbox: {grant.mailbox} is also on line {first_line[grant.mailbox]}")
            continue
        first_line[grant.mailbox] = line
        rows.append(ImportRow(line, grant))
    return rows, errors


def _auth(table: Table, cells: dict[str, str]) -> str:
    """The row's auth: its own column, else the inventory's protocol; never a guess."""
    protocol = cells.get("protocol", "").lower()
    value = cells["auth"] if table.has("auth") else _AUTH_OF_PROTOCOL.get(protocol, "")
    if not value:
        raise InputError("auth", "is unknown: give oauth or basic (a wrong oauth would block a Basic device)")
    return value


async def import_exceptions(
    store: Store,
    exchange: ExchangeClient,
    *,
    tenant_id: str,
    text: str,
    max_days: int,
    retirement: date | None,
    granted_by: str,
    now: datetime,
    dry_run: bool,
    progress: Callable[[str], None],
) -> ImportResult:
    rows, errors = read_rows(text, max_days=max_days, retirement=retirement, now=now)
    result = ImportResult(checked=len(rows) + len(errors), errors=errors)
    await store.state.require_marker(tenant_id)
    progress(f"checking {len(rows)} mailboxes and their owners in Exchange")
    mailboxes, owners = await _look_up(exchange, rows)
    result.errors += _lookup_errors(rows, mailboxes, owners)
    if result.errors:
        result.errors.sort(key=lambda e: int(e.split(":", 1)[0].removeprefix("line ")))
        return result
    active = {r.mailbox_guid for r in await store.exceptions.all() if r.is_active(now)}
    for row in rows:
        mailbox = mailboxes[row.grant.mailbox]
        assert mailbox is not None
        (result.skipped if mailbox.guid in active else result.granted).append(row)
    if not dry_run:
        await _grant_all(store, result, mailboxes, owners, granted_by, now, progress)
    return result


async def _look_up(
    exchange: ExchangeClient, rows: list[ImportRow]
) -> tuple[dict[str, MailboxState | None], dict[str, Recipient | None]]:
    addresses = [row.grant.mailbox for row in rows]
    owner_addresses = sorted({row.grant.owner for row in rows if row.grant.owner})
    found, found_owners = await asyncio.gather(
        exchange.find_mailboxes(addresses), exchange.find_recipients(owner_addresses)
    )
    return dict(zip(addresses, found, strict=True)), dict(zip(owner_addresses, found_owners, strict=True))


def _lookup_errors(
    rows: list[ImportRow], mailboxes: dict[str, MailboxState | None], owners: dict[str, Recipient | None]
) -> list[str]:
    errors: list[str] = []
    first_line: dict[str, int] = {}  # by GUID: two addresses of one mailbox (an alias, the UPN) are one row
    for row in rows:
        mailbox = mailboxes[row.grant.mailbox]
        if mailbox is None:
            errors.append(f"line {row.line}: mailbox: Exchange has no mailbox {row.grant.mailbox}")
            continue
        if mailbox.guid in first_line:
            where = first_line[mailbox.guid]
            errors.append(f"line {row.line}: mailbox: {row.grant.mailbox} is the same mailbox as line {where}")
            continue
        first_line[mailbox.guid] = row.line
        if row.grant.owner and (problem := owner_problem(row.grant.owner, owners[row.grant.owner])):
            errors.append(f"line {row.line}: owner: {problem}")
    return errors


async def _grant_all(
    store: Store,
    result: ImportResult,
    mailboxes: dict[str, MailboxState | None],
    owners: dict[str, Recipient | None],
    granted_by: str,
    now: datetime,
    progress: Callable[[str], None],
) -> None:
    """Grant every row; on a failure, stop and say how far it got (a rerun skips what was granted)."""
    done: list[ImportRow] = []

    async def grant(row: ImportRow) -> None:
        mailbox = mailboxes[row.grant.mailbox]
        assert mailbox is not None
        owner = owners.get(row.grant.owner) if row.grant.owner else None
        await store.exceptions.grant(exception_record(row.grant, mailbox, owner, granted_by, now), granted_by)
        done.append(row)

    pending = list(result.granted)
    for start in range(0, len(pending), GRANTS_AT_ONCE):
        outcomes = await asyncio.gather(
            *(grant(r) for r in pending[start : start + GRANTS_AT_ONCE]), return_exceptions=True
        )
        failure = next((o for o in outcomes if isinstance(o, BaseException)), None)
        if failure is not None:
            if not isinstance(failure, GuardError):
                raise failure
            result.granted = done
            result.failed = f"{failure}; {len(done)} granted before it stopped: run the import again to go on"
            return
        progress(f"granted {len(done)} of {len(pending)}")
