"""Undo: put back what one run did. It turns SMTP AUTH back on, the unsafe direction, so it always
goes through a reviewed plan.

`undo --run ID` plans a change back to each row's `before`, where the mailbox still holds that row's
`after` (mailboxes changed since are skipped and listed), stores the plan and changes nothing.
`--mode enforce --confirm-plan PLAN` applies exactly that plan after checking the mailboxes again.
It is a run of its own: it takes the sweep lease, and its changes are audited with reason `undo`.
Before its first change it sets the enforcement hold, so that the next sweep does not switch off
again what was undone; it is allowed while paused, which is why one pauses.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from shared.bootstrap import Connections, connect
from shared.errors import InputError
from shared.microsoft.exchange import ExchangeClient
from shared.model.clock import Clock, utc_now
from shared.model.exception_records import AuthMethod, ExceptionRecord, ExceptionStatus
from shared.model.mailbox import Change, MailboxState
from shared.model.runs import PlanStatus, RunOutcome, RunSummary, run_started_at
from shared.settings import EnforcementMode, Settings
from shared.sweep.engine import SweepRun
from shared.sweep.hold import pause
from shared.sweep.oauth_only import plan_policy_undo
from shared.sweep.planner import plan_undo

MAX_AGE: Final = timedelta(days=30)  # an older run is history: grant or revoke exceptions instead
ONE_BY_ONE: Final = 200  # up to this many mailboxes are read one by one; more, by one full listing


@dataclass(frozen=True, slots=True)
class Grant:
    """`--grant-days N --reason TEXT`: an exception for every mailbox the undo switches back on."""

    days: int
    reason: str


@dataclass(frozen=True, slots=True)
class UndoRequest:
    run_id: str
    mode: EnforcementMode = EnforcementMode.REPORT
    confirm_plan: str | None = None
    grant: Grant | None = None


async def run_undo(
    settings: Settings,
    request: UndoRequest,
    *,
    connections: Connections | None = None,
    progress: Callable[[str], None] | None = None,
    clock: Clock = utc_now,
) -> RunSummary:
    """Plan, or apply a reviewed plan of, the undo of one run. Refusals of the input raise InputError."""
    if connections is None:
        async with connect(settings) as opened:
            return await run_undo(settings, request, connections=opened, progress=progress, clock=clock)
    started = _started_at(request.run_id)
    if request.confirm_plan is not None and request.mode is not EnforcementMode.ENFORCE:
        raise InputError("--confirm-plan", "confirming a plan applies it, so it needs --mode enforce")
    await connections.store.state.require_current(settings.tenant_id)
    if clock() - started > MAX_AGE:
        raise InputError("--run", f"run {request.run_id} is older than {MAX_AGE.days} days: grant or revoke exceptions")
    undo = _Undo(settings, request.mode, connections, progress or (lambda _: None), clock)
    summary = undo.new_summary(full=False)
    summary.undoes = request.run_id
    return await undo.as_a_run(summary, lambda: undo.undo(request, summary))


def _started_at(run_id: str) -> datetime:
    """When a sweep run began, from its id; approvals and revocations are refused by name."""
    if run_id.startswith(("approval-", "revoke-")):
        use = "use `exceptions add` or `exceptions revoke`"
        raise InputError("--run", f"{run_id} is an approval or a revocation, not a sweep: {use}")
    started = run_started_at(run_id)
    if started is None:
        raise InputError("--run", f"{run_id!r} is not the id of a sweep run (like 20261201T020000Z-1a2b3c4d)")
    return started


class _Undo(SweepRun):
    async def undo(self, request: UndoRequest, summary: RunSummary) -> None:
        # Read under the lease, after a dead run was settled: its recovered rows count too.
        rows = [row async for row in self.store.audit.export(run_id=request.run_id)]
        policy_rows = await self.store.audit.policy_changes(request.run_id)
        if not rows and not policy_rows:
            raise InputError("--run", f"run {request.run_id} changed no mailbox, or is unknown")
        current = await _current(self.exchange, [row.mailbox_guid for row in rows])
        changes, skipped = plan_undo(rows, current)
        users = await self.exchange.user_policies(sorted({r.mailbox_guid for r in policy_rows})) if policy_rows else {}
        summary.policy_changes, policy_skipped = plan_policy_undo(policy_rows, users)
        summary.scanned, summary.changes = len(rows) + len(policy_rows), changes
        summary.planned = len(changes) + len(summary.policy_changes)
        summary.skipped = sorted(row.mailbox for row in [*skipped, *policy_skipped])
        if summary.skipped:
            self.progress(
                f"{len(summary.skipped)} mailboxes changed since run {request.run_id} and are left as they are"
            )
        if request.confirm_plan is None:
            await self.store_plan(summary, changes, PlanStatus.REPORTED, undoes=request.run_id)
            # Enforce without a reviewed plan is refused as such (exit 3), with the plan ready for review.
            exit_hint = "" if request.mode is EnforcementMode.REPORT else ": undo applies only a reviewed plan"
            summary.outcome = RunOutcome.REPORTED if request.mode is EnforcementMode.REPORT else RunOutcome.REFUSED
            summary.message = (
                f"undo of run {request.run_id}: {len(changes)} changes planned, none applied (plan {summary.plan_id})"
                f"{exit_hint}. Apply it with `python -m shared.cli undo --run {request.run_id} --mode enforce "
                f"--confirm-plan {summary.plan_id}`"
            )
            return
        still = await self.confirmed_changes(request.confirm_plan, changes, summary, undoes=request.run_id)
        await self._hold_first(summary, request.run_id)
        await self.apply_undo(summary, still, request)

    async def _hold_first(self, summary: RunSummary, run_id: str) -> None:
        """Set the enforcement hold before the first change, so that no sweep switches it off again."""
        assert summary.actor is not None
        reason = f"undo of run {run_id} (run {summary.run_id})"
        summary.hold, _ = await pause(self.store, self.settings.tenant_id, summary.actor, reason, self.clock())
        self.progress(f"{summary.hold.describe()}: run `python -m shared.cli resume` once the devices are sorted out")

    async def apply_undo(self, summary: RunSummary, changes: list[Change], request: UndoRequest) -> None:
        policies = await self.apply_policies(summary, obey_hold=False)
        result = await self.apply(summary, changes, obey_hold=False)
        summary.applied = len(result.applied) + len(policies.applied)
        summary.failed = len(result.failed) + len(policies.failed)
        summary.remaining = len(result.not_started) + len(policies.not_started)
        summary.errors = sorted({error for _, error in [*result.failed, *policies.failed]})[:20]
        if result.error is not None:
            raise result.error
        granted = await self._grant(summary, [c for c in result.applied if c.after is False], request.grant)
        done = not (result.failed or result.not_started or policies.failed or policies.not_started)
        summary.outcome = RunOutcome.COMPLETED if done else RunOutcome.PARTIAL
        total = len(changes) + len(summary.policy_changes)
        parts = [f"undid {summary.applied} of {total} changes of run {request.run_id}"]
        parts += [f"{summary.failed} failed"] if summary.failed else []
        parts += [f"granted {granted} exceptions for {request.grant.days} days"] if request.grant else []
        parts += [summary.hold.describe()] if summary.hold else []
        summary.message = "; ".join(parts)

    async def _grant(self, summary: RunSummary, restored: list[Change], grant: Grant | None) -> int:
        """Through the one grant path: an exception for each mailbox switched back on."""
        if grant is None or not restored:
            return 0
        assert summary.actor is not None
        now = self.clock()
        for change in restored:
            record = ExceptionRecord(
                id=str(uuid.uuid4()),
                mailbox_guid=change.guid,
                mailbox_address=change.address.lower(),  # as every grant stores it
                status=ExceptionStatus.APPROVED,
                expires_at=now + timedelta(days=grant.days),
                reason=grant.reason,
                owner="",
                device="",
                auth_method=AuthMethod.OAUTH,
                approved_by=str(summary.actor),
                approved_at=now,
            )
            await self.store.exceptions.grant(record, created_by=str(summary.actor))
        return len(restored)


async def _current(exchange: ExchangeClient, guids: list[str]) -> dict[str, MailboxState]:
    """The mailboxes' state now: one by one when they are few, else by one full listing."""
    wanted = set(guids)
    if len(wanted) <= ONE_BY_ONE:
        found = [await exchange.find_mailbox(guid) for guid in sorted(wanted)]
        return {m.guid: m for m in found if m is not None}
    current: dict[str, MailboxState] = {}
    async for page in exchange.iter_cas_mailboxes():
        current.update((m.guid, m) for m in page if m.guid in wanted)
    return current
