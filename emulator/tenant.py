"""In-memory model of one Microsoft 365 tenant: mailboxes, org flag, policies, app registrations."""

from __future__ import annotations

import bisect
import random
import sys
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

DEFAULT_TENANT_ID = "00000000-0000-0000-0000-0000000000aa"
DEFAULT_CLIENT_ID = "11111111-1111-1111-1111-111111111111"
DEFAULT_CLIENT_SECRET = "emulator-secret"
DEFAULT_DOMAIN = "contoso.onmicrosoft.com"

RecipientTypeDetails = Literal["UserMailbox", "SharedMailbox", "RoomMailbox", "EquipmentMailbox"]
MAILBOX_TYPES: tuple[str, ...] = ("UserMailbox", "SharedMailbox", "RoomMailbox", "EquipmentMailbox")

_FIRST = (
    "Adele",
    "Alex",
    "Diego",
    "Grady",
    "Henrietta",
    "Isaiah",
    "Johanna",
    "Joni",
    "Lee",
    "Lidia",
    "Lynne",
    "Megan",
    "Miriam",
    "Nestor",
    "Patti",
    "Pradeep",
    "Irvin",
    "Allan",
    "Debra",
    "Emily",
)
_LAST = (
    "Vance",
    "Wilber",
    "Siciliani",
    "Archie",
    "Mueller",
    "Langer",
    "Lauer",
    "Sherman",
    "Gu",
    "Holloway",
    "Robbins",
    "Bowen",
    "Graham",
    "Wilke",
    "Fernandez",
    "Gupta",
    "Sneed",
    "Deyoung",
    "Berg",
    "Braun",
)
_ROOMS = ("Conf Room", "Huddle", "Board Room", "Training Room")
_EQUIPMENT = ("Projector", "Van", "Camera Kit", "Laptop Cart")
_SHARED = ("info", "sales", "support", "hr", "finance", "noreply", "helpdesk", "accounts")


@dataclass(slots=True)
class Mailbox:
    # slots=True: the benchmark holds up to 1,000,000 of these in one process.
    guid: str
    external_directory_object_id: str
    display_name: str
    alias: str
    primary_smtp_address: str
    user_principal_name: str
    recipient_type_details: str
    smtp_client_authentication_disabled: bool | None
    when_created: datetime
    when_mailbox_created: datetime
    when_changed: datetime


@dataclass(slots=True)
class Client:
    """An app registration allowed to get tokens; object_id is its service principal's id."""

    client_id: str
    secret: str
    object_id: str
    display_name: str = "SMTP AUTH Guard (emulator)"


@dataclass(slots=True)
class _SeedMix:
    user: float = 0.85
    shared: float = 0.08
    room: float = 0.04


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


class Tenant:
    """Mutations take `lock`, because tests and the control API change state from other threads."""

    def __init__(
        self,
        tenant_id: str = DEFAULT_TENANT_ID,
        *,
        domain: str = DEFAULT_DOMAIN,
        display_name: str = "Contoso (emulator)",
    ) -> None:
        self.tenant_id = tenant_id
        self.domain = domain
        self.display_name = display_name
        self.lock = threading.Lock()
        self.mailboxes: dict[str, Mailbox] = {}
        # Sorted guids give keyset paging: the skiptoken is the last guid returned.
        self.sorted_guids: list[str] = []
        # Lower-cased guid, EDOID, address and UPN -> mailbox.
        self.index: dict[str, Mailbox] = {}
        self.org_smtp_client_authentication_disabled: bool = True
        self.authentication_policies: list[dict[str, object]] = []
        self.clients: dict[str, Client] = {}
        self._serial = 0
        self.add_client(DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET)

    # -- app registrations -------------------------------------------------------------------

    def add_client(self, client_id: str, secret: str, *, object_id: str | None = None) -> Client:
        client = Client(client_id, secret, object_id or str(uuid.uuid5(uuid.NAMESPACE_URL, client_id)))
        with self.lock:
            self.clients[client_id] = client
        return client

    # -- mailboxes ---------------------------------------------------------------------------

    def _insert(self, mb: Mailbox) -> None:
        # Caller holds the lock.
        self.mailboxes[mb.guid] = mb
        guids = self.sorted_guids
        # Seeding appends in bulk and sorts once; single adds keep the list sorted.
        if guids and mb.guid < guids[-1]:
            bisect.insort(guids, mb.guid)
        else:
            guids.append(mb.guid)
        for key in (mb.guid, mb.external_directory_object_id, mb.primary_smtp_address, mb.user_principal_name):
            low = key.lower()
            self.index[low if low != key else key] = mb

    def seed(
        self,
        count: int,
        *,
        rng_seed: int = 42,
        now: datetime | None = None,
        disabled_true: float = 0.6,
        disabled_none: float = 0.25,
        late_provisioned: float = 0.03,
        years: float = 5.0,
    ) -> None:
        """Create `count` mailboxes deterministically (same seed and `now`, same tenant)."""
        start = self._serial
        # Mix the start offset in so a second seed() call does not repeat the first one's guids.
        rng = random.Random(rng_seed * 1_000_003 + start)
        now = now or _utcnow()
        mix = _SeedMix()
        span = years * 365 * 86400
        built: list[Mailbox] = []
        for n in range(start, start + count):
            r = rng.random()
            if r < mix.user:
                kind = "UserMailbox"
                first, last = rng.choice(_FIRST), rng.choice(_LAST)
                display = sys.intern(f"{first} {last}")  # 400 distinct names: share them
                alias = f"{first}.{last}{n}".lower()
            elif r < mix.user + mix.shared:
                kind = "SharedMailbox"
                base = rng.choice(_SHARED)
                display = f"{base.title()} {n}"
                alias = f"{base}{n}"
            elif r < mix.user + mix.shared + mix.room:
                kind = "RoomMailbox"
                base = rng.choice(_ROOMS)
                display = f"{base} {n}"
                alias = f"room{n}"
            else:
                kind = "EquipmentMailbox"
                base = rng.choice(_EQUIPMENT)
                display = f"{base} {n}"
                alias = f"equipment{n}"
            s = rng.random()
            smtp: bool | None = True if s < disabled_true else None if s < disabled_true + disabled_none else False
            created = now - timedelta(seconds=rng.random() * span)
            if rng.random() < late_provisioned:
                # An old user whose mailbox was provisioned today: "new" for the incremental sweep.
                mbx_created = max(created, now - timedelta(seconds=rng.random() * 86400))
            else:
                mbx_created = min(now, created + timedelta(seconds=rng.random() * 3 * 86400))
            # Later edits (CAS settings, renames) move WhenChanged; never into the future.
            changed = min(now, mbx_created + timedelta(seconds=rng.random() * (now - mbx_created).total_seconds()))
            address = f"{alias}@{self.domain}"
            built.append(
                Mailbox(
                    guid=_uuid(rng),
                    external_directory_object_id=_uuid(rng),
                    display_name=display,
                    alias=alias,
                    primary_smtp_address=address,
                    user_principal_name=address,  # same object: saves memory at 1M mailboxes
                    recipient_type_details=kind,
                    smtp_client_authentication_disabled=smtp,
                    when_created=created,
                    when_mailbox_created=mbx_created,
                    when_changed=changed,
                )
            )
        with self.lock:
            self._serial += count
            for mb in built:
                self.mailboxes[mb.guid] = mb
                for key in (mb.guid, mb.external_directory_object_id, mb.primary_smtp_address):
                    self.index[key] = mb  # generated keys are already lower case
            self.sorted_guids = sorted(self.mailboxes)

    def add_mailbox(
        self,
        address: str,
        *,
        type: str = "UserMailbox",
        smtp: bool | None = None,
        when_created: datetime | None = None,
        when_mailbox_created: datetime | None = None,
        display_name: str | None = None,
    ) -> Mailbox:
        if type not in MAILBOX_TYPES:
            raise ValueError(f"unknown mailbox type {type!r}")
        if "@" not in address:
            address = f"{address}@{self.domain}"
        now = _utcnow()
        mbx_created = when_mailbox_created or now
        alias = address.split("@", 1)[0]
        mb = Mailbox(
            guid=str(uuid.uuid4()),
            external_directory_object_id=str(uuid.uuid4()),
            display_name=display_name or alias,
            alias=alias,
            primary_smtp_address=address,
            user_principal_name=address,
            recipient_type_details=type,
            smtp_client_authentication_disabled=smtp,
            when_created=when_created or mbx_created,
            when_mailbox_created=mbx_created,
            when_changed=now,
        )
        with self.lock:
            if address.lower() in self.index:
                raise ValueError(f"address {address!r} already exists")
            self._serial += 1
            self._insert(mb)
        return mb

    def find(self, identity: str) -> Mailbox | None:
        return self.index.get(identity.strip().lower())

    def set_smtp(self, identity: str, value: bool | None) -> Mailbox:
        """Set SmtpClientAuthenticationDisabled; WhenChanged moves on every change, as in EXO."""
        with self.lock:
            mb = self.find(identity)
            if mb is None:
                raise KeyError(identity)
            mb.smtp_client_authentication_disabled = value
            mb.when_changed = _utcnow()
            return mb

    def page(self, after: str | None, limit: int) -> list[Mailbox]:
        """Unfiltered keyset page: O(limit), thanks to bisect on the sorted guid list."""
        with self.lock:
            guids = self.sorted_guids
            start = bisect.bisect_right(guids, after) if after else 0
            mbs = self.mailboxes
            return [mbs[g] for g in guids[start : start + limit]]

    def scan(self, after: str | None) -> list[str]:
        """Guids after the cursor, for filtered listings (those have to look at every mailbox)."""
        with self.lock:
            guids = self.sorted_guids
            start = bisect.bisect_right(guids, after) if after else 0
            return guids[start:]

    def snapshot(self) -> list[Mailbox]:
        with self.lock:
            return [self.mailboxes[g] for g in self.sorted_guids]

    def __len__(self) -> int:
        return len(self.mailboxes)


__all__ = [
    "DEFAULT_CLIENT_ID",
    "DEFAULT_CLIENT_SECRET",
    "DEFAULT_DOMAIN",
    "DEFAULT_TENANT_ID",
    "MAILBOX_TYPES",
    "Client",
    "Mailbox",
    "Tenant",
]
