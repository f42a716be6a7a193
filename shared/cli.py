"""Command line for admins and scripts: `python -m shared.cli --help`.

Exit codes: 0 everything asked for was done; 1 the run failed or finished only partly; 2 bad input
or settings (nothing written); 3 a safety rule refused the run (fail closed, change cap, lease).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, fields
from datetime import datetime
from enum import IntEnum
from typing import Any, TextIO

from shared.bootstrap import Connections, connect
from shared.errors import GuardError, InputError, RefusedError
from shared.microsoft.identity import actor_for
from shared.model.clock import utc_now
from shared.model.exception_records import AuthMethod, ExceptionRecord
from shared.model.runs import RunOutcome, RunSummary, tri_state
from shared.settings import EnforcementMode, Settings, SettingsError, load_settings
from shared.storage import TABLES
from shared.sweep.engine import SweepRequest, run_sweep
from shared.workflow.grants import active_mailboxes, grant_exception, revoke_and_switch_off, validate_grant

PLAN_LINES = 25  # changes printed for a human; --json and the plan table hold all of them


class Exit(IntEnum):
    OK = 0
    FAILED = 1
    BAD_INPUT = 2
    REFUSED = 3


_OUTCOME_EXIT = {
    RunOutcome.COMPLETED: Exit.OK,
    RunOutcome.REPORTED: Exit.OK,
    RunOutcome.PARTIAL: Exit.FAILED,
    RunOutcome.FAILED: Exit.FAILED,
    RunOutcome.OVER_CAP: Exit.REFUSED,
    RunOutcome.REFUSED: Exit.REFUSED,
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, not the usage block
        sys.stderr.write(f"error: {message} (see --help)\n")
        raise SystemExit(Exit.BAD_INPUT)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m shared.cli", description="SMTP AUTH Guard: keep SMTP AUTH off.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    commands.add_parser("init", help="create the tables and the install marker (idempotent)")

    sweep = commands.add_parser("sweep", help="bring mailboxes to their desired state")
    sweep.add_argument("--full", action="store_true", help="every mailbox, not only those changed lately")
    sweep.add_argument("--mode", choices=[m.value for m in EnforcementMode], help="default: ENFORCEMENT_MODE")
    sweep.add_argument("--confirm-plan", metavar="ID", help="apply this reviewed over-cap plan")
    sweep.add_argument("--json", action="store_true", help="print the result as JSON")

    exceptions = commands.add_parser("exceptions", help="manage SMTP AUTH exceptions")
    actions = exceptions.add_subparsers(dest="action", required=True, parser_class=_Parser)
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
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    args = build_parser().parse_args(argv)
    try:
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
    }
    name = args.action if args.command == "exceptions" else args.command
    async with connect(settings) as connections:
        return await handlers[name](args, settings, connections, out, err)


def _progress(err: TextIO) -> Callable[[str], None]:
    interactive = err.isatty()

    def show(message: str) -> None:
        if interactive:
            err.write(f"  {message}\n")
            err.flush()

    return show


async def _init(
    args: argparse.Namespace, settings: Settings, connections: Connections, out: TextIO, err: TextIO
) -> int:
    actor = await actor_for(connections.credential, settings.exchange_scope)
    marker, created = await connections.store.state.initialise(settings.tenant_id, str(actor))
    verb = "initialised" if created else "already initialised"
    out.write(
        f"{verb}: tables {', '.join(TABLES)}; install marker for tenant {marker.tenant_id} "
        f"(written {marker.installed_at:%Y-%m-%d %H:%M}Z)\n"
    )
    return Exit.OK


async def _sweep(
    args: argparse.Namespace, settings: Settings, connections: Connections, out: TextIO, err: TextIO
) -> int:
    request = SweepRequest(
        full=args.full,
        mode=EnforcementMode(args.mode) if args.mode else None,
        confirm_plan=args.confirm_plan,
    )
    summary = await run_sweep(settings, request, connections=connections, progress=_progress(err))
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
    data["org_smtp_auth_disabled"] = tri_state(summary.org_smtp_auth_disabled)
    return data


def _print_summary(summary: RunSummary, out: TextIO) -> None:
    scope = "full reconcile" if summary.full else "incremental sweep"
    out.write(f"{scope} in {summary.mode} mode, run {summary.run_id}: {summary.outcome.value}\n")
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
    if summary.mode == EnforcementMode.ENFORCE:
        out.write(f"  applied: {summary.applied}; failed: {summary.failed}; left for next run: {summary.remaining}\n")
    if summary.plan_id:
        out.write(f"  plan id: {summary.plan_id}\n")
    for error in summary.errors[:5]:
        out.write(f"  error: {error}\n")
    out.write(f"  {summary.message}\n")


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


if __name__ == "__main__":
    raise SystemExit(main())
