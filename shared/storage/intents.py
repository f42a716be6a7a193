"""SmtpGuardIntents: what a run is about to change, written before it sends it.

A run that applies changes first opens itself (a row in the `open` partition), then inserts the
intent of each group of batches (the planned changes, with their `before`) before the first of them
goes to Exchange, and
closes itself once every change that landed has its audit row. A run that dies stays open; the next
run settles it: it reads the mailboxes of its intents and writes the missing audit rows, marked
recovered. So every change that landed in Exchange gets its row, even after a SIGKILL.
"""

from __future__ import annotations

import json
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

from shared.model.actor import Actor
from shared.model.mailbox import Change
from shared.storage.tables import (
    INTENTS_TABLE,
    NO_ECHO,
    OPEN_RUNS_PARTITION,
    TableClients,
    intent_row,
    storage_errors,
)


@dataclass(frozen=True, slots=True)
class OpenRun:
    """A run that sent changes and has not settled its audit trail: what the settling run needs."""

    run_id: str
    actor: Actor
    plan_id: str
    opened_at: datetime
    mode: str
    full: bool


@dataclass(frozen=True, slots=True)
class Intent:
    batch: int
    at: datetime
    changes: list[Change]


class IntentRepository:
    def __init__(self, tables: TableClients) -> None:
        self._tables = tables

    async def open_run(self, run: OpenRun) -> None:
        entity = {"PartitionKey": OPEN_RUNS_PARTITION, "RowKey": run.run_id, "Actor": run.actor.object_id}
        entity |= {"ActorAppId": run.actor.app_id, "PlanId": run.plan_id, "OpenedAt": run.opened_at}
        entity |= {"Mode": run.mode, "Full": run.full}
        async with storage_errors("open the run's intents"):
            with suppress(ResourceExistsError):  # opened before: a retry of the insert finds it
                await self._tables[INTENTS_TABLE].create_entity(entity, **NO_ECHO)

    async def record(self, run_id: str, intent: Intent) -> None:
        """Insert one batch's intent; it must be stored before the batch is sent."""
        changes = json.dumps([c.to_json() for c in intent.changes], separators=(",", ":"))
        entity = {"PartitionKey": run_id, "RowKey": intent_row(intent.batch), "At": intent.at, "Changes": changes}
        async with storage_errors("record what the run is about to change"):
            await self._tables[INTENTS_TABLE].create_entity(entity, **NO_ECHO)

    async def close_run(self, run_id: str) -> None:
        """The run's audit trail is complete: nothing of it needs settling any more."""
        async with storage_errors("close the run's intents"):
            with suppress(ResourceNotFoundError):  # closed by a settling run meanwhile
                await self._tables[INTENTS_TABLE].delete_entity(OPEN_RUNS_PARTITION, run_id)

    async def open_runs(self) -> list[OpenRun]:
        async with storage_errors("read the open runs"):
            return [
                _open_run(e)
                async for e in self._tables[INTENTS_TABLE].query_entities(
                    "PartitionKey eq @pk", parameters={"pk": OPEN_RUNS_PARTITION}
                )
            ]

    async def of_run(self, run_id: str) -> list[Intent]:
        async with storage_errors("read the run's intents"):
            rows = [
                e
                async for e in self._tables[INTENTS_TABLE].query_entities(
                    "PartitionKey eq @pk", parameters={"pk": run_id}
                )
            ]
        return [
            Intent(int(e["RowKey"].rsplit("-", 1)[1]), e["At"], [Change.from_json(c) for c in json.loads(e["Changes"])])
            for e in sorted(rows, key=lambda r: r["RowKey"])
        ]


def _open_run(entity: Any) -> OpenRun:
    return OpenRun(
        run_id=entity["RowKey"],
        actor=Actor(object_id=entity.get("Actor", ""), app_id=entity.get("ActorAppId", "")),
        plan_id=entity.get("PlanId", ""),
        opened_at=entity["OpenedAt"],
        mode=entity.get("Mode", ""),
        full=bool(entity.get("Full", False)),
    )
