"""The install's own rows in SmtpGuardState: the install marker, the CSRF key, the watermarks, the lease.

Tables are created only by `initialise` (the CLI's `init`), which also writes the install marker.
Every other path requires the marker, so a wrong connection string pointing at an empty account is
refused rather than read as "no exceptions".
"""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from azure.core.exceptions import AzureError, ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import UpdateMode
from azure.data.tables.aio import TableClient

from shared.errors import NotInstalledError, RefusedError, StoreError, WrongTenantError, first_line
from shared.model.clock import utc_now
from shared.storage.tables import (
    CSRF_SECRET_ROW,
    INSTALL_PARTITION,
    LEASE_ROW,
    MARKER_ROW,
    NO_ECHO,
    SCHEMA_VERSION,
    STATE_TABLE,
    SWEEP_PARTITION,
    TABLES,
    TableClients,
    storage_errors,
    unchanged_since,
    watermark_row,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class InstallMarker:
    tenant_id: str
    installed_at: datetime
    installed_by: str
    schema_version: int


@dataclass(frozen=True, slots=True)
class SweepState:
    """Where incremental sweeps resume, for one enforcement mode."""

    watermark: datetime | None
    full_pending: bool


class StateRepository:
    def __init__(self, tables: TableClients) -> None:
        self._tables = tables
        self._csrf_secret: bytes | None = None

    @property
    def _table(self) -> TableClient:
        return self._tables[STATE_TABLE]

    async def initialise(self, tenant_id: str, installed_by: str) -> tuple[InstallMarker, bool]:
        """Create the tables and the marker. Idempotent; refuses a store that belongs to another tenant.

        Returns the marker and whether this call created it.
        """
        async with storage_errors("create the tables"):
            for name in TABLES:
                await self._tables.service.create_table_if_not_exists(name)
        try:
            return await self.require_marker(tenant_id), False
        except NotInstalledError:
            pass
        marker = InstallMarker(tenant_id, utc_now(), installed_by, SCHEMA_VERSION)
        entity = {
            "PartitionKey": INSTALL_PARTITION,
            "RowKey": MARKER_ROW,
            "TenantId": marker.tenant_id,
            "InstalledAt": marker.installed_at,
            "InstalledBy": marker.installed_by,
            "SchemaVersion": marker.schema_version,
        }
        async with storage_errors("write the install marker"):
            try:
                await self._table.create_entity(entity, **NO_ECHO)
            except ResourceExistsError:  # another init won the race; check it is ours
                return await self.require_marker(tenant_id), False
        return marker, True

    async def require_marker(self, tenant_id: str) -> InstallMarker:
        """The install marker, or NotInstalledError / WrongTenantError. Called before any sweep."""
        hint = "run `python -m shared.cli init` against the right storage account first"
        try:
            entity = await self._table.get_entity(INSTALL_PARTITION, MARKER_ROW)
        except ResourceNotFoundError:
            raise NotInstalledError(f"this storage account has no SMTP AUTH Guard install marker: {hint}") from None
        except AzureError as err:
            raise StoreError(f"table storage could not be read (install marker): {first_line(err)}") from None
        if entity.get("TenantId") != tenant_id:
            raise WrongTenantError(
                f"the install marker names tenant {entity.get('TenantId')}, not {tenant_id}: "
                "AzureWebJobsStorage points at another install's storage"
            )
        return InstallMarker(
            tenant_id=entity["TenantId"],
            installed_at=entity["InstalledAt"],
            installed_by=entity.get("InstalledBy", ""),
            schema_version=int(entity.get("SchemaVersion", 0)),
        )

    async def csrf_secret(self) -> bytes:
        """The key that signs CSRF tokens: made once per install by an insert-only write, so every
        worker agrees on it and an existing install needs no new step. Never logged."""
        if self._csrf_secret is None:
            async with storage_errors("read the CSRF key"):
                try:
                    entity = await self._table.get_entity(INSTALL_PARTITION, CSRF_SECRET_ROW)
                except ResourceNotFoundError:
                    entity = {
                        "PartitionKey": INSTALL_PARTITION,
                        "RowKey": CSRF_SECRET_ROW,
                        "Key": secrets.token_urlsafe(32),
                    }
                    try:
                        await self._table.create_entity(entity, **NO_ECHO)
                    except ResourceExistsError:  # another worker made it first: use theirs
                        entity = await self._table.get_entity(INSTALL_PARTITION, CSRF_SECRET_ROW)
            self._csrf_secret = base64.urlsafe_b64decode(entity["Key"] + "==")
        return self._csrf_secret

    async def sweep_state(self, mode: str) -> SweepState:
        async with storage_errors("read the sweep state"):
            try:
                entity = await self._table.get_entity(SWEEP_PARTITION, watermark_row(mode))
            except ResourceNotFoundError:
                return SweepState(watermark=None, full_pending=True)
        return SweepState(watermark=entity.get("Watermark"), full_pending=bool(entity.get("FullPending", False)))

    async def save_sweep_state(self, mode: str, state: SweepState, run_id: str) -> None:
        entity: dict[str, Any] = {
            "PartitionKey": SWEEP_PARTITION,
            "RowKey": watermark_row(mode),
            "FullPending": state.full_pending,
            "UpdatedByRun": run_id,
        }
        if state.watermark is not None:
            entity["Watermark"] = state.watermark
        async with storage_errors("save the sweep state"):
            await self._table.upsert_entity(entity, mode=UpdateMode.MERGE)

    @asynccontextmanager
    async def lease(self, holder: str, duration: timedelta, now: Callable[[], datetime]) -> AsyncIterator[None]:
        """Hold the tenant's sweep lease, or raise RefusedError naming the run that holds it.

        An ETag-guarded row with an expiry: a crashed run blocks others only until it expires. A live
        run renews it every third of `duration`, however long its listing takes.
        """
        table = self._table
        async with storage_errors("take the sweep lease"):
            etag = await _take_lease(table, holder, now() + duration, now())
        done = asyncio.Event()

        async def renew() -> None:
            nonlocal etag
            while not done.is_set():
                with suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), duration.total_seconds() / 3)
                    return
                try:
                    metadata = await table.update_entity(
                        _lease_entity(holder, now() + duration), mode=UpdateMode.REPLACE, **unchanged_since(etag)
                    )
                except (ResourceModifiedError, ResourceNotFoundError):
                    logger.error("SMTP AUTH Guard: run %s lost the sweep lease to another run", holder)
                    return
                except AzureError as err:  # try again at the next tick, before the lease runs out
                    logger.warning("SMTP AUTH Guard: run %s could not renew its lease: %s", holder, first_line(err))
                    continue
                etag = str(metadata["etag"])

        renewal = asyncio.create_task(renew())
        try:
            yield
        finally:
            done.set()
            await renewal
            async with storage_errors("release the sweep lease"):
                with suppress(ResourceNotFoundError, ResourceModifiedError):  # expired and taken over
                    await table.delete_entity(SWEEP_PARTITION, LEASE_ROW, **unchanged_since(etag))


def _lease_entity(holder: str, expires: datetime) -> dict[str, Any]:
    return {"PartitionKey": SWEEP_PARTITION, "RowKey": LEASE_ROW, "Holder": holder, "ExpiresAt": expires}


async def _take_lease(table: TableClient, holder: str, expires: datetime, now: datetime) -> str:
    entity = _lease_entity(holder, expires)
    try:
        current = await table.get_entity(SWEEP_PARTITION, LEASE_ROW)
    except ResourceNotFoundError:
        try:
            metadata = await table.create_entity(entity, **NO_ECHO)
        except ResourceExistsError:
            raise RefusedError("another sweep took the lease at the same moment; this run stops") from None
        return str(metadata["etag"])
    if current["ExpiresAt"] > now:
        raise RefusedError(
            f"another sweep ({current['Holder']}) holds the lease until {current['ExpiresAt']:%Y-%m-%d %H:%M:%S}Z; "
            "this run stops"
        )
    try:  # expired: take it over, unless someone else does first
        metadata = await table.update_entity(
            entity, mode=UpdateMode.REPLACE, **unchanged_since(current.metadata["etag"])
        )
    except ResourceModifiedError:
        raise RefusedError("another sweep took over the expired lease first; this run stops") from None
    return str(metadata["etag"])
