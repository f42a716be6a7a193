"""Full reconcile: 100,000 mailboxes, ~20% not in the desired state, 30 ms latency, 4 concurrent calls.

Measures `python -m shared.cli sweep --full --mode enforce --json` (and the same in report mode) against a
bound derived from the emulated latency alone: listing pages are sequential, batches run 4 at a time, so

    bound = pages x latency + batches x latency / 4

and wall / bound says how much the app (and everything else on the machine) adds on top.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from .harness import (
    EmulatorOptions,
    Sweep,
    SweepStack,
    log,
    peak_rss_mib,
    sweep_duration_s,
    sweep_stack,
    table,
    write_artifact,
)

MAILBOXES: Final = 100_000
QUICK_MAILBOXES: Final = 5_000
LATENCY_MS: Final = 30.0
CONCURRENCY: Final = 4
# Seed mix: 80% already True, 10% null, 10% False -> about 20% need a change.
DISABLED_TRUE: Final = 0.8
DISABLED_NONE: Final = 0.1
RATIO_TARGET: Final = 1.3
RSS_TARGET_MIB: Final = 150.0
# (header, key of a run's row) for the two tables printed
RUN_COLUMNS: Final = (
    ("mode", "mode"),
    ("scanned", "scanned"),
    ("changes", "planned"),
    ("pages", "pages"),
    ("batches", "batches"),
    ("429s", "throttled_429"),
    ("bound s", "bound_s"),
    ("wall s", "wall_s"),
    ("in-run s", "in_run_s"),
    ("wall/bound", "ratio_wall_to_bound"),
    ("peak RSS MiB", "peak_rss_mib"),
)
CPU_COLUMNS: Final = (
    ("mode", "mode"),
    ("app CPU s", "app_cpu_s"),
    ("emulator CPU s", "emulator_cpu_s"),
    ("Azurite CPU s", "azurite_cpu_s"),
)


@dataclass(frozen=True, slots=True)
class Run:
    mode: str
    sweep: Sweep

    def row(self, latency_s: float) -> dict[str, Any]:
        proc, summary, calls = self.sweep.proc, self.sweep.summary, self.sweep.calls
        bound = calls.pages * latency_s + calls.batches * latency_s / CONCURRENCY
        in_run = sweep_duration_s(summary)
        return {
            "mode": self.mode,
            "exit_code": proc.returncode,
            "outcome": summary.get("outcome"),
            "scanned": summary.get("scanned"),
            "planned": summary.get("planned"),
            "applied": summary.get("applied"),
            "failed": summary.get("failed"),
            **calls.json(),
            "bound_s": round(bound, 3),
            "wall_s": round(proc.wall_s, 3),
            "in_run_s": None if in_run is None else round(in_run, 3),
            "ratio_wall_to_bound": round(proc.wall_s / bound, 3) if bound else None,
            "ratio_in_run_to_bound": round(in_run / bound, 3) if bound and in_run else None,
            "peak_rss_mib": round(proc.max_rss_mib, 1),
            "app_cpu_s": round(proc.user_s + proc.sys_s, 2),
            "emulator_cpu_s": round(self.sweep.emulator_cpu_s, 2),
            "azurite_cpu_s": round(self.sweep.azurite_cpu_s, 2),
        }


@dataclass(frozen=True, slots=True)
class Measured:
    """Both runs, and how many mailboxes were not in the desired state before, between and after them."""

    report: Run
    enforce: Run
    before: int
    after_report: int
    after_enforce: int
    emulator_peak_mib: float
    emulator_startup_s: float


def _sweep(stack: SweepStack, mode: str) -> Run:
    log(f"sweep --full --mode {mode} --json")
    sweep = stack.sweep(["--full", "--mode", mode, "--json"], label=f"sweep --mode {mode}")
    proc = sweep.proc
    log(f"  {mode}: {proc.wall_s:.2f}s wall, {proc.max_rss_mib:.1f} MiB peak RSS, {sweep.calls.json()}")
    return Run(mode, sweep)


def _not_desired(mailboxes: list[dict[str, Any]]) -> int:
    # No exceptions are granted in this benchmark, so the desired state is True everywhere.
    return sum(1 for m in mailboxes if m["smtp"] is not True)


def _measure(count: int) -> Measured:
    """A tenant of `count` mailboxes: count what is out of line, sweep in report mode, then in enforce mode."""
    options = EmulatorOptions(
        mailboxes=count,
        latency_ms=LATENCY_MS,
        concurrency_limit=CONCURRENCY,
        disabled_true=DISABLED_TRUE,
        disabled_none=DISABLED_NONE,
    )
    with sweep_stack(options, exchange_concurrency=CONCURRENCY) as stack:
        emulator = stack.emulator
        log(f"emulator up in {emulator.startup_s:.1f}s")
        before = _not_desired(emulator.mailboxes())
        log(f"{before:,} of {count:,} mailboxes not in the desired state ({before / count:.1%})")
        report = _sweep(stack, "report")
        after_report = _not_desired(emulator.mailboxes())
        enforce = _sweep(stack, "enforce")
        after_enforce = _not_desired(emulator.mailboxes())
        return Measured(
            report, enforce, before, after_report, after_enforce, peak_rss_mib(emulator.pid), emulator.startup_s
        )


def _checks(measured: Measured, enforce: dict[str, Any]) -> dict[str, bool]:
    """What must hold of the run; `enforce` is the enforce run's row."""
    ratio = enforce["ratio_wall_to_bound"]
    return {
        "report_changed_nothing": measured.after_report == measured.before,
        "enforce_completed": enforce["outcome"] == "completed",
        "enforce_applied_all": enforce["applied"] == measured.before,
        "final_state_all_desired": measured.after_enforce == 0,
        "ratio_target_met": ratio is not None and ratio <= RATIO_TARGET,
        "rss_target_met": enforce["peak_rss_mib"] <= RSS_TARGET_MIB,
        "no_throttling": enforce["throttled_429"] == 0,
    }


def _print_report(measured: Measured, rows: list[dict[str, Any]], checks: dict[str, bool]) -> None:
    for columns in (RUN_COLUMNS, CPU_COLUMNS):
        print(table([header for header, _ in columns], [[r[key] for _, key in columns] for r in rows]))
    print(
        f"mailboxes not in desired state: before {measured.before:,}, after report {measured.after_report:,}, "
        f"after enforce {measured.after_enforce:,}; emulator peak RSS {measured.emulator_peak_mib:.0f} MiB"
    )
    print(f"targets: wall/bound <= {RATIO_TARGET} and peak RSS <= {RSS_TARGET_MIB:g} MiB; checks: {checks}")


def run(quick: bool = False) -> dict[str, Any]:
    count = QUICK_MAILBOXES if quick else MAILBOXES
    print(f"\n== full reconcile: {count:,} mailboxes, {LATENCY_MS:g} ms latency, concurrency limit {CONCURRENCY}")
    measured = _measure(count)
    latency_s = LATENCY_MS / 1000
    rows = [measured.report.row(latency_s), measured.enforce.row(latency_s)]
    checks = _checks(measured, rows[1])
    _print_report(measured, rows, checks)
    result = {
        "benchmark": "full_reconcile",
        "quick": quick,
        "parameters": {
            "mailboxes": count,
            "latency_ms": LATENCY_MS,
            "emulator_concurrency_limit": CONCURRENCY,
            "exchange_concurrency": CONCURRENCY,
            "disabled_true": DISABLED_TRUE,
            "disabled_none": DISABLED_NONE,
            "emulator_startup_s": round(measured.emulator_startup_s, 2),
        },
        "not_desired_before": measured.before,
        "not_desired_after_report": measured.after_report,
        "not_desired_after_enforce": measured.after_enforce,
        "emulator_peak_rss_mib": round(measured.emulator_peak_mib, 1),
        "runs": rows,
        "checks": checks,
        "targets": {"ratio_wall_to_bound": RATIO_TARGET, "peak_rss_mib": RSS_TARGET_MIB},
    }
    path = write_artifact("full-quick" if quick else "full", result)
    print(f"written {path}")
    return result
