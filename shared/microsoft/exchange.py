"""Async client for the Exchange Online admin REST endpoint (InvokeCommand and $batch).

Microsoft does not document this endpoint; docs/exchange-admin-api.md records what public clients show.
Built on azure-core's pipeline: bearer tokens and retries (with Retry-After) come from its policies.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
import weakref
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final, Self
from urllib.parse import quote

from azure.core import AsyncPipelineClient
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import AzureError
from azure.core.pipeline.policies import (
    AsyncBearerTokenCredentialPolicy,
    AsyncRetryPolicy,
    HeadersPolicy,
    HttpLoggingPolicy,
    UserAgentPolicy,
)
from azure.core.rest import AsyncHttpResponse, HttpRequest

from shared.errors import (
    ExchangeCommandError,
    ExchangeError,
    IncompleteListingError,
    InputError,
    MailboxNotFoundError,
)
from shared.microsoft.transport import transport_options
from shared.model.auth_policy import AuthPolicies, policy_name
from shared.model.backoff import jittered
from shared.model.mailbox import MailboxState, Recipient

logger = logging.getLogger(__name__)

USER_AGENT: Final = "smtp-auth-guard/0.1"
BATCH_LIMIT: Final = 10  # the endpoint refuses more sub-requests per $batch
PAGE_SIZE: Final = 1000
CAS_SELECT: Final = ("Guid", "PrimarySmtpAddress", "SmtpClientAuthenticationDisabled")
# One mailbox looked up on its own also says which user it belongs to.
ONE_MAILBOX_SELECT: Final = (*CAS_SELECT, "ExternalDirectoryObjectId")
USER_POLICY_SELECT: Final = ("Guid", "AuthenticationPolicy")
RECIPIENT_SELECT: Final = ("Guid", "PrimarySmtpAddress", "ExternalDirectoryObjectId", "RecipientTypeDetails")
# Exchange reads `*` in an -Identity as a wildcard; no caller may ever send one (the input rules refuse
# it too, in shared/workflow/validation.py).
_WILDCARD: Final = "*"
# Throttled or failing sub-requests of a $batch are invisible to the pipeline; this bounds their re-sends.
BATCH_ITEM_ATTEMPTS: Final = 6
_TRANSIENT: Final = frozenset({408, 429, 500, 502, 503, 504})
_NOT_FOUND_TYPES: Final = ("ManagementObjectNotFoundException", "RecipientNotFoundException")


def opath_datetime(moment: datetime) -> str:
    """A UTC date literal for `-Filter` on the *UTC properties.

    The one place dates are put into filters: en-US month/day order, as the service parses it.
    """
    return moment.astimezone(UTC).strftime("%m/%d/%Y %H:%M:%S")


# Seconds: the first retry waits up to BACKOFF_FIRST, doubling up to BACKOFF_MOST (see shared.backoff).
BACKOFF_FIRST: Final = 0.5
BACKOFF_MOST: Final = 20.0


class ExchangeRetryPolicy(AsyncRetryPolicy):
    """azure-core's retry policy, configured for Exchange.

    Every call is a POST, and every call is idempotent here (Get cmdlets, and Set to an absolute
    value), so POST is retried. Backoff gets jitter and a non-zero first delay; Retry-After, when
    sent, is honoured by the base class.
    """

    def __init__(self, *, attempts: int = 6, backoff: float = BACKOFF_FIRST, backoff_max: float = BACKOFF_MOST) -> None:
        super().__init__(
            retry_total=attempts,
            retry_status=attempts,
            retry_connect=3,
            retry_read=3,
            retry_backoff_factor=backoff,
            retry_backoff_max=backoff_max,
            retry_on_status_codes=sorted(_TRANSIENT),
        )
        self._method_whitelist = frozenset({"POST", "GET"})

    def get_backoff_time(self, settings: dict[str, Any]) -> float:
        return jittered(len(settings["history"]), settings["backoff"], settings["max_backoff"])


@dataclass(frozen=True, slots=True)
class SetOutcome:
    """The result of one Set-CASMailbox inside a batch."""

    identity: str
    value: bool | None
    error: ExchangeCommandError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


# The tenant's concurrency limit counts every call the worker makes, so every client of one tenant in one
# event loop (a sweep and the workflow's submissions, say) waits on the same gate.
_gates: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Semaphore]] = weakref.WeakKeyDictionary()


def _tenant_gate(tenant_url: str, concurrency: int) -> asyncio.Semaphore:
    """The gate for a tenant's admin endpoint in the running loop; the first client's concurrency sets it."""
    gates = _gates.setdefault(asyncio.get_running_loop(), {})
    gate = gates.get(tenant_url)
    if gate is None:
        gate = gates[tenant_url] = asyncio.Semaphore(concurrency)
    return gate


class ExchangeClient:
    """Typed access to the cmdlets the app uses. Concurrency bounded per tenant; retries from the pipeline."""

    def __init__(
        self,
        endpoint: str,
        tenant_id: str,
        credential: AsyncTokenCredential,
        *,
        concurrency: int = 4,
        retry_policy: AsyncRetryPolicy | None = None,
    ) -> None:
        self._base = f"{endpoint.rstrip('/')}/adminapi/beta/{tenant_id}"
        self._scope = f"{endpoint.rstrip('/')}/.default"
        self._concurrency = concurrency
        self._retry = retry_policy or ExchangeRetryPolicy()
        self._client: AsyncPipelineClient[HttpRequest, AsyncHttpResponse] = AsyncPipelineClient(
            base_url=self._base,
            policies=[
                HeadersPolicy(
                    {
                        "Accept": "application/json",
                        "X-AnchorMailbox": (f"APP:SystemMailbox{{bb558c35-97f1-4cb9-8ff7-d53741dc928c}}@{tenant_id}"),
                    }
                ),
                UserAgentPolicy(USER_AGENT),
                self._retry,
                AsyncBearerTokenCredentialPolicy(credential, self._scope),
                HttpLoggingPolicy(),  # redacts Authorization by default
            ],
            **transport_options(),
        )

    async def __aenter__(self) -> Self:
        await self._client.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._client.close()

    # -- transport ---------------------------------------------------------------------------------

    async def _post(self, url: str, body: Mapping[str, Any], cmdlet: str) -> dict[str, Any]:
        request = HttpRequest(
            "POST",
            url,
            json=body,
            headers={"Prefer": f"odata.maxpagesize={PAGE_SIZE}", "X-CmdletName": cmdlet},
        )
        async with _tenant_gate(self._base, self._concurrency):
            try:
                response = await self._client.send_request(request)
                await response.read()
            except AzureError as err:
                raise ExchangeError(f"{cmdlet}: the Exchange endpoint could not be reached: {err}") from err
        # Let the caller waiting for the slot send its call before this one parses and goes on: the
        # tenant's concurrency limit is the bottleneck, so each slot should be busy again at once.
        await asyncio.sleep(0)
        if response.status_code >= 400:
            raise command_error(cmdlet, response.status_code, _json_or_none(response))
        payload = _json_or_none(response)
        if not isinstance(payload, dict):
            raise ExchangeError(f"{cmdlet}: the Exchange endpoint answered HTTP 200 without a JSON object")
        return payload

    def _invoke_url(self, select: Sequence[str] | None) -> str:
        url = f"{self._base}/InvokeCommand"
        if select:
            url += "?$select=" + quote(",".join(select), safe=",")
        return url

    async def iter_pages(
        self, cmdlet: str, parameters: Mapping[str, Any], select: Sequence[str] | None = None
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """Yield each page of a Get cmdlet. Raises IncompleteListingError if paging breaks off."""
        body = _cmdlet_body(cmdlet, parameters)
        url: str | None = self._invoke_url(select)
        seen: set[str] = set()
        while url is not None:
            try:
                payload = await self._post(url, body, cmdlet)
            except ExchangeError as err:
                if seen:
                    raise IncompleteListingError(f"{cmdlet} listing broke off after {len(seen)} pages: {err}") from err
                raise
            value = payload.get("value")
            if not isinstance(value, list):
                raise IncompleteListingError(f"{cmdlet} returned a page without a value list")
            yield value
            url = payload.get("@odata.nextLink")
            if url is not None:
                if url in seen or not url.startswith(self._base):
                    raise IncompleteListingError(f"{cmdlet} returned an unexpected nextLink; listing stopped")
                seen.add(url)

    async def invoke(
        self, cmdlet: str, parameters: Mapping[str, Any], select: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        _literal_identity(parameters.get("Identity"))
        return [item async for page in self.iter_pages(cmdlet, parameters, select) for item in page]

    # -- cmdlets -----------------------------------------------------------------------------------

    async def iter_cas_mailboxes(
        self, changed_since: datetime | None = None, *, with_user: bool = False
    ) -> AsyncIterator[list[MailboxState]]:
        """Every CAS mailbox, or those changed since a moment, a page at a time, with their state.

        WhenChanged moves when a mailbox is provisioned and when its CAS settings change, so the
        filtered listing catches new, late-provisioned and drifted mailboxes alike. `with_user` adds
        each mailbox's Entra object id (the inventory matches sign-ins by it; the sweeps need none).
        """
        parameters: dict[str, Any] = {"ResultSize": "Unlimited"}
        if changed_since is not None:
            parameters["Filter"] = f"WhenChangedUTC -ge '{opath_datetime(changed_since)}'"
        select = ONE_MAILBOX_SELECT if with_user else CAS_SELECT
        async for page in self.iter_pages("Get-CASMailbox", parameters, select):
            yield [_mailbox_state(item) for item in page]

    async def get_transport_config(self) -> dict[str, Any]:
        items = await self.invoke("Get-TransportConfig", {})
        if not items:
            raise ExchangeError("Get-TransportConfig returned nothing")
        return items[0]

    async def find_mailbox(self, identity: str) -> MailboxState | None:
        """One mailbox by address, GUID or object id; None when Exchange has no such mailbox."""
        try:
            items = await self.invoke("Get-CASMailbox", {"Identity": identity}, ONE_MAILBOX_SELECT)
        except MailboxNotFoundError:
            return None
        return _mailbox_state(items[0]) if items else None

    async def find_recipient(self, identity: str) -> Recipient | None:
        """Any recipient Exchange knows by this address (a user, a shared mailbox, a contact); None if none."""
        try:
            items = await self.invoke("Get-Recipient", {"Identity": identity}, RECIPIENT_SELECT)
        except MailboxNotFoundError:
            return None
        return _recipient(items[0]) if items else None

    async def find_mailboxes(self, identities: Sequence[str]) -> list[MailboxState | None]:
        """find_mailbox for many, ten to a $batch."""
        found = await self.get_each("Get-CASMailbox", identities, ONE_MAILBOX_SELECT)
        return [_mailbox_state(item) if item else None for item in found]

    async def find_recipients(self, identities: Sequence[str]) -> list[Recipient | None]:
        """find_recipient for many, ten to a $batch."""
        found = await self.get_each("Get-Recipient", identities, RECIPIENT_SELECT)
        return [_recipient(item) if item else None for item in found]

    async def set_smtp_auth_disabled(self, identity: str, value: bool | None) -> None:
        _literal_identity(identity)
        await self._post(self._invoke_url(None), _set_body(identity, value), "Set-CASMailbox")

    async def set_smtp_auth_disabled_batch(self, items: Sequence[tuple[str, bool | None]]) -> list[SetOutcome]:
        """Set up to 10 mailboxes in one $batch."""
        bodies = [_set_body(identity, value) for identity, value in items]
        answers = await self._batch("Set-CASMailbox", bodies, self._invoke_url(None))
        return [SetOutcome(i, value, error) for (i, value), (_, error) in zip(items, answers, strict=True)]

    async def authentication_policies(self) -> AuthPolicies:
        """The tenant's authentication policies and the organisation's default one."""
        policies, orgs = await asyncio.gather(
            self.invoke("Get-AuthenticationPolicy", {}), self.invoke("Get-OrganizationConfig", {})
        )
        default = policy_name((orgs[0] if orgs else {}).get("DefaultAuthenticationPolicy"))
        return AuthPolicies(tuple(policies), default)

    async def user_policies(self, guids: Sequence[str]) -> dict[str, str]:
        """The authentication policy assigned to each mailbox's user ("" for none), by GUID; a GUID that
        names no user is left out. Ten to a $batch."""
        found = await self.get_each("Get-User", guids, USER_POLICY_SELECT)
        return {g: policy_name(item.get("AuthenticationPolicy")) for g, item in zip(guids, found, strict=True) if item}

    async def set_user_policy_batch(self, items: Sequence[tuple[str, str]]) -> list[ExchangeCommandError | None]:
        """Assign up to 10 users an authentication policy by name ("" takes the assignment away)."""
        bodies = [_cmdlet_body("Set-User", {"Identity": g, "AuthenticationPolicy": p or None}) for g, p in items]
        return [error for _, error in await self._batch("Set-User", bodies, self._invoke_url(None))]

    async def get_each(
        self, cmdlet: str, identities: Sequence[str], select: Sequence[str] | None = None
    ) -> list[dict[str, Any] | None]:
        """One Get per identity, ten to a $batch and a few batches at once: each one's object, in order,
        or None where Exchange has no such object. Any other failure raises."""
        for identity in identities:
            _literal_identity(identity)
        url = self._invoke_url(select)

        async def chunk(start: int) -> list[dict[str, Any] | None]:
            part = identities[start : start + BATCH_LIMIT]
            answers = await self._batch(cmdlet, [_cmdlet_body(cmdlet, {"Identity": i}) for i in part], url)
            found: list[dict[str, Any] | None] = []
            for body, error in answers:
                if isinstance(error, MailboxNotFoundError):
                    found.append(None)
                elif error is not None:
                    raise error
                else:
                    value = body.get("value") if isinstance(body, dict) else None
                    found.append(value[0] if isinstance(value, list) and value else None)
            return found

        results: list[dict[str, Any] | None] = []
        starts = list(range(0, len(identities), BATCH_LIMIT))
        for group in range(0, len(starts), self._concurrency):  # the tenant gate bounds them anyway
            try:
                async with asyncio.TaskGroup() as tasks:  # one failure cancels its siblings
                    parts = [tasks.create_task(chunk(s)) for s in starts[group : group + self._concurrency]]
            except ExceptionGroup as failed:  # the callers handle ExchangeError, not a group of them
                raise failed.exceptions[0] from None
            for part in parts:
                results.extend(part.result())
        return results

    async def _batch(
        self, cmdlet: str, bodies: Sequence[dict[str, Any]], url: str
    ) -> list[tuple[Any, ExchangeCommandError | None]]:
        """Up to 10 InvokeCommand bodies in one $batch: each answer's body, or its error, in order.

        Sub-requests that come back throttled or failing are sent again in a smaller batch after
        their Retry-After (or a jittered backoff); the pipeline cannot see them.
        """
        if len(bodies) > BATCH_LIMIT:
            raise ValueError(f"a $batch holds at most {BATCH_LIMIT} sub-requests")
        pending = {str(index): body for index, body in enumerate(bodies)}
        answers: dict[str, tuple[Any, ExchangeCommandError | None]] = {}
        for attempt in range(1, BATCH_ITEM_ATTEMPTS + 1):
            requests = [
                {"id": key, "method": "POST", "url": url, "headers": {"Content-Type": "application/json"}, "body": body}
                for key, body in pending.items()
            ]
            try:
                payload = await self._post(f"{self._base}/$batch", {"requests": requests}, cmdlet)
            except ExchangeError as err:
                if not answers:
                    raise  # nothing was answered: the whole batch failed
                # Some were answered (a Set landed): keep them, and fail only those still pending.
                failure = ExchangeCommandError(cmdlet, 0, type(err).__name__, str(err))
                answers.update((key, (None, failure)) for key in pending)
                break
            wait = 0.0
            responses = payload.get("responses")
            answered = {str(r.get("id")): r for r in responses or [] if isinstance(r, dict)}
            for key in list(pending):
                response = answered.get(key)
                status = response.get("status") if response else 0
                status = status if isinstance(status, int) else 0  # a malformed answer counts as none
                body = response.get("body") if response else None
                if 200 <= status < 300:
                    answers[key] = (body, None)
                    del pending[key]
                    continue
                if status in _TRANSIENT or response is None:
                    wait = max(wait, _retry_after(response) or jittered(attempt, BACKOFF_FIRST, BACKOFF_MOST))
                    if attempt < BATCH_ITEM_ATTEMPTS:
                        continue
                answers[key] = (None, command_error(cmdlet, status, body))
                del pending[key]
            if not pending:
                break
            logger.info("re-batching %d throttled %s calls after %.2fs", len(pending), cmdlet, wait)
            await asyncio.sleep(wait)
        return [answers[str(index)] for index in range(len(bodies))]


# -- payloads ----------------------------------------------------------------------------------------


def _literal_identity(identity: Any) -> None:
    if isinstance(identity, str) and _WILDCARD in identity:
        raise InputError("identity", f"{identity[:80]!r} holds a wildcard, which Exchange would expand")


def _cmdlet_body(cmdlet: str, parameters: Mapping[str, Any]) -> dict[str, Any]:
    return {"CmdletInput": {"CmdletName": cmdlet, "Parameters": dict(parameters)}}


def _set_body(identity: str, value: bool | None) -> dict[str, Any]:
    # JSON null resets the mailbox to follow the organisation; the app never sends it on its own.
    return _cmdlet_body("Set-CASMailbox", {"Identity": identity, "SmtpClientAuthenticationDisabled": value})


def _mailbox_state(item: Mapping[str, Any]) -> MailboxState:
    value = item.get("SmtpClientAuthenticationDisabled")
    if value is not None and not isinstance(value, bool):
        raise IncompleteListingError(f"mailbox {item.get('Guid')} has a non-boolean SMTP AUTH state")
    guid = item.get("Guid")
    if not guid:
        raise IncompleteListingError("a listed mailbox has no Guid")
    return MailboxState(
        guid=str(guid),
        address=str(item.get("PrimarySmtpAddress", "")),
        smtp_auth_disabled=value,
        user_id=object_id(item.get("ExternalDirectoryObjectId")),
    )


def _recipient(item: Mapping[str, Any]) -> Recipient:
    return Recipient(
        guid=str(item.get("Guid") or ""),
        address=str(item.get("PrimarySmtpAddress") or "").lower(),
        object_id=object_id(item.get("ExternalDirectoryObjectId")),
        type=str(item.get("RecipientTypeDetails") or ""),
    )


def object_id(value: Any) -> str:
    """An Entra object id in the one form principals use (lower-case, hyphenated), or "" when it is none."""
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        return ""


def _json_or_none(response: AsyncHttpResponse) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _retry_after(response: Mapping[str, Any] | None) -> float | None:
    if not response:
        return None
    headers = {str(k).lower(): v for k, v in (response.get("headers") or {}).items()}
    try:
        return float(headers["retry-after"])
    except (KeyError, TypeError, ValueError):
        return None


def command_error(cmdlet: str, status: int, body: Any) -> ExchangeCommandError:
    """Parse `error.details[].message` ("Ex6F9304|Full.Exception.Type|text"): `error.message` says nothing."""
    error_type, message = "UnknownError", f"HTTP {status} without an error body"
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        message = str(error.get("message") or message)
        for detail in error.get("details") or []:
            parts = str(detail.get("message", "")).split("|", 2)
            if len(parts) == 3:
                error_type, message = parts[1].rsplit(".", 1)[-1], parts[2]
                break
    kind = MailboxNotFoundError if error_type in _NOT_FOUND_TYPES else ExchangeCommandError
    return kind(cmdlet, status, error_type, message)
