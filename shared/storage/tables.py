"""Where everything lives in Table Storage: table names, every partition and row key, the size limits,
and the translation of SDK errors into the project's errors.

These names and layouts are contracts with existing installs: a repository asks here for a key and
never builds one itself, so no repository knows another's layout.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, Final

from azure.core import MatchConditions
from azure.core.exceptions import AzureError, ResourceNotFoundError
from azure.data.tables import TableTransactionError, UpdateMode
from azure.data.tables.aio import TableClient, TableServiceClient

from shared.errors import InputError, NotInstalledError, RefusedError, StoreError, first_line

STATE_TABLE: Final = "SmtpGuardState"
EXCEPTIONS_TABLE: Final = "SmtpGuardExceptions"
PLANS_TABLE: Final = "SmtpGuardPlans"
AUDIT_TABLE: Final = "SmtpGuardAudit"
# Requests and their notification outbox share a partition (the request id), so a decision and the
# notification it owes are written in one transaction. The one exception is the approval notice
# written at submission, which is filed under its requester (see approval_notice_key).
WORKFLOW_TABLE: Final = "SmtpGuardRequests"
# Schema 2: what a run is about to change, written before it sends it, so a crash loses no audit row.
INTENTS_TABLE: Final = "SmtpGuardIntents"
# Schema 2: insert-only index rows, so a day's or a mailbox's changes are read without a table scan.
AUDIT_INDEX_TABLE: Final = "SmtpGuardAuditIndex"
TABLES: Final = (
    STATE_TABLE,
    EXCEPTIONS_TABLE,
    PLANS_TABLE,
    AUDIT_TABLE,
    WORKFLOW_TABLE,
    INTENTS_TABLE,
    AUDIT_INDEX_TABLE,
)

# The layout this code reads and writes. `init` upgrades an older store (creates the new tables and
# records the version in the install marker); a sweep refuses a store at another version.
# 2: intents and the day index. 3: the mailbox index (init indexes the rows written before it).
SCHEMA_VERSION: Final = 3
TRANSACTION_LIMIT: Final = 100  # entities per table transaction
PLAN_CHUNK_CHARS: Final = 30_000  # a string property holds at most 32K characters
PROPERTY_CHARS: Final = 30_000  # what a free-text property is cut to
STORE_RETRIES: Final = {"retry_total": 3, "retry_backoff_factor": 0.4}
# Inserts answer 204 with the ETag instead of echoing the entity, which the SDK would then parse.
NO_ECHO: Final = {"response_preference": "return-no-content"}

# -- SmtpGuardState ----------------------------------------------------------------------------------

INSTALL_PARTITION: Final = "install"
MARKER_ROW: Final = "marker"
CSRF_SECRET_ROW: Final = "csrf-secret"  # noqa: S105 - the row that holds the key, not a key
SWEEP_PARTITION: Final = "sweep"
LEASE_ROW: Final = "lease"
HOLD_ROW: Final = "hold"  # in SWEEP_PARTITION: the enforcement hold, while it stands


# Row = mailbox GUID: the app's authentication policy assigned to its user (PolicyAssignment).
OAUTH_ONLY_PARTITION: Final = "oauth-only"
USAGE_PARTITION: Final = "usage-report"  # the last SMTP AUTH clients report merged by `inventory --usage-csv`
USAGE_LATEST_ROW: Final = "latest"  # ImportId, ImportedAt, ImportedBy, Senders: which rows are current


def usage_sender_row(address: str) -> str:
    """A sender's row in USAGE_PARTITION (Address, Protocol, ImportId), keyed by a hash of its address."""
    return f"sender-{address_digest(address)}"


def address_digest(address: str) -> str:
    """A key-safe name for any address: 32 hex characters of the SHA-256 of its lower-cased form."""
    return hashlib.sha256(address.strip().lower().encode()).hexdigest()[:32]


def watermark_row(mode: str) -> str:
    """One watermark per enforcement mode: a report run never advances the enforce sweeps."""
    return f"watermark-{mode}"


# -- SmtpGuardExceptions: partition = mailbox GUID, row = exception id --------------------------------

# -- SmtpGuardPlans: partition = plan id (the run id that made it) ------------------------------------

PLAN_HEADER_ROW: Final = "plan"
PLAN_CHUNK_RANGE: Final = ("changes-", "changes.")  # every chunk's row key sorts inside this range


def plan_chunk_row(index: int) -> str:
    return f"changes-{index:05d}"


POLICY_CHUNK_RANGE: Final = ("policies-", "policies.")  # the plan's authentication-policy changes


def plan_policy_chunk_row(index: int) -> str:
    return f"policies-{index:05d}"


# -- SmtpGuardAudit: partition = run id -------------------------------------------------------------

SUMMARY_ROW: Final = "summary"
HOLD_EVENT_ROW: Final = "hold"  # in a `pause-{id}` or `resume-{id}` partition: the hold set or lifted


CHANGE_ROW_RANGE: Final = ("change-", "change.")  # every change row's key sorts inside this range


def audit_change_row(mailbox_guid: str) -> str:
    return f"change-{mailbox_guid}"


# A change of the authentication policy of a mailbox's user (OAuth-only exceptions): the export of
# SMTP AUTH changes reads CHANGE_ROW_RANGE only, so these rows have a range of their own.
POLICY_ROW_RANGE: Final = ("policy-", "policy.")


def audit_policy_row(mailbox_guid: str) -> str:
    return f"policy-{mailbox_guid}"


# -- SmtpGuardIntents: partition = run id, and one partition of the runs still open --------------------

OPEN_RUNS_PARTITION: Final = "open"  # row = run id: a run that sent changes and has not settled its audit


def intent_row(batch: int) -> str:
    return f"batch-{batch:06d}"


# -- SmtpGuardAuditIndex: insert-only rows that point into SmtpGuardAudit ----------------------------


def day_partition(moment: datetime) -> str:
    """The runs that changed something on this UTC day (row = run id)."""
    return f"day-{utc_day(moment)}"


MAILBOX_INDEX_BUCKETS: Final = 16  # partitions `mailbox-0` .. `mailbox-f`
# Row = run id: a sweep whose change rows are not yet in the mailbox index (the next run indexes them).
UNINDEXED_PARTITION: Final = "unindexed"


def mailbox_index_key(address: str) -> tuple[str, str]:
    """The partition and the row-key prefix of an address's index rows (row = `{prefix}{run id}`).

    Keyed by a hash of the lower-cased address: any address is a valid key, and a run's rows fall into
    16 partitions, so they are written in a few full transactions rather than one insert a mailbox.
    """
    digest = address_digest(address)
    return f"mailbox-{digest[0]}", f"{digest}-"


# -- SmtpGuardRequests ------------------------------------------------------------------------------

REQUEST_ROW: Final = "request"  # partition = request id
PENDING_PARTITION: Final = "pending-mailbox"  # one row per mailbox with a pending request (row = GUID)
PENDING_SLOT_PREFIX: Final = "pending-request-"  # in a requester's partition: one row per pending request
OUTBOX_RANGE: Final = ("outbox-", "outbox.")  # every notification's row key sorts inside this range


def requester_partition(requester_id: str) -> str:
    return f"requester-{requester_id}"


def pending_slot_row(slot: int) -> str:
    return f"{PENDING_SLOT_PREFIX}{slot:02d}"


def outbox_row(kind: str) -> str:
    """A notification beside what it is about, keyed by kind, so each is enqueued once."""
    return f"outbox-{kind}"


def utc_day(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%d")


def approval_notice_key(kind: str, day: str, slot: int | None) -> str:
    """`outbox-approval-request-{day}-{slot}` in the requester's partition; with no slot, the day's prefix.

    Taking a free numbered slot of the day is the requester's daily rate.
    """
    prefix = f"{outbox_row(kind)}-{day}-"
    return prefix if slot is None else f"{prefix}{slot:04d}"


def prefix_range(prefix: str) -> tuple[str, str]:
    """The row keys that extend `prefix` by at least one character ('-' sorts just before '.')."""
    return prefix, f"{prefix[:-1]}."


# -- SDK calls and their errors ----------------------------------------------------------------------


class TableClients:
    """One TableClient per table, built on first use: building one builds its whole pipeline."""

    def __init__(self, service: TableServiceClient) -> None:
        self.service = service
        self._tables: dict[str, TableClient] = {}

    def __getitem__(self, name: str) -> TableClient:
        table = self._tables.get(name)
        if table is None:
            table = self._tables[name] = self.service.get_table_client(name)
        return table


def unchanged_since(etag: str) -> dict[str, Any]:
    """Keyword arguments that refuse a write when the entity changed since `etag` was read."""
    return {"etag": etag, "match_condition": MatchConditions.IfNotModified}


def guarded_merge(entity: Any, changes: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """A transaction's update of only `changes`, refused if the entity changed since it was read."""
    keys = {"PartitionKey": entity["PartitionKey"], "RowKey": entity["RowKey"]}
    return ("update", {**keys, **changes}, {"mode": UpdateMode.MERGE, **unchanged_since(entity.metadata["etag"])})


async def submit(table: TableClient, operations: list[Any]) -> None:
    """One transaction; a changed or existing entity becomes a RefusedError the caller can act on."""
    try:
        await table.submit_transaction(operations)
    except TableTransactionError as err:
        if getattr(err, "status_code", None) == 412:
            raise RefusedError("a stored record changed while it was being updated; try again") from None
        if getattr(err, "error_code", None) == "EntityAlreadyExists":
            raise RefusedError("the record exists already") from None
        raise


@asynccontextmanager
async def storage_errors(action: str) -> AsyncIterator[None]:
    """Turn SDK failures into one StoreError that says what could not be done."""
    try:
        yield
    except (RefusedError, InputError):
        raise
    except ResourceNotFoundError as err:
        raise NotInstalledError(
            f"could not {action}: a table is missing ({first_line(err)}); run `python -m shared.cli init`"
        ) from None
    except AzureError as err:
        raise StoreError(f"could not {action} in table storage: {first_line(err)}") from None
