"""Rollout reads and writes: `inventory` of a 100,000-mailbox tenant with 5,000 SMTP sign-ins, and
`exceptions import` of 5,000 rows.

Inventory: the emulator seeded with 100,000 mailboxes (30 ms latency, limit 4), 5,000 Authenticated
SMTP sign-ins added through its control API (1,000 mailboxes, five each, one in five a failure).
`inventory --json` is measured as its own process. Its bound comes from the emulated latency alone:
Get-TransportConfig and the listing pages are sequential, and the lookups run four $batch calls at a
time, so bound = (1 + pages) x latency + lookup batches x latency / 4 (Graph has no emulated latency).

Import: 5,000 of the listed user mailboxes, owners among three users, through `exceptions import`
(real grants into Azurite); Exchange calls against the target ceil(5000/10) + 5.
"""

from __future__ import annotations

import csv
import io
import json
import math
import random
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from .harness import EmulatorOptions, cli, count_calls, log, sweep_stack, table, write_artifact

MAILBOXES: Final = 100_000
SIGN_INS: Final = 5_000
ROWS: Final = 5_000
QUICK: Final = (5_000, 500, 500)
LATENCY_MS: Final = 30.0
CONCURRENCY: Final = 4
RSS_TARGET_MIB: Final = 150.0


def _add_sign_ins(emulator: Any, mailboxes: list[dict[str, Any]], count: int) -> None:
    rng, now = random.Random(7), datetime.now(UTC)
    users = rng.sample(mailboxes, count // 5)
    for n in range(count):
        user = users[n % len(users)]
        body = {"user": user["guid"], "ip": f"198.51.100.{1 + n % 200}"}
        body["when"] = (now - timedelta(seconds=rng.random() * 29 * 86400)).isoformat()
        if n % 5 == 4:
            body["status_error_code"] = 50126
        emulator.control("POST", "signins", body)


def _inventory(stack: Any, mailboxes: int) -> dict[str, Any]:
    stack.emulator.clear_calls()
    proc = cli(["inventory", "--json"], stack.env)
    if proc.returncode != 0:
        raise RuntimeError(f"inventory exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    rows = proc.json()
    calls = count_calls(stack.emulator.calls())
    lookups = calls.batches
    bound = (calls.invokes * LATENCY_MS + lookups * LATENCY_MS / CONCURRENCY) / 1000
    expected_calls = 1 + math.ceil(mailboxes / 1000) + math.ceil(len(rows) / 10)
    return {
        "mailboxes": mailboxes,
        "listed": len(rows),
        "used": sum(1 for r in rows if r["signins"]),
        "wall_s": round(proc.wall_s, 2),
        "cpu_s": round(proc.user_s + proc.sys_s, 2),
        "peak_rss_mib": round(proc.max_rss_mib, 1),
        "calls": calls.json(),
        "expected_exchange_calls": expected_calls,
        "calls_as_expected": calls.exchange_calls == expected_calls,
        "bound_s": round(bound, 2),
        "wall_to_bound": round(proc.wall_s / bound, 2),
        "rss_target_met": proc.max_rss_mib <= RSS_TARGET_MIB,
        "set_calls": sum(1 for e in stack.emulator.calls() if e.get("cmdlet") == "Set-CASMailbox"),
        "rows": rows,
    }


def _import(stack: Any, rows: list[dict[str, Any]], count: int) -> dict[str, Any]:
    users = [r for r in rows if r["type"] == "UserMailbox"]
    owners = [u["mailbox"] for u in users[:3]]
    picked = users[:count]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["mailbox", "days", "reason", "auth", "owner"])
    writer.writerows([r["mailbox"], 60, "grandfathered", "basic", owners[n % 3]] for n, r in enumerate(picked))
    with tempfile.TemporaryDirectory(prefix="bench-import-") as folder:
        path = Path(folder) / "import.csv"
        path.write_text(text.getvalue(), encoding="utf-8")
        stack.emulator.clear_calls()
        proc = cli(["exceptions", "import", "--csv", str(path)], stack.env)
    if proc.returncode != 0:
        raise RuntimeError(f"exceptions import exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    calls = count_calls(stack.emulator.calls())
    listed = cli(["exceptions", "list", "--json"], stack.env)
    stored = sum(1 for r in json.loads(listed.stdout) if r["active"])
    target = math.ceil(len(picked) / 10) + 5
    return {
        "rows": len(picked),
        "wall_s": round(proc.wall_s, 2),
        "cpu_s": round(proc.user_s + proc.sys_s, 2),
        "peak_rss_mib": round(proc.max_rss_mib, 1),
        "exchange_calls": calls.exchange_calls,
        "target_calls": target,
        "target_met": calls.exchange_calls <= target,
        "active_exceptions_after": stored,
        "all_granted": stored == len(picked),
    }


def run(quick: bool = False) -> dict[str, Any]:
    mailboxes, sign_ins, rows = QUICK if quick else (MAILBOXES, SIGN_INS, ROWS)
    print(f"\n== rollout: inventory of {mailboxes:,} mailboxes with {sign_ins:,} sign-ins; import of {rows:,} rows")
    options = EmulatorOptions(mailboxes=mailboxes, latency_ms=LATENCY_MS, concurrency_limit=CONCURRENCY)
    with sweep_stack(options, exchange_concurrency=CONCURRENCY) as stack:
        emulator = stack.emulator
        # The seed's own sign-ins (at most 40 users) stay beside these.
        _add_sign_ins(emulator, emulator.mailboxes(), sign_ins)
        log(f"added {sign_ins:,} sign-ins")
        inventory = _inventory(stack, mailboxes)
        log(f"  inventory: {inventory['wall_s']}s wall (bound {inventory['bound_s']}s), {inventory['listed']:,} listed")
        imported = _import(stack, inventory.pop("rows"), rows)
        log(f"  import: {imported['wall_s']}s wall, {imported['exchange_calls']} Exchange calls")
    _print(inventory, imported)
    result = {"benchmark": "rollout", "quick": quick, "inventory": inventory, "import": imported}
    path = write_artifact("rollout-quick" if quick else "rollout", result)
    print(f"written {path}")
    return result


def _print(inventory: dict[str, Any], imported: dict[str, Any]) -> None:
    print()
    print(
        table(
            (
                "mailboxes",
                "listed",
                "used",
                "wall s",
                "bound s",
                "wall/bound",
                "CPU s",
                "peak RSS MiB",
                "Exchange calls",
            ),
            [
                [
                    inventory["mailboxes"],
                    inventory["listed"],
                    inventory["used"],
                    inventory["wall_s"],
                    inventory["bound_s"],
                    inventory["wall_to_bound"],
                    inventory["cpu_s"],
                    inventory["peak_rss_mib"],
                    inventory["calls"]["exchange_calls"],
                ]
            ],
        )
    )
    print(
        table(
            ("rows", "wall s", "CPU s", "peak RSS MiB", "Exchange calls", "target", "granted"),
            [
                [
                    imported["rows"],
                    imported["wall_s"],
                    imported["cpu_s"],
                    imported["peak_rss_mib"],
                    imported["exchange_calls"],
                    imported["target_calls"],
                    imported["active_exceptions_after"],
                ]
            ],
        )
    )
