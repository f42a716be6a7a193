"""The sweeps' authentication-policy step for OAuth-only exceptions: read, settle, plan, apply.

The planning is pure (shared.sweep.oauth_only); this module does the reads and the writes around it.
Each change's record is stored, pending, before its Set-User is sent, and audited once it landed:
a run that dies in between leaves the record for the next run to settle (`settle`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from shared.errors import ExchangeError
from shared.microsoft.exchange import BATCH_LIMIT, ExchangeClient
from shared.model.actor import Actor
from shared.model.auth_policy import APP_POLICY_NAME, CREATE_APP_POLICY, PolicyChange
from shared.model.clock import Clock
from shared.model.exception_records import ExceptionRecord
from shared.storage import Store
from shared.sweep.oauth_only import OAuthOnlyPlan, oauth_only_guids, plan_oauth_only, settle


@dataclass(slots=True)
class PolicyApplyResult:
    applied: list[PolicyChange] = field(default_factory=list)
    failed: list[tuple[PolicyChange, str]] = field(default_factory=list)
    not_started: list[PolicyChange] = field(default_factory=list)
    stopped_by: str = ""


async def plan_policies(
    store: Store,
    exchange: ExchangeClient,
    exceptions: Mapping[str, ExceptionRecord],
    now: datetime,
    *,
    settle_as: tuple[Actor, Clock] | None,
) -> OAuthOnlyPlan:
    """Plan the policy changes of this moment. With `settle_as`, first record what a dead run left
    (its landed changes audited as recovered, its records tidied); without it, nothing is written.

    Reads nothing from Exchange when no exception is OAuth-only and no assignment is recorded.
    Raises ExchangeError or StoreError when a read fails: no policy change is planned from a guess.
    """
    assignments = await store.policy_assignments.all()
    wanted = oauth_only_guids(exceptions, now)
    guids = sorted(wanted | assignments.keys())
    if not guids:
        return OAuthOnlyPlan()
    policies = await exchange.authentication_policies()
    current = await exchange.user_policies(guids)
    settled = settle(assignments, current)
    if settle_as is not None:
        actor, clock = settle_as
        for run_id, change in settled.recovered:
            await store.audit.append_policy_changes(run_id, [change], actor, clock(), recovered=True)
            await store.policy_assignments.landed(change, run_id, clock())
        await store.policy_assignments.forget(settled.forget)
        await store.policy_assignments.unpend(settled.unpend)
    addresses = {g: r.mailbox_address for g, r in exceptions.items()}
    plan = plan_oauth_only(wanted, addresses, settled.assignments, current, policies)
    if plan.missing_policy:
        plan.notes.insert(
            0,
            f"the authentication policy '{APP_POLICY_NAME}' does not exist (or allows Basic SMTP), so Basic SMTP "
            f"stays allowed for OAuth-only exceptions that no policy blocks it for: create it with "
            f"`{CREATE_APP_POLICY}`",
        )
    return plan


async def apply_policies(
    store: Store,
    exchange: ExchangeClient,
    changes: Sequence[PolicyChange],
    *,
    run_id: str,
    actor: Actor,
    plan_id: str | None,
    clock: Clock,
    stop_when: Callable[[], str],
) -> PolicyApplyResult:
    """Apply `changes`, ten to a $batch: each record pending first, each landed change audited.

    A StoreError stops the apply and propagates (what landed before it is audited). A change whose
    Set-User failed keeps its pending record: the next run reads the user and settles it.
    """
    result = PolicyApplyResult()
    for start in range(0, len(changes), BATCH_LIMIT):
        batch = list(changes[start : start + BATCH_LIMIT])
        reason = stop_when()
        if reason:
            result.stopped_by = reason
            result.not_started.extend(changes[start:])
            break
        for change in batch:
            await store.policy_assignments.intend(change, run_id, clock())
        try:
            errors = await exchange.set_user_policy_batch([(c.guid, c.after) for c in batch])
        except ExchangeError as err:
            result.failed.extend((c, str(err)) for c in batch)
            continue
        done = [c for c, error in zip(batch, errors, strict=True) if error is None]
        result.failed.extend((c, str(e)) for c, e in zip(batch, errors, strict=True) if e is not None)
        at = clock()
        await store.audit.append_policy_changes(run_id, done, actor, at, plan_id=plan_id)
        for change in done:
            await store.policy_assignments.landed(change, run_id, at)
        result.applied.extend(done)
    return result
