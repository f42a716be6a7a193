"""SmtpGuardAudit: one partition per run, a row per change made and the run's summary.

Rows are only ever inserted (`create` fails on an existing row), so the trail is never rewritten.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from shared.model.clock import utc_now
from shared.model.runs import AuditEntry, RunSummary, tri_state
from shared.storage.tables import (
    AUDIT_TABLE,
    NO_ECHO,
    PROPERTY_CHARS,
    SUMMARY_ROW,
    TRANSACTION_LIMIT,
    TableClients,
    audit_change_row,
    storage_errors,
    submit,
)

_SUMMARY_ERRORS = 50  # the first errors of a run are kept in its summary; the rest are in the log


class AuditRepository:
    def __init__(self, tables: TableClients) -> None:
        self._tables = tables

    async def append(self, entries: Sequence[AuditEntry]) -> None:
        """Append change rows, each run's in transactions of its own partition."""
        table = self._tables[AUDIT_TABLE]
        by_run: dict[str, list[AuditEntry]] = {}
        for entry in entries:
            by_run.setdefault(entry.run_id, []).append(entry)
        async with storage_errors("write the audit trail"):
            for run_entries in by_run.values():
                for start in range(0, len(run_entries), TRANSACTION_LIMIT):
                    chunk = run_entries[start : start + TRANSACTION_LIMIT]
                    await submit(table, [("create", _change_entity(e)) for e in chunk])

    async def write_summary(self, summary: RunSummary) -> None:
        async with storage_errors("write the run summary"):
            await self._tables[AUDIT_TABLE].create_entity(_summary_entity(summary), **NO_ECHO)

    async def of_run(self, run_id: str) -> list[dict[str, Any]]:
        """A run's rows as stored: its changes and its summary."""
        async with storage_errors("read the audit trail"):
            return [
                dict(e)
                async for e in self._tables[AUDIT_TABLE].query_entities(
                    "PartitionKey eq @pk", parameters={"pk": run_id}
                )
            ]


def _change_entity(entry: AuditEntry) -> dict[str, Any]:
    change = entry.change
    return {
        "PartitionKey": entry.run_id,
        "RowKey": audit_change_row(change.guid),
        "MailboxGuid": change.guid,
        "MailboxAddress": change.address,
        "Before": tri_state(change.before),
        "After": tri_state(change.after),
        "Reason": change.reason.value,
        "Actor": entry.actor.object_id,
        "ActorAppId": entry.actor.app_id,
        "PlanId": entry.plan_id or "",
        "At": entry.at,
    }


def _summary_entity(summary: RunSummary) -> dict[str, Any]:
    return {
        "PartitionKey": summary.run_id,
        "RowKey": SUMMARY_ROW,
        "TenantId": summary.tenant_id,
        "Mode": summary.mode,
        "Full": summary.full,
        "Outcome": summary.outcome.value,
        "StartedAt": summary.started_at,
        "FinishedAt": summary.finished_at or utc_now(),
        "Actor": summary.actor.object_id if summary.actor else "",
        "ActorAppId": summary.actor.app_id if summary.actor else "",
        "Scanned": summary.scanned,
        "Planned": summary.planned,
        "Applied": summary.applied,
        "Failed": summary.failed,
        "Remaining": summary.remaining,
        "PlanId": summary.plan_id or "",
        "OrgSmtpAuthDisabled": tri_state(summary.org_smtp_auth_disabled),
        "Counts": json.dumps(summary.by_reason),
        "Message": summary.message[:PROPERTY_CHARS],
        "Errors": json.dumps(summary.errors[:_SUMMARY_ERRORS])[:PROPERTY_CHARS],
    }
