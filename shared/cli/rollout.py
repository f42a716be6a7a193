"""Commands that prepare a rollout: `inventory`, `exceptions import`, `exceptions show` and `doctor`."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any, TextIO

from shared.bootstrap import Connections, open_graph
from shared.cli.console import Exit, complete_or_nothing, progress_to, writable
from shared.errors import InputError
from shared.microsoft.identity import actor_for
from shared.model import inventory as rows_of
from shared.model.clock import utc_now
from shared.rollout import history as histories
from shared.rollout.exception_import import ERRORS_SHOWN, import_exceptions
from shared.rollout.history import mailbox_history
from shared.rollout.inventory import Inventory, take_inventory
from shared.settings import Settings, retirement_date
from shared.workflow.evidence import FAILURE_PAGES, sign_in_days, usage_report
from shared.workflow.validation import mailbox_address

TABLE_ROWS = 200  # rows printed on a terminal; --json and --csv hold all of them


def add_commands(commands: Any, exception_actions: Any) -> None:
    inventory = commands.add_parser(
        "inventory",
        help="reads Exchange and Graph only: every mailbox with SMTP AUTH effectively on or used lately, with "
        "its Basic SMTP sign-ins (successes and failures apart) and, from --usage-csv (kept for the approval "
        "page), its protocol",
    )
    inventory.add_argument("--days", metavar="N", help="sign-ins of the last N days (1-30, default 30)")
    inventory.add_argument(
        "--usage-csv", metavar="FILE", help="the Exchange admin center's SMTP AUTH clients report, exported as CSV"
    )
    inventory.add_argument("--json", action="store_true", help="print the rows as JSON")
    inventory.add_argument("--csv", metavar="FILE", help="write the rows here as CSV (complete or not at all)")

    bulk = exception_actions.add_parser(
        "import",
        help="grant many exceptions from a CSV (mailbox, days, reason, auth; owner, device optional): "
        "all or nothing for bad rows; rows whose mailbox already holds an active exception are skipped",
    )
    bulk.add_argument("--csv", required=True, metavar="FILE")
    bulk.add_argument("--dry-run", action="store_true", help="check every row and write nothing")

    doctor = commands.add_parser(
        "doctor",
        help="check every setting and right the app needs, without changing anything: one line a check "
        "(ok, warn or FAIL); exit 1 when a required check fails",
    )
    doctor.add_argument("--json", action="store_true")

    show = exception_actions.add_parser(
        "show", help="one mailbox's history, oldest first, and its recent SMTP AUTH sign-ins"
    )
    show.add_argument("--mailbox", required=True, metavar="ADDRESS")
    show.add_argument("--json", action="store_true")


def read_text(field: str, path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(field, f"there is no file {path}") from None
    except UnicodeDecodeError:
        raise InputError(field, f"{path} is not UTF-8 text (save it as CSV UTF-8)") from None
    except OSError as err:
        raise InputError(field, f"cannot read {path}: {err.strerror or err}") from None


async def inventory(
    args: argparse.Namespace, settings: Settings, connections: Connections, out: TextIO, err: TextIO
) -> int:
    days = sign_in_days(args.days)
    protocols = usage_report(read_text("--usage-csv", args.usage_csv)) if args.usage_csv else None
    if args.csv:
        writable("--csv", args.csv)  # before the scan, not after it
    now = utc_now()
    found = await take_inventory(
        connections.store,
        connections.exchange,
        open_graph(settings, connections.credential),
        tenant_id=settings.tenant_id,
        days=days,
        protocols=protocols,
        now=now,
        progress=progress_to(err),
    )
    if protocols is not None:  # kept for the approval page: the protocol each sender used
        actor = await actor_for(connections.credential, settings.exchange_scope)
        await connections.store.usage.remember(protocols, str(actor), now)
    if found.sign_ins_unavailable:
        err.write(f"warning: {found.sign_ins_unavailable}; the rows are listed without sign-in counts\n")
    if found.failures_capped:
        err.write(f"warning: failed sign-ins beyond the {FAILURE_PAGES} pages read; failure counts are lower bounds\n")
    if args.csv:
        with complete_or_nothing("--csv", args.csv) as file:
            writer = csv.writer(file, lineterminator="\n")
            writer.writerow(rows_of.COLUMNS)
            writer.writerows(rows_of.as_csv(row) for row in found.rows)
    if args.json:
        json.dump([rows_of.as_json(row) for row in found.rows], out, indent=2)
        out.write("\n")
    else:
        _print_inventory(found, out)
    summary = (
        f"{found.effectively_on} of {found.scanned} mailboxes have SMTP AUTH effectively on; {found.used} used "
        f"Basic SMTP AUTH in the last {days} days; {found.without_exception} listed without an exception"
    )
    (err if args.json else out).write(summary + "\n")
    return Exit.OK


def _print_inventory(found: Inventory, out: TextIO) -> None:
    out.write(f"{'mailbox':<40} {'type':<18} {'setting':<7} {'on':<3} {'exc':<3} {'uses':>5} ")
    out.write(f"{'last use (UTC)':<16} {'fails':>5} protocol\n")
    for row in found.rows[:TABLE_ROWS]:
        data = rows_of.as_json(row)
        last = row.last_use.strftime("%Y-%m-%d %H:%M") if row.last_use else "-"
        unknown = "?"  # the sign-in logs could not be read
        out.write(
            f"{row.mailbox:<40} {row.type or '-':<18} {data['setting']!s:<7} {data['effective']:<3} "
            f"{'yes' if row.exception else 'no':<3} {data['signins'] if row.usage else unknown:>5} {last:<16} "
            f"{data['failures'] if row.usage else unknown:>5} {data['protocol'] or '-'}\n"
        )
    if len(found.rows) > TABLE_ROWS:
        out.write(f"... and {len(found.rows) - TABLE_ROWS} more (use --json or --csv for all)\n")


async def exceptions_import(
    args: argparse.Namespace, settings: Settings, connections: Connections, out: TextIO, err: TextIO
) -> int:
    text = read_text("--csv", args.csv)
    actor = await actor_for(connections.credential, settings.exchange_scope)
    result = await import_exceptions(
        connections.store,
        connections.exchange,
        tenant_id=settings.tenant_id,
        text=text,
        max_days=settings.exception_max_days,
        retirement=retirement_date(),
        granted_by=str(actor),
        now=utc_now(),
        dry_run=args.dry_run,
        progress=progress_to(err),
    )
    if result.errors:
        for line in result.errors[:ERRORS_SHOWN]:
            err.write(f"{line}\n")
        if len(result.errors) > ERRORS_SHOWN:
            err.write(f"... and {len(result.errors) - ERRORS_SHOWN} more\n")
        err.write(f"error: {len(result.errors)} problems in {args.csv}: nothing was imported\n")
        return Exit.BAD_INPUT
    for row in result.skipped:
        out.write(f"  skipped line {row.line}: {row.grant.mailbox} already holds an active exception\n")
    verb = "would grant" if args.dry_run else "granted"
    out.write(
        f"{'checked' if args.dry_run else 'imported'}: {result.checked} rows; {verb} {len(result.granted)}, "
        f"skipped {len(result.skipped)}" + ("" if args.dry_run else "; the next enforce sweep sets them") + "\n"
    )
    if result.failed:
        err.write(f"failed: {result.failed}\n")
        return Exit.FAILED
    return Exit.OK


async def exceptions_show(
    args: argparse.Namespace, settings: Settings, connections: Connections, out: TextIO, err: TextIO
) -> int:
    address = mailbox_address("--mailbox", args.mailbox)
    history = await mailbox_history(
        connections.store,
        connections.exchange,
        open_graph(settings, connections.credential),
        tenant_id=settings.tenant_id,
        address=address,
        now=utc_now(),
    )
    if history.note:
        err.write(f"warning: {history.note}\n")
    if args.json:
        json.dump(histories.as_json(history), out, indent=2)
        out.write("\n")
        return Exit.OK
    out.write(f"{address} ({', '.join(history.mailbox_guids) or 'no mailbox found'})\n")
    if not history.events:
        out.write("  no requests, exceptions or changes recorded\n")
    for event in history.events:
        out.write(f"  {event.at:%Y-%m-%d %H:%M}Z  {event.kind:<15} {event.detail}  [{event.ref}]\n")
    if line := histories.assignment_line(history.assignment):
        out.write(f"{line}\n")
    usage = history.usage
    if usage is None:
        out.write(f"SMTP AUTH sign-ins: {history.sign_ins.unavailable}\n")
        return Exit.OK
    out.write(f"Basic SMTP AUTH sign-ins, last 30 days: {usage.signins} successful")
    out.write(
        f" (last {usage.last_signin:%Y-%m-%d %H:%M}Z, from {', '.join(usage.ips)})\n" if usage.last_signin else "\n"
    )
    for sign_in in history.recent(succeeded=True):
        out.write(f"  {sign_in.at:%Y-%m-%d %H:%M}Z  success  {sign_in.ip_address}\n")
    out.write(f"Failed sign-ins (password spray, never use): {usage.failures}\n")
    for sign_in in history.recent(succeeded=False):
        out.write(f"  {sign_in.at:%Y-%m-%d %H:%M}Z  failure  error {sign_in.error_code}\n")
    return Exit.OK


async def doctor(args: argparse.Namespace, out: TextIO) -> int:
    """Loads the settings itself: a bad one is a FAIL line, not a stop before the checks."""
    from shared.rollout.doctor import run_doctor  # reads Graph: msgraph-sdk only for this command

    checks = await run_doctor()
    if args.json:
        json.dump(
            [{"name": c.name, "level": c.level.value, "detail": c.detail, "required": c.required} for c in checks],
            out,
            indent=2,
        )
        out.write("\n")
    else:
        for check in checks:
            out.write(f"{check.level.value:<4} {check.name}: {check.detail}\n")
    return Exit.FAILED if any(c.blocks for c in checks) else Exit.OK
