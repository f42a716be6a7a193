"""The last SMTP AUTH clients report an admin merged (`inventory --usage-csv`): the protocol per sender.

Rows live in the state table's `usage-report` partition. A new report's rows are written under a new
import id, and then the `latest` row names it, so readers see one whole report or the one before.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime

from azure.core.exceptions import ResourceNotFoundError

from shared.model.usage import Protocol
from shared.storage.tables import (
    STATE_TABLE,
    TRANSACTION_LIMIT,
    USAGE_LATEST_ROW,
    USAGE_PARTITION,
    TableClients,
    storage_errors,
    submit,
    usage_sender_row,
)


class UsageReportRepository:
    def __init__(self, tables: TableClients) -> None:
        self._tables = tables

    async def remember(self, protocols: Mapping[str, Protocol], imported_by: str, at: datetime) -> str:
        """Store a report's protocol per sender as the current one; returns its import id."""
        import_id = str(uuid.uuid4())
        rows = {
            usage_sender_row(address): {"Address": address, "Protocol": protocol.value, "ImportId": import_id}
            for address, protocol in protocols.items()
        }
        entities = [{"PartitionKey": USAGE_PARTITION, "RowKey": row, **props} for row, props in rows.items()]
        latest = {"PartitionKey": USAGE_PARTITION, "RowKey": USAGE_LATEST_ROW, "ImportId": import_id}
        latest |= {"ImportedAt": at, "ImportedBy": imported_by, "Senders": len(entities)}
        async with storage_errors("store the SMTP AUTH clients report"):
            table = self._tables[STATE_TABLE]
            for start in range(0, len(entities), TRANSACTION_LIMIT):
                await submit(table, [("upsert", e) for e in entities[start : start + TRANSACTION_LIMIT]])
            await table.upsert_entity(latest)
        return import_id

    async def protocol_of(self, address: str) -> Protocol | None:
        """The protocol the current report shows for this sender; None without a report or a row."""
        async with storage_errors("read the SMTP AUTH clients report"):
            table = self._tables[STATE_TABLE]
            try:
                latest = await table.get_entity(USAGE_PARTITION, USAGE_LATEST_ROW, select=["ImportId"])
                row = await table.get_entity(USAGE_PARTITION, usage_sender_row(address))
            except ResourceNotFoundError:
                return None
        if row.get("ImportId") != latest.get("ImportId"):
            return None  # a sender of an earlier report that the current one does not list
        try:
            return Protocol(str(row.get("Protocol")))
        except ValueError:
            return None
