"""Incremental cost: an N-mailbox tenant, already compliant, gains 1,000 new mailboxes.

For N = 10,000, 100,000 and 1,000,000: seed N mailboxes all in the desired state (True), run a full enforce
reconcile once (it only lists, and stores the watermark), add 1,000 new mailboxes through the emulator's control
API (every type, SMTP AUTH null or False, a fifth of them late-provisioned: created years ago, mailbox created
now), clear the call log and run the incremental sweep (`sweep --mode enforce --json`). It lists only mailboxes
changed since the watermark minus the 10-minute overlap.

Exchange calls are compared with a typical runbook (list everything, one Set-CASMailbox per new mailbox):
ceil(N/1000) + new; with CIPP's approach (list everything, $batch of 10): ceil(N/1000) + ceil(new/10); and with
the target: ceil(new/1000) + ceil(new/10) + 3.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from .harness import (
    EmulatorOptions,
    EmulatorProcess,
    Sweep,
    SweepStack,
    log,
    peak_rss_mib,
    sweep_duration_s,
    sweep_stack,
    table,
    write_artifact,
)

SIZES: Final = (10_000, 100_000, 1_000_000)
NEW: Final = 1_000
QUICK_SIZES: Final = (5_000,)
QUICK_NEW: Final = 100
LATENCY_MS: Final = 30.0
CONCURRENCY: Final = 4
PAGE: Final = 1000
BATCH: Final = 10
# (type, share of the new mailboxes); SMTP AUTH alternates null / False, so every new mailbox needs a change.
NEW_MIX: Final = (("UserMailbox", 0.7), ("SharedMailbox", 0.15), ("RoomMailbox", 0.1), ("EquipmentMailbox", 0.05))
# The seeded tenant's history ends this long before the sweeps: a real tenant's last minutes hold its
# churn rate, not thousands of generated "recent" changes, and those would fall inside the 10-minute
# watermark overlap and be listed again. One extra 1M run keeps the history ending now, to show that cost.
SEED_AGE_MINUTES: Final = 60.0
LATE_EVERY: Final = 5  # every 5th new mailbox is late-provisioned (old user, mailbox created now)
INCREMENTAL_HEADERS: Final = (
    "N",
    "seed age min",
    "listed",
    "pages",
    "batches",
    "Exchange calls",
    "target",
    "runbook",
    "CIPP",
    "wall s",
    "in-run s",
    "peak RSS MiB",
    "new fixed",
)
FULL_HEADERS: Final = ("N", "emulator seed s", "full wall s", "full in-run s", "full calls", "full peak RSS MiB")


def runbook_calls(n: int, new: int) -> int:
    return math.ceil(n / PAGE) + new


def cipp_calls(n: int, new: int) -> int:
    return math.ceil(n / PAGE) + math.ceil(new / BATCH)


def target_calls(new: int) -> int:
    return math.ceil(new / PAGE) + math.ceil(new / BATCH) + 3


def new_mailbox_specs(count: int, now: datetime) -> list[dict[str, Any]]:
    kinds = [kind for kind, share in NEW_MIX for _ in range(round(share * 20))]
    specs = []
    for i in range(count):
        spec: dict[str, Any] = {
            "address": f"bench-new-{i:05d}",
            "type": kinds[i % len(kinds)],
            "smtp": None if i % 2 == 0 else False,
        }
        if i % LATE_EVERY == 0:
            spec["when_created"] = (now - timedelta(days=3 * 365 + i % 365)).isoformat()
            spec["when_mailbox_created"] = now.isoformat()
        specs.append(spec)
    return specs


@dataclass(frozen=True, slots=True)
class Measured:
    """One tenant: the full sweep that set the watermark, then the incremental sweep after the new mailboxes."""

    emulator_startup_s: float
    full: Sweep
    incremental: Sweep
    new_guids: set[str]
    state: dict[str, bool | None]  # guid -> SmtpClientAuthenticationDisabled after the incremental sweep
    emulator_peak_mib: float


def _set_watermark(stack: SweepStack) -> Sweep:
    log("sweep --full --mode enforce --json (sets the watermark; every mailbox is compliant, so it only lists)")
    full = stack.sweep(["--full", "--mode", "enforce", "--json"], label="full sweep")
    proc = full.proc
    log(f"  full: {proc.wall_s:.1f}s wall, {proc.max_rss_mib:.1f} MiB, {full.calls.exchange_calls} calls")
    return full


def _add_new_mailboxes(emulator: EmulatorProcess, new: int) -> set[str]:
    """Add `new` mailboxes through the control API; returns their guids."""
    started = time.perf_counter()
    created = [emulator.add_mailbox(spec) for spec in new_mailbox_specs(new, datetime.now(UTC))]
    log(f"added {len(created):,} mailboxes through the control API in {time.perf_counter() - started:.1f}s")
    return {m["guid"] for m in created}


def _read_back(emulator: EmulatorProcess) -> dict[str, bool | None]:
    started = time.perf_counter()
    state = {m["guid"]: m["smtp"] for m in emulator.mailboxes()}
    log(f"read back {len(state):,} mailboxes in {time.perf_counter() - started:.1f}s")
    return state


def _measure(n: int, new: int, seed_age_minutes: float) -> Measured:
    options = EmulatorOptions(
        mailboxes=n,
        latency_ms=LATENCY_MS,
        concurrency_limit=CONCURRENCY,
        disabled_true=1.0,
        disabled_none=0.0,
        extra=["--seed-age-minutes", str(seed_age_minutes)],
    )
    with sweep_stack(options, exchange_concurrency=CONCURRENCY) as stack:
        emulator = stack.emulator
        log(f"emulator seeded {n:,} mailboxes in {emulator.startup_s:.1f}s")
        full = _set_watermark(stack)
        new_guids = _add_new_mailboxes(emulator, new)
        log("sweep --mode enforce --json (incremental)")
        incremental = stack.sweep(["--mode", "enforce", "--json"], label="incremental sweep")
        state = _read_back(emulator)
        return Measured(emulator.startup_s, full, incremental, new_guids, state, peak_rss_mib(emulator.pid))


def _fixed_per_call_log(entries: list[dict[str, Any]], new_guids: set[str]) -> set[str]:
    """The new mailboxes that a successful $batch sub-request changed."""
    return {
        str(e.get("identity"))
        for e in entries
        if e.get("kind") == "batch_item" and e.get("status") == 200 and e.get("identity") in new_guids
    }


def _row(n: int, new: int, seed_age_minutes: float, m: Measured) -> dict[str, Any]:
    full, inc = m.full, m.incremental
    fixed = sum(1 for g in m.new_guids if m.state.get(g) is True)
    fixed_by_calls = _fixed_per_call_log(inc.entries, m.new_guids)
    return {
        "n": n,
        "seed_age_minutes": seed_age_minutes,
        "new": new,
        "emulator_startup_s": round(m.emulator_startup_s, 1),
        "full_wall_s": round(full.proc.wall_s, 2),
        "full_in_run_s": sweep_duration_s(full.summary),
        "full_peak_rss_mib": round(full.proc.max_rss_mib, 1),
        "full_calls": full.calls.json(),
        "full_scanned": full.summary.get("scanned"),
        "incremental_full_flag": inc.summary.get("full"),
        "outcome": inc.summary.get("outcome"),
        "scanned": inc.summary.get("scanned"),
        "planned": inc.summary.get("planned"),
        "applied": inc.summary.get("applied"),
        "calls": inc.calls.json(),
        "exchange_calls": inc.calls.exchange_calls,
        "wall_s": round(inc.proc.wall_s, 2),
        "in_run_s": sweep_duration_s(inc.summary),
        "peak_rss_mib": round(inc.proc.max_rss_mib, 1),
        "emulator_cpu_s": round(inc.emulator_cpu_s, 2),
        "emulator_peak_rss_mib": round(m.emulator_peak_mib, 1),
        "new_fixed_in_final_state": fixed,
        "new_fixed_per_call_log": len(fixed_by_calls),
        "all_new_fixed": fixed == new and len(fixed_by_calls) == new,
        "tenant_not_desired_after": sum(1 for v in m.state.values() if v is not True),
        "runbook_calls": runbook_calls(n, new),
        "cipp_calls": cipp_calls(n, new),
        "target_calls": target_calls(new),
        "target_met": inc.calls.exchange_calls <= target_calls(new),
    }


def _one(n: int, new: int, seed_age_minutes: float = SEED_AGE_MINUTES) -> dict[str, Any]:
    print(f"\n-- N = {n:,} mailboxes (all compliant, seeded as of {seed_age_minutes:.0f} min ago), {new:,} new")
    measured = _measure(n, new, seed_age_minutes)
    row = _row(n, new, seed_age_minutes, measured)
    proc = measured.incremental.proc
    log(
        f"  incremental: {row['exchange_calls']} calls (target {row['target_calls']}), {proc.wall_s:.1f}s wall, "
        f"{proc.max_rss_mib:.1f} MiB, fixed {row['new_fixed_in_final_state']}/{new}"
    )
    return row


def _incremental_cells(r: dict[str, Any]) -> list[Any]:
    return [
        r["n"],
        r["seed_age_minutes"],
        r["scanned"],
        r["calls"]["pages"],
        r["calls"]["batches"],
        r["exchange_calls"],
        r["target_calls"],
        r["runbook_calls"],
        r["cipp_calls"],
        r["wall_s"],
        round(r["in_run_s"] or 0, 2),
        r["peak_rss_mib"],
        f"{r['new_fixed_in_final_state']}/{r['new']}",
    ]


def _full_cells(r: dict[str, Any]) -> list[Any]:
    return [
        r["n"],
        r["emulator_startup_s"],
        r["full_wall_s"],
        round(r["full_in_run_s"] or 0, 2),
        r["full_calls"]["exchange_calls"],
        r["full_peak_rss_mib"],
    ]


def run(quick: bool = False) -> dict[str, Any]:
    sizes, new = (QUICK_SIZES, QUICK_NEW) if quick else (SIZES, NEW)
    print(f"\n== incremental cost: {new:,} new mailboxes in tenants of {', '.join(f'{n:,}' for n in sizes)}")
    rows = [_one(n, new) for n in sizes]
    if not quick:  # the same 1M tenant with its seeded history ending now: recent changes fall in the overlap
        rows.append(_one(sizes[-1], new, seed_age_minutes=0))
    print()
    print(table(INCREMENTAL_HEADERS, [_incremental_cells(r) for r in rows]))
    print("\nthe full reconcile that set each watermark (all compliant: listing only):")
    print(table(FULL_HEADERS, [_full_cells(r) for r in rows]))
    result = {
        "benchmark": "incremental",
        "quick": quick,
        "parameters": {"sizes": list(sizes), "new": new, "latency_ms": LATENCY_MS, "concurrency": CONCURRENCY},
        "runs": rows,
    }
    path = write_artifact("incremental-quick" if quick else "incremental", result)
    print(f"written {path}")
    return result
