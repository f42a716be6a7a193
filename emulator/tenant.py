"""In-memory model of one Microsoft 365 tenant: mailboxes, users, groups, sign-ins, policies, outbox."""

from __future__ import annotations

import bisect
import random
import sys
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

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
class User:
    """A Graph user. Users with a UserMailbox are views of it; `add_user(with_mailbox=False)` makes bare ones."""

    id: str
    user_principal_name: str
    display_name: str
    mail: str | None
    account_enabled: bool = True
    mailbox: Mailbox | None = None

    @property
    def given_name(self) -> str | None:
        first, sep, _ = self.display_name.partition(" ")
        return first if sep else None

    @property
    def surname(self) -> str | None:
        _, sep, last = self.display_name.partition(" ")
        return last if sep else None


def user_of(mb: Mailbox) -> User:
    return User(
        mb.external_directory_object_id, mb.user_principal_name, mb.display_name, mb.primary_smtp_address, True, mb
    )


@dataclass(slots=True)
class Group:
    id: str
    display_name: str
    members: list[str]  # user ids and nested group ids, in the order they were added


# Exchange Online's first-party app: what SMTP AUTH sign-ins show as the application.
EXO_APP_ID = "00000002-0000-0ff1-ce00-000000000000"
_SIGNIN_FAILURES = {
    0: None,
    50053: "Account is locked because user tried to sign in too many times with an incorrect user ID or password.",
    50126: "Error validating credentials due to invalid username or password.",
    53003: "Access has been blocked by Conditional Access policies. The access policy does not allow token issuance.",
}
BLOCK_LEGACY_AUTH_NAME = "Block legacy authentication"
SECURITY_DEFAULTS_ID = "00000000-0000-0000-0000-000000000005"


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


def _signin_resource(
    user: User, client_app_used: str, when: datetime, status_error_code: int, ip: str, signin_id: str | None
) -> dict[str, Any]:
    """A Graph signIn resource of Exchange Online (what SMTP AUTH sign-ins look like in the log)."""
    failure = _SIGNIN_FAILURES.get(status_error_code, "Other.") if status_error_code else "Other."
    return {
        "id": signin_id or str(uuid.uuid4()),
        "createdDateTime": when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "userDisplayName": user.display_name,
        "userPrincipalName": user.user_principal_name,
        "userId": user.id,
        "appId": EXO_APP_ID,
        "appDisplayName": "Office 365 Exchange Online",
        "ipAddress": ip,
        "clientAppUsed": client_app_used,
        "correlationId": str(uuid.uuid5(uuid.NAMESPACE_OID, signin_id)) if signin_id else str(uuid.uuid4()),
        "conditionalAccessStatus": "notApplied",
        "isInteractive": False,
        "riskDetail": "none",
        "riskLevelAggregated": "none",
        "riskLevelDuringSignIn": "none",
        "riskState": "none",
        "riskEventTypes": [],
        "riskEventTypes_v2": [],
        "resourceDisplayName": "Office 365 Exchange Online",
        "resourceId": EXO_APP_ID,
        "status": {"errorCode": status_error_code, "failureReason": failure, "additionalDetails": None},
        "deviceDetail": {
            "deviceId": "",
            "displayName": "",
            "operatingSystem": "",
            "browser": "",
            "isCompliant": False,
            "isManaged": False,
            "trustType": "",
        },
        "location": {"city": "", "state": "", "countryOrRegion": "", "geoCoordinates": {}},
        "appliedConditionalAccessPolicies": [],
    }


@dataclass(slots=True)
class _MailboxGenerator:
    """Tenant.seed's mailboxes: mailbox `n` from one random generator, whose draws must stay in this order."""

    rng: random.Random
    domain: str
    now: datetime
    span_s: float  # WhenCreated is up to this long before `now`
    disabled_true: float
    disabled_none: float
    late_provisioned: float
    mix: _SeedMix = field(default_factory=_SeedMix)

    def __call__(self, n: int) -> Mailbox:
        rng = self.rng
        kind, display, alias = self._names(n)
        s = rng.random()
        smtp: bool | None = (
            True if s < self.disabled_true else None if s < self.disabled_true + self.disabled_none else False
        )
        created, mbx_created, changed = self._dates()
        address = f"{alias}@{self.domain}"
        return Mailbox(
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

    def _names(self, n: int) -> tuple[str, str, str]:
        """(RecipientTypeDetails, display name, alias) of mailbox `n`."""
        rng, mix = self.rng, self.mix
        r = rng.random()
        if r < mix.user:
            first, last = rng.choice(_FIRST), rng.choice(_LAST)
            display = sys.intern(f"{first} {last}")  # 400 distinct names: share them
            return "UserMailbox", display, f"{first}.{last}{n}".lower()
        if r < mix.user + mix.shared:
            base = rng.choice(_SHARED)
            return "SharedMailbox", f"{base.title()} {n}", f"{base}{n}"
        if r < mix.user + mix.shared + mix.room:
            return "RoomMailbox", f"{rng.choice(_ROOMS)} {n}", f"room{n}"
        return "EquipmentMailbox", f"{rng.choice(_EQUIPMENT)} {n}", f"equipment{n}"

    def _dates(self) -> tuple[datetime, datetime, datetime]:
        """(WhenCreated, WhenMailboxCreated, WhenChanged), none of them after `now`."""
        rng, now = self.rng, self.now
        created = now - timedelta(seconds=rng.random() * self.span_s)
        if rng.random() < self.late_provisioned:
            # An old user whose mailbox was provisioned today: "new" for the incremental sweep.
            mbx_created = max(created, now - timedelta(seconds=rng.random() * 86400))
        else:
            mbx_created = min(now, created + timedelta(seconds=rng.random() * 3 * 86400))
        # Later edits (CAS settings, renames) move WhenChanged; never into the future.
        changed = min(now, mbx_created + timedelta(seconds=rng.random() * (now - mbx_created).total_seconds()))
        return created, mbx_created, changed


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
        # Which authentication policy governs a user: their own (by mailbox guid), else the org default.
        self.default_authentication_policy: str | None = None
        self.user_authentication_policies: dict[str, str] = {}
        self.clients: dict[str, Client] = {}
        # Graph side. Users with a UserMailbox live in `mailboxes`; only mailbox-less users are here.
        self.bare_users: dict[str, User] = {}
        self._bare_index: dict[str, User] = {}  # lower-cased id, UPN, mail -> user
        self.groups: dict[str, Group] = {}
        self.signins: list[dict[str, Any]] = []  # Graph signIn resources, as JSON
        self.sent_mail: list[dict[str, Any]] = []  # every message sendMail accepted
        self.teams_posts: list[dict[str, Any]] = []  # every Teams Workflows webhook post
        self.premium = True  # Entra ID P1: sign-in logs need it
        # Application permissions granted to the app, per resource (the tokens' `roles`); None: all of
        # identity.RESOURCE_ROLES. Graph refuses a call whose permission is missing, as Graph does.
        self.app_roles: dict[str, list[str]] = {}
        # An application access policy on Mail.Send: the only mailboxes the app may send as (None: any).
        self.mail_send_scope: set[str] | None = None
        # The cmdlets of the app's Exchange management role (None: every cmdlet the emulator knows). A
        # cmdlet outside it answers CommandNotFoundException, as Exchange does.
        self.exchange_role_cmdlets: set[str] | None = None
        self.security_defaults = False
        self.conditional_access_policies: list[dict[str, Any]] = []
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
        now = now or _utcnow()
        generate = _MailboxGenerator(
            # Mix the start offset in so a second seed() call does not repeat the first one's guids.
            random.Random(rng_seed * 1_000_003 + start),
            domain=self.domain,
            now=now,
            span_s=years * 365 * 86400,
            disabled_true=disabled_true,
            disabled_none=disabled_none,
            late_provisioned=late_provisioned,
        )
        built = [generate(n) for n in range(start, start + count)]
        with self.lock:
            self._serial += count
            for mb in built:
                self.mailboxes[mb.guid] = mb
                for key in (mb.guid, mb.external_directory_object_id, mb.primary_smtp_address):
                    self.index[key] = mb  # generated keys are already lower case
            self.sorted_guids = sorted(self.mailboxes)
        self._seed_signins(built, rng_seed, now)

    def _seed_signins(self, built: list[Mailbox], rng_seed: int, now: datetime, limit: int = 40) -> None:
        """SMTP AUTH sign-ins for some mailboxes whose SMTP AUTH is on (False): the evidence an approver sees.

        A separate generator, so mailboxes are the same as before sign-ins existed. Capped at `limit`
        mailboxes so a 1M seed stays small.
        """
        rng = random.Random(rng_seed * 7_919 + len(self.signins))
        picked = 0
        for mb in built:
            if picked >= limit:
                break
            if mb.smtp_client_authentication_disabled is not False or mb.recipient_type_details not in (
                "UserMailbox",
                "SharedMailbox",
            ):
                continue
            if rng.random() >= 0.4:
                continue
            picked += 1
            for _ in range(1 + rng.randrange(3)):
                when = now - timedelta(seconds=rng.random() * 30 * 86400)
                error = 0 if rng.random() < 0.8 else 50126
                self.add_signin(
                    mb.external_directory_object_id,
                    when=when,
                    status_error_code=error,
                    ip=f"203.0.113.{1 + rng.randrange(250)}",
                    signin_id=_uuid(rng),
                )

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
            if address.lower() in self.index or address.lower() in self._bare_index:
                raise ValueError(f"address {address!r} already exists")
            self._serial += 1
            self._insert(mb)
        return mb

    def find(self, identity: str) -> Mailbox | None:
        return self.index.get(identity.strip().lower())

    def assign_authentication_policy(self, identity: str, policy: str | None) -> Mailbox:
        """`Set-User -AuthenticationPolicy`: None takes the assignment away. KeyError for an unknown mailbox."""
        with self.lock:
            mb = self.find(identity)
            if mb is None:
                raise KeyError(identity)
            if policy is None:
                self.user_authentication_policies.pop(mb.guid, None)
            else:
                self.user_authentication_policies[mb.guid] = policy
        return mb

    # -- Graph users ----------------------------------------------------------------------------

    def add_user(
        self,
        upn: str,
        display_name: str | None = None,
        *,
        with_mailbox: bool = True,
        smtp: bool | None = None,
    ) -> Mailbox | User:
        """A user: with a UserMailbox (returns the Mailbox) or a bare Entra account (returns the User, mail None)."""
        if "@" not in upn:
            upn = f"{upn}@{self.domain}"
        if with_mailbox:
            return self.add_mailbox(upn, type="UserMailbox", smtp=smtp, display_name=display_name)
        user = User(str(uuid.uuid4()), upn, display_name or upn.split("@", 1)[0], None)
        with self.lock:
            if upn.lower() in self.index or upn.lower() in self._bare_index:
                raise ValueError(f"user {upn!r} already exists")
            self.bare_users[user.id] = user
            self._bare_index[user.id] = user
            self._bare_index[upn.lower()] = user
        return user

    def find_user(self, identity: str) -> User | None:
        """Graph lookup by object id, UPN or mail (case-insensitive). Only UserMailbox owners are users."""
        key = identity.strip().lower()
        mb = self.index.get(key)
        if mb is not None:
            # A Graph user's id is the EDOID; the Exchange guid names nothing in Graph.
            if mb.recipient_type_details != "UserMailbox" or (
                key == mb.guid.lower() and key != mb.external_directory_object_id.lower()
            ):
                return None
            return user_of(mb)
        return self._bare_index.get(key)

    def users(self) -> list[User]:
        """Every Graph user: UserMailbox owners in mailbox guid order, then mailbox-less users."""
        with self.lock:
            mbs = self.mailboxes
            out = [
                user_of(mb) for mb in (mbs[g] for g in self.sorted_guids) if mb.recipient_type_details == "UserMailbox"
            ]
            out.extend(self.bare_users.values())
        return out

    # -- groups ---------------------------------------------------------------------------------

    def add_group(self, display_name: str, member_ids: list[str] | None = None) -> str:
        """A security group; members are user ids (UPNs are resolved) or group ids. Returns the group id."""
        ids = [self._member_id(m) for m in member_ids or []]
        group = Group(str(uuid.uuid4()), display_name, list(dict.fromkeys(ids)))
        with self.lock:
            self.groups[group.id] = group
        return group.id

    def add_group_member(self, group_id: str, member: str) -> None:
        """Add a user (id or UPN) or another group (id) to a group."""
        mid = self._member_id(member)
        with self.lock:
            group = self.groups.get(group_id)
            if group is None:
                raise KeyError(group_id)
            if mid not in group.members:
                group.members.append(mid)

    def member_groups(self, member_id: str, group_ids: list[str]) -> list[str]:
        """The ids in `group_ids` that `member_id` belongs to, directly or through nested groups (as
        Graph's checkMemberGroups), in request order."""
        with self.lock:
            containing = self._groups_containing(member_id)
        return [g for g in group_ids if g in containing]

    def transitive_members(self, group_id: str) -> list[str]:
        """The ids of every user and group in a group or in the groups nested in it, once each, breadth
        first (Graph's transitiveMembers; a cycle back to the group lists the group itself, once)."""
        with self.lock:
            found: list[str] = []
            expanded: set[str] = set()
            pending = [group_id]
            while pending:
                group = self.groups.get(pending.pop(0))
                if group is None or group.id in expanded:
                    continue
                expanded.add(group.id)
                for member in group.members:
                    if member not in found:
                        found.append(member)
                    if member in self.groups:
                        pending.append(member)
        return found

    def _groups_containing(self, member_id: str) -> set[str]:
        found: set[str] = set()
        frontier = {member_id}
        while frontier:
            parents = {g.id for g in self.groups.values() if frontier.intersection(g.members)} - found
            found |= parents
            frontier = parents
        return found

    def _member_id(self, identity: str) -> str:
        return identity if identity in self.groups else self._user_id(identity)

    def _user_id(self, identity: str) -> str:
        user = self.find_user(identity)
        if user is None:
            raise KeyError(f"no user {identity!r}")
        return user.id

    # -- sign-in logs ---------------------------------------------------------------------------

    def add_signin(
        self,
        user_id_or_upn: str,
        *,
        client_app_used: str = "Authenticated SMTP",
        when: datetime | None = None,
        status_error_code: int = 0,
        ip: str = "203.0.113.10",
        signin_id: str | None = None,
    ) -> dict[str, Any]:
        """Record a sign-in (Graph signIn shape). Any mailbox's account can sign in, not only UserMailbox."""
        user = self.find_user(user_id_or_upn)
        if user is None:
            mb = self.find(user_id_or_upn)
            if mb is None:
                raise KeyError(f"no user {user_id_or_upn!r}")
            user = user_of(mb)
        when = when or _utcnow()
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        entry = _signin_resource(user, client_app_used, when, status_error_code, ip, signin_id)
        with self.lock:
            self.signins.append(entry)
        return entry

    # -- blockers -------------------------------------------------------------------------------

    def block_legacy_auth_policy(self, state: str = "enabled") -> dict[str, Any]:
        """Append the usual "Block legacy authentication" Conditional Access policy; returns it."""
        if state not in ("enabled", "disabled", "enabledForReportingButNotEnforced"):
            raise ValueError(f"bad conditional access state {state!r}")
        stamp = _utcnow().strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        policy: dict[str, Any] = {
            "id": str(uuid.uuid4()),
            "templateId": None,
            "displayName": BLOCK_LEGACY_AUTH_NAME,
            "createdDateTime": stamp,
            "modifiedDateTime": None,
            "state": state,
            "sessionControls": None,
            "conditions": {
                "userRiskLevels": [],
                "signInRiskLevels": [],
                "clientAppTypes": ["exchangeActiveSync", "other"],
                "servicePrincipalRiskLevels": [],
                "platforms": None,
                "locations": None,
                "devices": None,
                "clientApplications": None,
                "applications": {
                    "includeApplications": ["All"],
                    "excludeApplications": [],
                    "includeUserActions": [],
                    "includeAuthenticationContextClassReferences": [],
                    "applicationFilter": None,
                },
                "users": {
                    "includeUsers": ["All"],
                    "excludeUsers": [],
                    "includeGroups": [],
                    "excludeGroups": [],
                    "includeRoles": [],
                    "excludeRoles": [],
                    "includeGuestsOrExternalUsers": None,
                    "excludeGuestsOrExternalUsers": None,
                },
            },
            "grantControls": {
                "operator": "OR",
                "builtInControls": ["block"],
                "customAuthenticationFactors": [],
                "termsOfUse": [],
                "authenticationStrength": None,
            },
        }
        with self.lock:
            self.conditional_access_policies.append(policy)
        return policy

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
    "Group",
    "Mailbox",
    "Tenant",
    "User",
]
