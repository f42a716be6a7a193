"""The sweep engine: one run of read desired state, read actual state, plan, apply or record, audit.

Full reconciles and incremental sweeps, timers and the CLI all go through `run_sweep`, so they share
the planner, the applier, the change cap, the fail-closed rules and the audit trail.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import Final

from shared.bootstrap import Connections, connect
from shared.errors import ExchangeError, GuardError, InputError, RefusedError, StoreError
from shared.microsoft.identity import IdentityError, actor_for
from shared.model.clock import Clock, utc_now
from shared.model.exception_records import ExceptionRecord
from shared.model.mailbox import Change
from shared.model.runs import AuditEntry, PlanStatus, RunOutcome, RunSummary, StoredPlan, new_run_id
from shared.settings import EnforcementMode, OAuthOnlyMode, Settings
from shared.storage import Lease, SweepState
from shared.storage.intents import Intent, OpenRun
from shared.sweep.applier import ApplyResult, apply_changes
from shared.sweep.oauth_only import confirmable_policies
from shared.sweep.planner import (
    PlanSummary,
    changed_since,
    confirmable,
    effective_exceptions,
    moved_mailboxes,
    plan_changes,
    plan_mailbox,
)
from shared.sweep.policies import PolicyApplyResult, apply_policies, plan_policies
from shared.sweep.recovery import index_pending_runs, settle_open_runs

logger = logging.getLogger(__name__)

# Incremental listings reach back this far before the watermark, for clock skew and replication lag.
WATERMARK_OVERLAP: Final = timedelta(minutes=10)
# A reviewed plan may be confirmed for this long; after that the tenant has moved on.
PLAN_CONFIRM_MAX_AGE: Final = timedelta(hours=24)
HOLD_POLL: Final = 0.5  # seconds between two reads of the enforcement hold while changes are applied

Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class SweepRequest:
    full: bool = False
    mode: EnforcementMode | None = None  # None: the ENFORCEMENT_MODE setting
    confirm_plan: str | None = None


async def run_sweep(
    settings: Settings,
    request: SweepRequest,
    *,
    connections: Connections | None = None,
    progress: Progress | None = None,
    clock: Clock = utc_now,
) -> RunSummary:
    """Run one sweep and return its summary. Safety refusals are outcomes, not exceptions.

    `connections` lets a caller that has them open (the CLI) share them; otherwise the run opens its own.
    """
    mode = request.mode or settings.enforcement_mode
    if request.confirm_plan is not None and mode is not EnforcementMode.ENFORCE:
        raise InputError("--confirm-plan", "confirming a plan applies it, so it needs --mode enforce")
    if connections is None:
        async with connect(settings) as opened:
            return await run_sweep(settings, request, connections=opened, progress=progress, clock=clock)
    sweep = SweepRun(settings, mode, connections, progress or _log_progress, clock)
    return await sweep.run(request)


def _log_progress(message: str) -> None:
    logger.info(message)


class _Resume(Enum):
    """Where the next run of this mode starts, as a run ends."""

    FROM_THIS_LISTING = "from this listing"  # the watermark moves to the start of this run's listing
    WITH_A_FULL_RUN = "with a full run"  # the watermark stays and the next run lists everything
    AS_BEFORE = "as before"  # nothing changes: over the cap, or a partial incremental run


class SweepRun:
    def __init__(
        self,
        settings: Settings,
        mode: EnforcementMode,
        connections: Connections,
        progress: Progress,
        clock: Clock,
    ) -> None:
        self.settings = settings
        self.mode = mode
        self.store = connections.store
        self.exchange = connections.exchange
        self.credential = connections.credential
        self.progress = progress
        self.clock = clock
        self.deadline = time.monotonic() + settings.sweep_time_budget_seconds
        self.lease: Lease | None = None
        self._unreadable_hold = ""
        self._forget: list[str] = []  # policy assignments another admin's change made stale

    async def run(self, request: SweepRequest) -> RunSummary:
        summary = self.new_summary(full=request.full or request.confirm_plan is not None)
        return await self.as_a_run(summary, lambda: self._run_locked(request, summary))

    def new_summary(self, *, full: bool) -> RunSummary:
        started = self.clock()
        return RunSummary(
            run_id=new_run_id(started),
            tenant_id=self.settings.tenant_id,
            mode=self.mode.value,
            full=full,
            started_at=started,
        )

    async def as_a_run(self, summary: RunSummary, body: Callable[[], Awaitable[None]]) -> RunSummary:
        """Run `body` as a run: the marker and the lease first, a dead run settled, refusals as outcomes,
        and a summary row at the end whatever happened."""
        try:
            await self.store.state.require_current(self.settings.tenant_id)
            # Renewed on a heartbeat: a dead run holds the next one off for SWEEP_LEASE_SECONDS at most.
            ttl = timedelta(seconds=self.settings.sweep_lease_seconds)
            async with self.store.state.lease(summary.run_id, ttl, self.clock) as lease:
                self.lease = lease
                summary.actor = await actor_for(self.credential, self.settings.exchange_scope)
                # A run that died left changes without audit rows, perhaps: record them before anything else.
                still_open = await settle_open_runs(
                    self.store, self.exchange, self.settings.tenant_id, summary.run_id, self.clock(), self.progress
                )
                await index_pending_runs(self.store, summary.run_id, still_open, self.progress)
                await body()
        except RefusedError as err:
            summary.outcome, summary.message = RunOutcome.REFUSED, str(err)
        except (StoreError, ExchangeError, IdentityError) as err:
            # Fail closed: nothing was applied unless the summary counts it.
            summary.outcome = RunOutcome.FAILED if summary.applied == 0 else RunOutcome.PARTIAL
            summary.message = f"stopped, no further change made: {err}"
        summary.finished_at = self.clock()
        await self._write_summary(summary)
        return summary

    async def _run_locked(self, request: SweepRequest, summary: RunSummary) -> None:
        """Read desired and actual state, plan, then record or apply; the watermark is written once, at the end."""
        now = self.clock()
        # Fail closed: an unreadable exception table raises here and the run changes nothing.
        exceptions = effective_exceptions(await self.store.exceptions.all(), now)
        state = await self.store.state.sweep_state(self.mode.value)
        summary.hold = await self.store.state.hold()
        if summary.hold is not None:
            self.progress(summary.hold.describe())
            if request.confirm_plan is not None:
                raise RefusedError(f"{summary.hold.describe()}; run `python -m shared.cli resume` to confirm a plan")
        if not summary.full and (state.full_pending or state.watermark is None):
            summary.full = True
            self.progress("no finished sweep to resume from: running a full reconcile")
        since = None if summary.full else state.watermark - WATERMARK_OVERLAP  # type: ignore[operator]
        listing_started = self.clock()
        listing_seconds = await self._list_and_plan(summary, exceptions, since, now)
        await self._plan_policies(summary, now)
        resume = await self._conclude(request, summary, listing_seconds)
        if resume is _Resume.FROM_THIS_LISTING:  # everything before the listing began is done
            await self._save_state(summary, SweepState(watermark=listing_started, full_pending=False))
        elif resume is _Resume.WITH_A_FULL_RUN:
            await self._save_state(summary, SweepState(watermark=state.watermark, full_pending=True))

    async def _list_and_plan(
        self, summary: RunSummary, exceptions: dict[str, ExceptionRecord], since: datetime | None, now: datetime
    ) -> float:
        """Plan every listed mailbox into `summary.changes`, streaming the listing; returns its seconds."""
        org = await self.exchange.get_transport_config()
        summary.org_smtp_auth_disabled = org.get("SmtpClientAuthenticationDisabled")
        if summary.org_smtp_auth_disabled is not True:
            self.progress(
                "warning: the organisation allows SMTP AUTH (Get-TransportConfig); mailboxes set to null follow it"
            )
        plan = PlanSummary()
        changes: list[Change] = []
        scope = "all mailboxes" if since is None else f"mailboxes changed since {since:%Y-%m-%d %H:%M:%S}Z"
        self.progress(f"listing {scope}")
        listing_clock = time.monotonic()
        async for page in self.exchange.iter_cas_mailboxes(changed_since=since):
            changes.extend(plan_changes(page, exceptions, now, plan))
            self.progress(f"listed {plan.scanned} mailboxes, {plan.changes} need a change")
        changes = await self._recheck(changes, exceptions, since, now)
        summary.scanned, summary.planned = plan.scanned, len(changes)
        summary.by_reason = dict(Counter(change.reason.value for change in changes))
        summary.changes = changes
        return time.monotonic() - listing_clock

    async def _plan_policies(self, summary: RunSummary, now: datetime) -> None:
        """The OAuth-only exceptions' authentication policies (OAUTH_ONLY_POLICY): off plans nothing.

        Counted like the SMTP AUTH changes (planned, by_reason, the cap) unless the setting is `report`.
        An Exchange read that fails leaves the policies alone and is an error of the run, not its end:
        the SMTP AUTH changes do not wait on a right only this step needs.
        """
        mode = self.settings.oauth_only_policy
        if mode is OAuthOnlyMode.OFF:
            return
        assert summary.actor is not None
        exceptions = effective_exceptions(await self.store.exceptions.all(), now)  # fail closed, as above
        try:
            plan = await plan_policies(
                self.store, self.exchange, exceptions, now, settle_as=(summary.actor, self.clock)
            )
        except ExchangeError as err:
            summary.errors.append(f"authentication policies not checked, none changed: {err}")
            self.progress(f"error: {summary.errors[-1]}")
            return
        summary.notes, summary.policy_changes = plan.notes, plan.changes
        summary.policy_report_only = mode is OAuthOnlyMode.REPORT
        self._forget = plan.forget
        for note in plan.notes:
            self.progress(f"note: {note}")
        if summary.policy_report_only:
            self.progress(f"{len(plan.changes)} authentication-policy changes planned (OAUTH_ONLY_POLICY=report)")
            return
        summary.planned += len(plan.changes)
        for change in plan.changes:
            summary.by_reason[change.reason.value] = summary.by_reason.get(change.reason.value, 0) + 1

    async def _conclude(self, request: SweepRequest, summary: RunSummary, listing_seconds: float) -> _Resume:
        """Record the plan (report mode, over the cap) or apply it; says where the next run resumes."""
        if request.confirm_plan is not None:
            changes = await self.confirmed_changes(request.confirm_plan, summary.changes, summary)
            await self._apply_all(summary, changes, listing_seconds)
            # Only the reviewed changes were applied: what this listing found beyond them is not done.
            resume = _Resume.WITH_A_FULL_RUN
        elif self.mode is EnforcementMode.REPORT or summary.hold is not None:
            await self.store_plan(summary, summary.changes, PlanStatus.REPORTED)
            summary.outcome = RunOutcome.REPORTED if self.mode is EnforcementMode.REPORT else RunOutcome.PAUSED
            why = "report mode" if summary.hold is None else summary.hold.describe()
            summary.message = f"{why}: {summary.planned} changes planned, none applied (plan {summary.plan_id})"
            resume = _Resume.FROM_THIS_LISTING if summary.hold is None else _Resume.AS_BEFORE
        elif summary.planned > self.settings.max_changes_per_run:
            await self.store_plan(summary, summary.changes, PlanStatus.OVER_CAP)
            summary.outcome = RunOutcome.OVER_CAP
            summary.message = (
                f"{summary.planned} changes exceed MAX_CHANGES_PER_RUN={self.settings.max_changes_per_run}: "
                f"none applied. Review plan {summary.plan_id}, then run "
                f"`python -m shared.cli sweep --mode enforce --confirm-plan {summary.plan_id}`"
            )
            logger.error("SMTP AUTH Guard: %s", summary.message)
            resume = _Resume.AS_BEFORE
        else:
            smtp_done = await self._apply_all(summary, summary.changes, listing_seconds)
            # A partial incremental run is listed again from the old watermark; a partial full run is redone.
            # Policy changes do not hold it back: they are planned afresh every run, whatever the listing.
            if smtp_done:
                resume = _Resume.FROM_THIS_LISTING
            else:
                resume = _Resume.WITH_A_FULL_RUN if summary.full else _Resume.AS_BEFORE
        return resume

    async def _apply_all(self, summary: RunSummary, changes: list[Change], listing_seconds: float) -> bool:
        """Apply the policy changes, then `changes`, and say in the summary how it went; StoreError when
        the audit trail failed. Policies first: an exception's Basic block before its SMTP AUTH goes on.
        True when every one of `changes` landed."""
        policies = await self.apply_policies(summary)
        result = await self.apply(summary, changes)
        summary.applied = len(result.applied) + len(policies.applied)
        summary.failed = len(result.failed) + len(policies.failed)
        summary.remaining = len(result.not_started) + len(policies.not_started)
        summary.errors += sorted({error for _, error in [*result.failed, *policies.failed]})[:20]
        if result.error is not None:
            raise StoreError(f"the audit trail could not be written, so the run stopped: {result.error}")
        smtp_done = not (result.failed or result.not_started)
        if smtp_done and not (policies.failed or policies.not_started):
            summary.outcome, summary.message = RunOutcome.COMPLETED, f"applied {summary.applied} changes"
            return True
        summary.outcome = RunOutcome.PARTIAL
        stopped_by = result.stopped_by or policies.stopped_by
        stop = f", stopped by {stopped_by}" if stopped_by else ""
        if result.unexpected is not None:
            stop += f" ({type(result.unexpected).__name__}: {result.unexpected})"
            logger.error("SMTP AUTH Guard: run %s stopped", summary.run_id, exc_info=result.unexpected)
        summary.message = (
            f"applied {summary.applied} of {len(changes) + len(summary.policy_changes)} changes, "
            f"{summary.failed} failed, {summary.remaining} left for the next run{stop}"
        )
        if result.stopped_by == "time budget" and not result.applied:
            # Every run would list again and stop here: say what to change rather than stall.
            summary.message += (
                f". The listing alone took {listing_seconds:.0f} s of SWEEP_TIME_BUDGET_SECONDS="
                f"{self.settings.sweep_time_budget_seconds}: raise it (and the host's functionTimeout) "
                "for a tenant this size"
            )
        return smtp_done

    async def apply_policies(self, summary: RunSummary, *, obey_hold: bool = True) -> PolicyApplyResult:
        """Apply the summary's policy changes (none with OAUTH_ONLY_POLICY=report) and tidy stale records."""
        if summary.policy_report_only or not (summary.policy_changes or self._forget):
            return PolicyApplyResult()
        assert summary.actor is not None
        if obey_hold:
            summary.hold = summary.hold or await self.store.state.hold()

        def stop_when() -> str:
            if self.lease is not None and not self.lease.held:
                return "the sweep lease could not be renewed"
            if obey_hold and summary.hold is not None:
                return f"the enforcement hold ({summary.hold.describe()})"
            return "time budget" if time.monotonic() >= self.deadline else ""

        if stop_when():
            return PolicyApplyResult(not_started=list(summary.policy_changes), stopped_by=stop_when())
        await self.store.policy_assignments.forget(self._forget)
        if summary.policy_changes:
            self.progress(f"applying {len(summary.policy_changes)} authentication-policy changes")
        return await apply_policies(
            self.store,
            self.exchange,
            summary.policy_changes,
            run_id=summary.run_id,
            actor=summary.actor,
            plan_id=summary.plan_id,
            clock=self.clock,
            stop_when=stop_when,
        )

    async def _recheck(
        self, changes: list[Change], exceptions: dict[str, ExceptionRecord], since: datetime | None, now: datetime
    ) -> list[Change]:
        """Plan again, from their current state, the mailboxes whose desired state moved out of sight.

        The listing can take minutes, and an approval or revocation made meanwhile is not in
        `exceptions`: planned from the old read, the run would undo it. And an incremental listing
        shows mailboxes that changed, not those whose exception was granted, revoked or lapsed
        since the last run. Both are few; each costs one Exchange read.
        """
        records = await self.store.exceptions.all()  # fail closed here too: unreadable means no change
        fresh = effective_exceptions(records, now)
        recheck = moved_mailboxes(exceptions, fresh, now)
        if since is not None:
            recheck |= changed_since(records, since, now)
        if not recheck:
            return changes
        self.progress(f"checking {len(recheck)} mailboxes whose exception changed")
        kept = [change for change in changes if change.guid not in recheck]
        for guid in sorted(recheck):
            mailbox = await self.exchange.find_mailbox(guid)
            change = plan_mailbox(mailbox, fresh.get(guid), now) if mailbox is not None else None
            if change is not None:
                kept.append(change)
        return kept

    async def confirmed_changes(
        self, plan_id: str, current: list[Change], summary: RunSummary, undoes: str = ""
    ) -> list[Change]:
        """The reviewed plan's changes that still hold; RefusedError for any other plan than the one asked for.

        An undo plan (which turns SMTP AUTH back on) is confirmed only by `undo` of its run, and a
        sweep's plan only by a sweep.
        """
        loaded = await self.store.plans.load(plan_id)
        if loaded is None:
            raise RefusedError(f"plan {plan_id} is unknown: nothing applied")
        plan, etag = loaded
        if plan.tenant_id != self.settings.tenant_id:
            raise RefusedError(f"plan {plan_id} belongs to tenant {plan.tenant_id}: nothing applied")
        if plan.undoes != undoes:
            what = f"the undo plan of run {plan.undoes}" if plan.undoes else "a sweep's plan"
            raise RefusedError(f"plan {plan_id} is {what}, not the plan asked for: nothing applied")
        if plan.status is PlanStatus.APPLIED:
            raise RefusedError(f"plan {plan_id} was already applied: run a new sweep to plan again")
        if self.clock() - plan.created_at > PLAN_CONFIRM_MAX_AGE:
            raise RefusedError(
                f"plan {plan_id} is stale (made {plan.created_at:%Y-%m-%d %H:%M}Z, older than "
                f"{PLAN_CONFIRM_MAX_AGE}): run a new sweep and review its plan"
            )
        still, dropped = confirmable(plan.changes, current)
        policies_now = [] if summary.policy_report_only else summary.policy_changes
        still_policies, dropped_policies = confirmable_policies(plan.policy_changes, policies_now)
        if dropped or dropped_policies:
            self.progress(f"{len(dropped) + len(dropped_policies)} reviewed changes no longer hold and are skipped")
        await self.store.plans.claim(plan_id, etag, summary.run_id)
        summary.plan_id = plan_id
        summary.planned = len(still) + len(still_policies)
        summary.changes, summary.policy_changes = still, still_policies
        summary.policy_report_only = False
        return still

    async def store_plan(
        self, summary: RunSummary, changes: list[Change], status: PlanStatus, undoes: str = ""
    ) -> None:
        summary.plan_id = summary.run_id
        await self.store.plans.save(
            StoredPlan(
                plan_id=summary.run_id,
                tenant_id=self.settings.tenant_id,
                created_at=summary.started_at,
                mode=self.mode.value,
                full=summary.full,
                status=status,
                scanned=summary.scanned,
                org_smtp_auth_disabled=summary.org_smtp_auth_disabled,
                changes=changes,
                undoes=undoes,
                policy_changes=summary.policy_changes,
            )
        )

    async def apply(self, summary: RunSummary, changes: list[Change], *, obey_hold: bool = True) -> ApplyResult:
        """Apply `changes`, each batch's intent stored first and each landed change audited.

        An undo applies while paused (`obey_hold=False`): that is why one pauses.
        """
        assert summary.actor is not None
        actor = summary.actor

        async def audit(done: list[Change]) -> None:
            at = self.clock()
            await self.store.audit.append(
                [AuditEntry(summary.run_id, change, actor, at, summary.plan_id) for change in done],
                index_mailboxes=False,  # the next run indexes them: see index_pending_runs
            )

        async def intend(number: int, batch: list[Change]) -> None:
            await self.store.intents.record(summary.run_id, Intent(number, self.clock(), batch))

        def report(result: ApplyResult, total: int) -> None:
            self.progress(f"applied {len(result.applied)} of {total}, {len(result.failed)} failed")

        if not changes:
            return ApplyResult()
        self.progress(f"applying {len(changes)} changes")
        opened = OpenRun(summary.run_id, actor, summary.plan_id or "", self.clock(), self.mode.value, summary.full)
        await self.store.audit.mark_unindexed(summary.run_id)  # before its first row: readers then scan it
        await self.store.intents.open_run(opened)
        async with self._watching_the_hold(summary, obey_hold) as stop_when:
            result = await apply_changes(
                self.exchange,
                changes,
                workers=self.settings.exchange_concurrency,
                deadline=self.deadline,
                on_applied=audit,
                on_progress=report,
                stop_when=stop_when,
                before_send=intend,
            )
        # Every change that landed has its row: nothing is left to settle. A failed batch may have
        # landed all the same (a timeout after Exchange applied it), so then the next run settles it.
        if result.error is None and not result.failed:
            await self.store.intents.close_run(summary.run_id)
        return result

    @asynccontextmanager
    async def _watching_the_hold(self, summary: RunSummary, obey: bool) -> AsyncIterator[Callable[[], str]]:
        """While changes are applied: read the hold every HOLD_POLL s; say when to stop before a batch."""
        if obey:  # read now, not a poll later: a hold set during the listing stops the very first batch
            summary.hold = summary.hold or await self.store.state.hold()
        done = asyncio.Event()

        async def watch() -> None:
            while not done.is_set():
                with suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), HOLD_POLL)
                    return
                try:
                    summary.hold = summary.hold or await self.store.state.hold()
                except StoreError as err:  # an unreadable hold stops the apply, as a set one would
                    self._unreadable_hold = str(err)

        def stop_when() -> str:
            if self.lease is not None and not self.lease.held:
                return "the sweep lease could not be renewed"
            if obey and summary.hold is not None:
                return f"the enforcement hold ({summary.hold.describe()})"
            return f"an unreadable enforcement hold ({self._unreadable_hold})" if self._unreadable_hold else ""

        # An undo does not obey the hold, so it has no reason to read it while it applies.
        watcher = asyncio.create_task(watch()) if obey else None
        try:
            yield stop_when
        finally:
            done.set()
            if watcher is not None:
                await watcher

    async def _save_state(self, summary: RunSummary, state: SweepState) -> None:
        await self.store.state.save_sweep_state(self.mode.value, state, summary.run_id)

    async def _write_summary(self, summary: RunSummary) -> None:
        try:
            await self.store.audit.write_summary(summary)
        except GuardError as err:
            summary.errors.append(f"the run summary could not be stored: {err}")
            logger.error("SMTP AUTH Guard: run %s summary not stored: %s", summary.run_id, err)


async def run_scheduled(full: bool) -> RunSummary:
    """Entry point for the timers: settings from the app settings, mode from ENFORCEMENT_MODE.

    Raises when the run did not finish cleanly, so the Functions host records a failed execution
    (and alerts on it) rather than a silent success.
    """
    from shared.settings import load_settings

    summary = await run_sweep(load_settings(), SweepRequest(full=full))
    line = (
        f"SMTP AUTH Guard run {summary.run_id} ({'full' if summary.full else 'incremental'}, {summary.mode}): "
        f"{summary.outcome.value}; scanned {summary.scanned}, planned {summary.planned}, "
        f"applied {summary.applied}, failed {summary.failed}. {summary.message}"
    )
    if summary.outcome is RunOutcome.PAUSED:  # an admin's brake, not a failure: say so and do not alert
        logger.warning(line)
        return summary
    if not summary.ok:
        logger.error(line)
        raise RuntimeError(line)
    if summary.errors:  # a step that did not fail the run (the OAuth-only policies' reads, say)
        logger.warning("%s Errors: %s", line, "; ".join(summary.errors[:5]))
        return summary
    logger.info(line)
    return summary
