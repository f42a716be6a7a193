"""Command line for admins and scripts: `python -m shared.cli --help`.

Exit codes: 0 everything asked for was done; 1 the run failed or finished only partly; 2 bad input
or settings (nothing written); 3 a safety rule refused the run (fail closed, change cap, lease).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict, fields
from datetime import UTC, datetime
from typing import Any, TextIO

from shared.bootstrap import Connections, connect
from shared.cli import rollout
from shared.cli.console import Exit, Parser, complete_or_nothing, progress_to
from shared.errors import GuardError, InputError, RefusedError
from shared.microsoft.identity import actor_for
from shared.model import export
from shared.model.auth_policy import TAKES_EFFECT_WITHIN, describe
from shared.model.clock import utc_now
from shared.model.exception_records import AuthMethod, ExceptionRecord
from shared.model.runs import AuditedChange, RunOutcome, RunSummary, tri_state
from shared.settings import EnforcementMode, Settings, SettingsError, load_settings, retirement_date
from shared.storage import TABLES, InstallStep
from shared.sweep import hold
from shared.sweep.engine import SweepRequest, run_sweep
from shared.sweep.undo import Grant, UndoRequest, run_undo
from shared.workflow.grants import MAX_REASON, active_mailboxes, grant_exception, revoke_and_switch_off, validate_grant
from shared.workflow.validation import free_text, mailbox_address, whole_number

PLAN_LINES = 25  # changes printed for a human; --json and the plan table hold all of them


_OUTCOME_EXIT = {
    RunOutcome.COMPLETED: Exit.OK,
    RunOutcome.REPORTED: Exit.OK,
    RunOutcome.PARTIAL: Exit.FAILED,
    RunOutcome.FAILED: Exit.FAILED,
    RunOutcome.OVER_CAP: Exit.REFUSED,
    RunOutcome.REFUSED: Exit.REFUSED,
    RunOutcome.PAUSED: Exit.REFUSED,
}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m shared.cli", description="SMTP AUTH Guard: keep SMTP AUTH off.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    commands.add_parser("init", help="create the tables and the install marker (idempotent)")

    sweep = commands.add_parser("sweep", help="bring mailboxes to their desired state")
    sweep.add_argument("--full", action="store_true", help="every mailbox, not only those changed lately")
    sweep.add_argument("--mode", choices=[m.value for m in EnforcementMode], help="default: ENFORCEMENT_MODE")
    sweep.add_argument("--confirm-plan", metavar="ID", help="apply this reviewed over-cap plan")
    sweep.add_argument("--json", action="store_true", help="print the result as JSON")

    exceptions = commands.add_parser("exceptions", help="manage SMTP AUTH exceptions")
    actions = exceptions.add_subparsers(dest="action", required=True, parser_class=Parser)
    add = actions.add_parser("add", help="grant an exception (for example to grandfather a device)")
    add.add_argument("--mailbox", required=True, metavar="ADDRESS")
    add.add_argument("--days", required=True, metavar="N")
    add.add_argument("--reason", required=True, metavar="TEXT")
    add.add_argument("--owner", metavar="ADDRESS")
    add.add_argument("--device", metavar="TEXT")
    add.add_argument("--auth", default=AuthMethod.OAUTH.value, metavar="oauth|basic")
    listing = actions.add_parser("list", help="list exceptions")
    listing.add_argument("--json", action="store_true")
    revoke = actions.add_parser(
        "revoke",
        help="end a mailbox's exception now and switch SMTP AUTH off at once (audited); if Exchange cannot "
        "be reached the revocation stands, the exit is 1 and it says whether the next sweep will switch it off",
    )
    revoke.add_argument("--mailbox", required=True, metavar="ADDRESS")
    rollout.add_commands(commands, actions)
    _add_rollout_commands(commands)
    return parser


def _add_rollout_commands(commands: Any) -> None:
    """The tools of a rollout on a real tenant: undo a run, read the audit trail, the enforcement hold."""
    undo = commands.add_parser(
        "undo",
        help="put back what one sweep run changed, where the mailbox still holds that run's value: plans "
        "first (stored, nothing changed); --mode enforce --confirm-plan ID applies that plan, after setting "
        "the enforcement hold",
    )
    undo.add_argument("--run", required=True, metavar="RUN_ID")
    undo.add_argument("--mode", choices=[m.value for m in EnforcementMode], default=EnforcementMode.REPORT.value)
    undo.add_argument("--confirm-plan", metavar="ID", help="apply this reviewed undo plan")
    undo.add_argument("--grant-days", metavar="N", help="also grant an exception to each mailbox switched back on")
    undo.add_argument("--reason", metavar="TEXT", help="the granted exceptions' reason (with --grant-days)")
    undo.add_argument("--json", action="store_true", help="print the result as JSON")

    audit = commands.add_parser("audit", help="read the audit trail")
    audit_actions = audit.add_subparsers(dest="action", required=True, parser_class=Parser)
    export = audit_actions.add_parser(
        "export", help="every change row, streamed: one JSON array (default) or CSV with a header; filters combine"
    )
    export.add_argument("--run", metavar="RUN_ID", help="one run's changes")
    export.add_argument("--mailbox", metavar="ADDRESS", help="one mailbox's changes (its primary SMTP address)")
    export.add_argument("--since", metavar="ISO", help="changes at or after this UTC time (e.g. 2026-12-01)")
    export.add_argument("--until", metavar="ISO", help="changes before this UTC time")
    export.add_argument("--format", choices=("json", "csv"), default="json")
    export.add_argument("--output", metavar="FILE", help="write here (complete or not at all) instead of stdout")

    pause = commands.add_parser(
        "pause",
        help="set the enforcement hold: every sweep plans and reports but applies nothing until `resume` "
        "(approvals and revocations still act); audited, idempotent",
    )
    pause.add_argument("--reason", required=True, metavar="TEXT")
    commands.add_parser("resume", help="lift the enforcement hold (audited, idempotent)")


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "doctor":  # it loads the settings itself, and reports a bad one as a check
            return asyncio.run(rollout.doctor(args, out))
        settings = load_settings()
        return asyncio.run(_dispatch(args, settings, out, err))
    except (SettingsError, InputError) as error:
        err.write(f"error: {error}\n")
        return Exit.BAD_INPUT
    except RefusedError as error:
        err.write(f"refused: {error}\n")
        return Exit.REFUSED
    except GuardError as error:
        err.write(f"failed: {error}\n")
        return Exit.FAILED


async def _dispatch(args: argparse.Namespace, settings: Settings, out: TextIO, err: TextIO) -> int:
    handlers: dict[str, Callable[..., Awaitable[int]]] = {
        "init": _init,
        "sweep": _sweep,
        "add": _exceptions_add,
        "list": _exceptions_list,
        "revoke": _exceptions_revoke,
        "export": _audit_export,
        "undo": _undo,
        "pause": _pause,
        "resume": _resume,
        "inventory": rollout.inventory,
        "import": rollout.exceptions_import,
        "show": rollout.exceptions_show,
    }
    name = args.action if args.command in ("exceptions", "audit") else args.command
    async with connect(settings) as connections:
        return await handlers[name](args, settings, connections, out, err)


async def _init(
    args: argparse.Namespace, settings: Settings, connections: Connections, out: TextIO, err: TextIO
) -> int:
    actor = await actor_for(connections.credential, settings.exchange_scope)
    store = connections.store
    indexed: list[int] = []

    async def index_older_rows() -> None:  # the rows written before the indexes existed
        indexed.append(await store.audit.index_existing())
        for request in await store.requests.every():
            await store.audit.index_request(request.mailbox_address, request.mailbox_guid, request.id)

    marker, step = await store.state.initialise(settings.tenant_id, str(actor), index_older_rows)
    out.write(
        f"{step.value}: tables {', '.join(TABLES)}; install marker for tenant {marker.tenant_id} "
        f"(written {marker.installed_at:%Y-%m-%d %H:%M}Z, schema version {marker.schema_version})\n"
    )
    if step is InstallStep.UPGRADED:
        out.write(f"  indexed the audit rows of {indexed[0]} earlier runs\n")
    return Exit.OK


async def _sweep(
    args: argparse.Namespace, settings: Settings, connections: Connections, out: TextIO, err: TextIO
) -> int:
    request = SweepRequest(
        full=args.full,
        mode=EnforcementMode(args.mode) if args.mode else None,
        confirm_plan=args.confirm_plan,
    )
    summary = await run_sweep(settings, request, connections=connections, progress=progress_to(err))
    if args.json:
        json.dump(summary_json(summary), out, indent=2, default=str)  # streamed: plans can be large
        out.write("\n")
    else:
        _print_summary(summary, out)
    if not summary.ok:
        err.write(f"{summary.outcome.value}: {summary.message}\n")
    return _OUTCOME_EXIT[summary.outcome]


def summary_json(summary: RunSummary) -> dict[str, Any]:
    # Not asdict(summary): it would deep-copy every planned change before they are rewritten below.
    data = {f.name: getattr(summary, f.name) for f in fields(summary) if f.name != "changes"}
    data["actor"] = asdict(summary.actor) if summary.actor else None
    data["changes"] = [
        {**c.to_json(), "before": tri_state(c.before), "after": tri_state(c.after)} for c in summary.changes
    ]
    data["policy_changes"] = [c.to_json() for c in summary.policy_changes]
    data["org_smtp_auth_disabled"] = tri_state(summary.org_smtp_auth_disabled)
    data["hold"] = summary.hold.to_json() if summary.hold else None
    return data


def _print_summary(summary: RunSummary, out: TextIO) -> None:
    scope = "full reconcile" if summary.full else "incremental sweep"
    out.write(f"{scope} in {summary.mode} mode, run {summary.run_id}: {summary.outcome.value}\n")
    if summary.hold is not None:
        out.write(f"  {summary.hold.describe()}\n")
    out.write(f"  organisation SMTP AUTH disabled (Get-TransportConfig): {tri_state(summary.org_smtp_auth_disabled)}\n")
    out.write(f"  mailboxes scanned: {summary.scanned}; changes planned: {summary.planned}")
    if summary.by_reason:
        out.write(" (" + ", ".join(f"{k}: {v}" for k, v in sorted(summary.by_reason.items())) + ")")
    out.write("\n")
    if summary.changes:
        verb = "planned" if summary.mode == EnforcementMode.REPORT else "to apply"
        out.write(f"  changes {verb} (SmtpClientAuthenticationDisabled before -> after, reason):\n")
        for change in summary.changes[:PLAN_LINES]:
            out.write(
                f"    {change.address:<44} {tri_state(change.before):>5} -> {tri_state(change.after):<5} "
                f"{change.reason.value}\n"
            )
        if len(summary.changes) > PLAN_LINES:
            out.write(f"    ... and {len(summary.changes) - PLAN_LINES} more (all in --json and the plan table)\n")
    _print_policy_changes(summary, out)
    if summary.mode == EnforcementMode.ENFORCE:
        out.write(f"  applied: {summary.applied}; failed: {summary.failed}; left for next run: {summary.remaining}\n")
    if summary.plan_id:
        out.write(f"  plan id: {summary.plan_id}\n")
    for error in summary.errors[:5]:
        out.write(f"  error: {error}\n")
    out.write(f"  {summary.message}\n")


def _print_policy_changes(summary: RunSummary, out: TextIO) -> None:
    """The OAuth-only exceptions' authentication-policy changes, and what the run left alone."""
    if summary.policy_changes:
        how = "OAUTH_ONLY_POLICY=report: planned, never applied" if summary.policy_report_only else "counted above"
        out.write(f"  authentication policies of OAuth-only exceptions ({how}; before -> after, reason):\n")
        for change in summary.policy_changes[:PLAN_LINES]:
            out.write(
                f"    {change.address:<44} {describe(change.before)} -> {describe(change.after)} {change.reason}\n"
            )
        if len(summary.policy_changes) > PLAN_LINES:
            out.write(f"    ... and {len(summary.policy_changes) - PLAN_LINES} more (all in --json)\n")
        out.write(f"  a policy change can take {TAKES_EFFECT_WITHIN} to apply in Exchange Online\n")
    for note in summary.notes[:PLAN_LINES]:
        out.write(f"  note: {note}\n")


async def _exceptions_add(
    args: argparse.Namespace, settings: Settings, connections: Connections, out: TextIO, err: TextIO
) -> int:
    grant = validate_grant(
        mailbox=args.mailbox,
        days=args.days,
        reason=args.reason,
        owner=args.owner,
        device=args.device,
        auth=args.auth,
        max_days=settings.exception_max_days,
        retirement=retirement_date(),
    )
    actor = await actor_for(connections.credential, settings.exchange_scope)
    record, superseded = await grant_exception(
        connections.store, connections.exchange, settings.tenant_id, grant, str(actor), utc_now()
    )
    out.write(
        f"exception {record.id} granted: {record.mailbox_address} may use SMTP AUTH ({record.auth_method.value}) "
        f"until {record.expires_at:%Y-%m-%d %H:%M}Z; the next enforce sweep sets it\n"
    )
    if superseded:
        out.write(f"  it replaces {len(superseded)} earlier exception(s) of this mailbox\n")
    return Exit.OK


async def _exceptions_list(
    args: argparse.Namespace, settings: Settings, connections: Connections, out: TextIO, err: TextIO
) -> int:
    store = connections.store
    await store.state.require_marker(settings.tenant_id)
    now = utc_now()
    records = sorted(await store.exceptions.all(), key=lambda r: (r.mailbox_address, r.expires_at))
    if args.json:
        json.dump([_record_json(r, now) for r in records], out, indent=2, default=str)
        out.write("\n")
        return Exit.OK
    if not records:
        out.write("no exceptions\n")
    for r in records:
        state = "active" if r.is_active(now) else ("expired" if r.status == "approved" else r.status.value)
        out.write(
            f"{r.mailbox_address:<40} {state:<10} expires {r.expires_at:%Y-%m-%d} {r.auth_method.value:<5} "
            f"owner={r.owner or '-'} device={r.device or '-'} reason={r.reason}\n"
        )
    return Exit.OK


def _record_json(record: ExceptionRecord, now: datetime) -> dict[str, Any]:
    data = asdict(record)
    data["active"] = record.is_active(now)
    return data


async def _exceptions_revoke(
    args: argparse.Namespace, settings: Settings, connections: Connections, out: TextIO, err: TextIO
) -> int:
    """Revoke through the one revoke path, which switches SMTP AUTH off at once (the safe direction).

    Exit 1 when Exchange could not be reached: the revocation stands, and the message says what next.
    """
    now = utc_now()
    store, exchange = connections.store, connections.exchange
    guids = await active_mailboxes(store, settings.tenant_id, args.mailbox, now)
    actor = await actor_for(connections.credential, settings.exchange_scope)
    code = Exit.OK
    for guid in sorted(guids):
        done = await revoke_and_switch_off(store, exchange, guid, actor, now, settings.enforcement_mode)
        if not done.revoked:
            continue  # ended meanwhile
        address = done.revoked[0].mailbox_address
        if done.switched_off:
            out.write(f"revoked {len(done.revoked)} exception(s) of {address}; SMTP AUTH is off for it now\n")
            continue
        out.write(f"revoked {len(done.revoked)} exception(s) of {address}\n")
        err.write(f"failed: SMTP AUTH could not be switched off now ({done.problem}); {done.next_step}\n")
        code = Exit.FAILED
    return code


async def _undo(
    args: argparse.Namespace, settings: Settings, connections: Connections, out: TextIO, err: TextIO
) -> int:
    grant = None
    if args.grant_days is not None or args.reason is not None:
        if args.grant_days is None or args.reason is None:
            raise InputError(
                "--grant-days" if args.grant_days is None else "--reason", "goes with --grant-days and --reason"
            )
        days = whole_number("--grant-days", args.grant_days, 1, settings.exception_max_days)
        grant = Grant(days, free_text("--reason", args.reason, max_length=MAX_REASON, required=True))
    request = UndoRequest(args.run, EnforcementMode(args.mode), args.confirm_plan, grant)
    summary = await run_undo(settings, request, connections=connections, progress=progress_to(err))
    if args.json:
        json.dump(summary_json(summary), out, indent=2, default=str)
        out.write("\n")
    else:
        _print_summary(summary, out)
        for address in summary.skipped[:PLAN_LINES]:
            out.write(f"  skipped, changed since that run: {address}\n")
    if not summary.ok:
        err.write(f"{summary.outcome.value}: {summary.message}\n")
    return _OUTCOME_EXIT[summary.outcome]


async def _audit_export(
    args: argparse.Namespace, settings: Settings, connections: Connections, out: TextIO, err: TextIO
) -> int:
    since, until = _moment("--since", args.since), _moment("--until", args.until)
    if since is not None and until is not None and until <= since:
        raise InputError("--until", "must be later than --since")
    address = mailbox_address("--mailbox", args.mailbox) if args.mailbox is not None else None
    store = connections.store
    await store.state.require_current(settings.tenant_id)
    rows = store.audit.export(run_id=args.run, address=address, since=since, until=until)
    if args.output is None:
        count = await _write_export(rows, args.format, out)
    else:
        with complete_or_nothing("--output", args.output) as file:  # never a half export
            count = await _write_export(rows, args.format, file)
    if err.isatty() or args.output is not None:
        err.write(f"exported {count} changes\n")
    return Exit.OK


async def _write_export(rows: AsyncIterator[AuditedChange], kind: str, out: TextIO) -> int:
    """Stream rows out as they are read: memory stays flat however many there are."""
    count = 0
    if kind == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(export.COLUMNS)
        async for row in rows:
            writer.writerow(export.as_csv(row))
            count += 1
        return count
    out.write("[")
    async for row in rows:
        out.write(("," if count else "") + "\n  " + json.dumps(export.as_json(row)))
        count += 1
    out.write("\n]\n" if count else "]\n")
    return count


def _moment(field: str, value: str | None) -> datetime | None:
    """An ISO 8601 date or time; without a zone it is UTC."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InputError(
            field, f"{value!r} is not an ISO 8601 date or time (e.g. 2026-12-01 or 2026-12-01T08:00Z)"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


async def _pause(
    args: argparse.Namespace, settings: Settings, connections: Connections, out: TextIO, err: TextIO
) -> int:
    reason = free_text("--reason", args.reason, max_length=hold.MAX_REASON, required=True)
    actor = await actor_for(connections.credential, settings.exchange_scope)
    standing, new = await hold.pause(connections.store, settings.tenant_id, actor, reason, utc_now())
    out.write(f"{'paused' if new else 'already paused'}: {standing.describe()}\n")
    return Exit.OK


async def _resume(
    args: argparse.Namespace, settings: Settings, connections: Connections, out: TextIO, err: TextIO
) -> int:
    actor = await actor_for(connections.credential, settings.exchange_scope)
    lifted = await hold.resume(connections.store, settings.tenant_id, actor, utc_now())
    out.write(
        "not paused: nothing to resume\n" if lifted is None else f"resumed: lifted the hold set by {lifted.held_by}\n"
    )
    return Exit.OK
