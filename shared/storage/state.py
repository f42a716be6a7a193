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
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from azure.core.exceptions import AzureError, ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import UpdateMode
from azure.data.tables.aio import TableClient

from shared.errors import NotInstalledError, RefusedError, StoreError, WrongTenantError, first_line
from shared.model.clock import utc_now
from shared.model.hold import Hold
from shared.storage.tables import (
    CSRF_SECRET_ROW,
    HOLD_ROW,
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


class InstallStep(StrEnum):
    """What `init` did."""

    CREATED = "initialised"
    UPGRADED = "upgraded"
    CURRENT = "already initialised"


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

    async def initialise(
        self, tenant_id: str, installed_by: str, before_upgrade: Callable[[], Awaitable[object]] | None = None
    ) -> tuple[InstallMarker, InstallStep]:
        """Create the tables and the marker, or bring an older install up to SCHEMA_VERSION.

        Idempotent; refuses a store that belongs to another tenant, or one a newer version upgraded.
        `before_upgrade` (indexing the older rows) runs before the marker's version moves, so an
        upgrade that fails halfway is simply run again by the next `init`.
        """
        async with storage_errors("create the tables"):
            for name in TABLES:
                await self._tables.service.create_table_if_not_exists(name)
        try:
            marker = await self.require_marker(tenant_id)
        except NotInstalledError:
            return await self._install(tenant_id, installed_by)
        if marker.schema_version > SCHEMA_VERSION:
            raise RefusedError(_newer(marker))
        if marker.schema_version == SCHEMA_VERSION:
            return marker, InstallStep.CURRENT
        if before_upgrade is not None:
            await before_upgrade()
        changes = {"SchemaVersion": SCHEMA_VERSION, "UpgradedAt": utc_now(), "UpgradedBy": installed_by}
        async with storage_errors("upgrade the install marker"):
            entity = await self._table.get_entity(INSTALL_PARTITION, MARKER_ROW)
            with suppress(ResourceModifiedError):  # another init upgraded it meanwhile: the same outcome
                await self._table.update_entity(
                    {"PartitionKey": INSTALL_PARTITION, "RowKey": MARKER_ROW, **changes},
                    mode=UpdateMode.MERGE,
                    **unchanged_since(entity.metadata["etag"]),
                )
        return replace(marker, schema_version=SCHEMA_VERSION), InstallStep.UPGRADED

    async def _install(self, tenant_id: str, installed_by: str) -> tuple[InstallMarker, InstallStep]:
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
                return await self.require_marker(tenant_id), InstallStep.CURRENT
        return marker, InstallStep.CREATED

    async def require_current(self, tenant_id: str) -> InstallMarker:
        """The install marker of a store at this code's SCHEMA_VERSION; RefusedError names the fix."""
        marker = await self.require_marker(tenant_id)
        if marker.schema_version < SCHEMA_VERSION:
            raise RefusedError(
                f"this store is at schema version {marker.schema_version} and this version of SMTP AUTH Guard "
                f"needs {SCHEMA_VERSION}: run `python -m shared.cli init` to upgrade it (it keeps every row)"
            )
        if marker.schema_version > SCHEMA_VERSION:
            raise RefusedError(_newer(marker))
        return marker

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
    async def lease(self, holder: str, duration: timedelta, now: Callable[[], datetime]) -> AsyncIterator[Lease]:
        """Hold the tenant's sweep lease, or raise RefusedError naming the run that holds it.

        An ETag-guarded row with an expiry, renewed on a heartbeat every quarter of `duration`, as
        leader election does: a dead run's lease lapses within `duration`, and the next run takes over.
        The yielded Lease says whether it is still surely held; a run stops applying when it is not.
        """
        table = self._table
        lease = Lease(duration)
        async with storage_errors("take the sweep lease"):
            etag = await _take_lease(table, holder, now() + duration, now())
        done = asyncio.Event()

        async def heartbeat() -> None:
            nonlocal etag
            while not done.is_set():
                with suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), duration.total_seconds() / 4)
                    return
                sent = time.monotonic()
                try:
                    metadata = await table.update_entity(
                        _lease_entity(holder, now() + duration), mode=UpdateMode.REPLACE, **unchanged_since(etag)
                    )
                except (ResourceModifiedError, ResourceNotFoundError):
                    logger.error("SMTP AUTH Guard: run %s lost the sweep lease to another run", holder)
                    lease.lost = True
                    return
                except AzureError as err:  # try again at the next beat, while the lease still holds
                    logger.warning("SMTP AUTH Guard: run %s could not renew its lease: %s", holder, first_line(err))
                    continue
                etag = str(metadata["etag"])
                lease.renewed(sent)

        beating = asyncio.create_task(heartbeat())
        try:
            yield lease
        finally:
            done.set()
            await beating
            async with storage_errors("release the sweep lease"):
                with suppress(ResourceNotFoundError, ResourceModifiedError):  # expired and taken over
                    await table.delete_entity(SWEEP_PARTITION, LEASE_ROW, **unchanged_since(etag))

    async def readiness(self, tenant_id: str) -> tuple[bool, bool]:
        """For health: the marker is this tenant's (or the marker's errors); whether the store is at this
        code's schema version, and whether a hold stands.

        One request for both, so that a probe costs one storage read.
        """
        rows: dict[str, Any] = {}
        try:
            async for entity in self._table.query_entities(
                # The SDK substitutes parameters between spaces only: no parenthesis may touch one.
                "( PartitionKey eq @install and RowKey eq @marker ) or ( PartitionKey eq @sweep and RowKey eq @hold )",
                parameters={
                    "install": INSTALL_PARTITION,
                    "marker": MARKER_ROW,
                    "sweep": SWEEP_PARTITION,
                    "hold": HOLD_ROW,
                },
            ):
                rows[entity["RowKey"]] = entity
        except ResourceNotFoundError:
            rows = {}
        except AzureError as err:
            raise StoreError(f"table storage could not be read (install marker): {first_line(err)}") from None
        marker = rows.get(MARKER_ROW)
        if marker is None:
            raise NotInstalledError("this storage account has no SMTP AUTH Guard install marker")
        if marker.get("TenantId") != tenant_id:
            raise WrongTenantError("the install marker names another tenant")
        return int(marker.get("SchemaVersion", 0)) == SCHEMA_VERSION, HOLD_ROW in rows

    async def hold(self) -> Hold | None:
        """The enforcement hold, or None. Fails closed like every read: an error is not "no hold"."""
        async with storage_errors("read the enforcement hold"):
            try:
                entity = await self._table.get_entity(SWEEP_PARTITION, HOLD_ROW)
            except ResourceNotFoundError:
                return None
        # A row missing a property is still a hold: never read a damaged hold as "no hold".
        return Hold(
            held_by=str(entity.get("HeldBy", "")),
            reason=str(entity.get("Reason", "")),
            held_at=entity.get("HeldAt") or utc_now(),
        )

    async def set_hold(self, hold: Hold) -> tuple[Hold, bool]:
        """Set the hold by an insert; when one stands already, that one stays. Returns it and whether it is new."""
        entity = {"PartitionKey": SWEEP_PARTITION, "RowKey": HOLD_ROW, "HeldBy": hold.held_by}
        entity |= {"Reason": hold.reason, "HeldAt": hold.held_at}
        async with storage_errors("set the enforcement hold"):
            try:
                await self._table.create_entity(entity, **NO_ECHO)
            except ResourceExistsError:
                standing = await self.hold()
                if standing is not None:
                    return standing, False
                await self._table.create_entity(entity, **NO_ECHO)  # lifted meanwhile: set it now
        return hold, True

    async def lift_hold(self) -> Hold | None:
        """Lift the hold; returns the one lifted, or None when there was none."""
        standing = await self.hold()
        if standing is not None:
            async with storage_errors("lift the enforcement hold"):
                with suppress(ResourceNotFoundError):  # lifted by another resume meanwhile
                    await self._table.delete_entity(SWEEP_PARTITION, HOLD_ROW)
        return standing


class Lease:
    """A sweep lease this run holds, as far as it knows: renewed in time, and not taken over."""

    def __init__(self, duration: timedelta) -> None:
        self._seconds = duration.total_seconds()
        self._valid_until = time.monotonic() + self._seconds
        self.lost = False

    def renewed(self, sent: float) -> None:
        self._valid_until = sent + self._seconds  # from when the renewal was sent: the safe side

    @property
    def held(self) -> bool:
        """False once another run may take it over: lost, or a beat short of lapsing unrenewed."""
        return not self.lost and time.monotonic() < self._valid_until - self._seconds / 4


def _newer(marker: InstallMarker) -> str:
    return (
        f"this store is at schema version {marker.schema_version}, newer than this version of SMTP AUTH Guard "
        f"knows ({SCHEMA_VERSION}): deploy the version that upgraded it"
    )


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
