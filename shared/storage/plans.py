"""SmtpGuardPlans: what a report run planned, kept for review and for `--confirm-plan`.

A plan is a header row plus chunks of its changes as JSON (a property holds at most 32K characters).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import UpdateMode

from shared.errors import RefusedError, StoreError
from shared.model.auth_policy import PolicyChange
from shared.model.mailbox import Change
from shared.model.runs import PlanStatus, StoredPlan, from_tri_state, tri_state
from shared.storage.tables import (
    PLAN_CHUNK_CHARS,
    PLAN_CHUNK_RANGE,
    PLAN_HEADER_ROW,
    PLANS_TABLE,
    POLICY_CHUNK_RANGE,
    TRANSACTION_LIMIT,
    TableClients,
    plan_chunk_row,
    plan_policy_chunk_row,
    storage_errors,
    submit,
    unchanged_since,
)


class PlanRepository:
    def __init__(self, tables: TableClients) -> None:
        self._tables = tables

    async def save(self, plan: StoredPlan) -> None:
        """Chunks first, header last: a plan is visible only once all of it is stored."""
        chunks = _chunks(c.to_json() for c in plan.changes)
        policy_chunks = _chunks(c.to_json() for c in plan.policy_changes) if plan.policy_changes else []
        table = self._tables[PLANS_TABLE]
        async with storage_errors("store the plan"):
            entities = [
                {"PartitionKey": plan.plan_id, "RowKey": row(index), "Changes": chunk}
                for row, rows in ((plan_chunk_row, chunks), (plan_policy_chunk_row, policy_chunks))
                for index, chunk in enumerate(rows)
            ]
            for start in range(0, len(entities), TRANSACTION_LIMIT):
                await submit(table, [("upsert", e) for e in entities[start : start + TRANSACTION_LIMIT]])
            await table.upsert_entity(_header(plan, len(chunks), len(policy_chunks)))

    async def load(self, plan_id: str) -> tuple[StoredPlan, str] | None:
        """The plan and the etag of its header, or None when there is no such plan."""
        table = self._tables[PLANS_TABLE]
        async with storage_errors("read the plan"):
            try:
                header = await table.get_entity(plan_id, PLAN_HEADER_ROW)
            except ResourceNotFoundError:
                return None
            changes = await self._chunk_items(plan_id, PLAN_CHUNK_RANGE, int(header.get("Chunks", 0)))
            policies = await self._chunk_items(plan_id, POLICY_CHUNK_RANGE, int(header.get("PolicyChunks", 0)))
        plan = StoredPlan(
            plan_id=plan_id,
            tenant_id=header["TenantId"],
            created_at=header["CreatedAt"],
            mode=header["Mode"],
            full=bool(header["Full"]),
            status=PlanStatus(header["Status"]),
            scanned=int(header.get("Scanned", 0)),
            org_smtp_auth_disabled=from_tri_state(header.get("OrgSmtpAuthDisabled", "null")),
            changes=[Change.from_json(item) for item in changes],
            undoes=header.get("UndoesRun", ""),
            policy_changes=[PolicyChange.from_json(item) for item in policies],
        )
        return plan, header.metadata["etag"]

    async def _chunk_items(self, plan_id: str, keys: tuple[str, str], expected: int) -> list[Mapping[str, Any]]:
        first, after = keys
        rows = [
            e
            async for e in self._tables[PLANS_TABLE].query_entities(
                "PartitionKey eq @pk and RowKey ge @first and RowKey lt @after",
                parameters={"pk": plan_id, "first": first, "after": after},
            )
        ]
        if len(rows) != expected:
            raise StoreError(f"plan {plan_id} is incomplete in storage ({len(rows)} of {expected} chunks)")
        return [item for row in sorted(rows, key=lambda r: r["RowKey"]) for item in json.loads(row["Changes"])]

    async def claim(self, plan_id: str, etag: str, run_id: str) -> None:
        """Mark a reviewed plan applied, once. A second confirmation of the same plan is refused."""
        entity = {
            "PartitionKey": plan_id,
            "RowKey": PLAN_HEADER_ROW,
            "Status": PlanStatus.APPLIED.value,
            "AppliedByRun": run_id,
        }
        async with storage_errors("mark the plan applied"):
            try:
                await self._tables[PLANS_TABLE].update_entity(entity, mode=UpdateMode.MERGE, **unchanged_since(etag))
            except ResourceModifiedError:
                raise RefusedError(f"plan {plan_id} was confirmed by another run at the same time") from None


def _chunks(items: Iterable[Mapping[str, Any]]) -> list[str]:
    chunks: list[str] = []
    current: list[str] = []
    size = 2
    for data in items:
        item = json.dumps(data, separators=(",", ":"))
        if current and size + len(item) + 1 > PLAN_CHUNK_CHARS:
            chunks.append("[" + ",".join(current) + "]")
            current, size = [], 2
        current.append(item)
        size += len(item) + 1
    if current or not chunks:
        chunks.append("[" + ",".join(current) + "]")
    return chunks


def _header(plan: StoredPlan, chunks: int, policy_chunks: int) -> dict[str, Any]:
    return {
        "PartitionKey": plan.plan_id,
        "RowKey": PLAN_HEADER_ROW,
        "TenantId": plan.tenant_id,
        "CreatedAt": plan.created_at,
        "Mode": plan.mode,
        "Full": plan.full,
        "Status": plan.status.value,
        "Scanned": plan.scanned,
        "ChangeCount": len(plan.changes),
        "Counts": json.dumps(plan.counts()),
        "OrgSmtpAuthDisabled": tri_state(plan.org_smtp_auth_disabled),
        "Chunks": chunks,
        **({"UndoesRun": plan.undoes} if plan.undoes else {}),
        **({"PolicyChunks": policy_chunks, "PolicyChangeCount": len(plan.policy_changes)} if policy_chunks else {}),
    }
