"""Full reconcile: 100,000 mailboxes, ~20% not in the desired state, 30 ms latency, 4 concurrent calls.

Measures `python -m shared.cli sweep --full --mode enforce --json` (and the same in report mode) against a
bound derived from the emulated latency alone: listing pages are sequential, batches run 4 at a time, so

    bound = pages x latency + batches x latency / 4

and wall / bound says how much the app (and everything else on the machine) adds on top.

The floor (benchmarks/floor.py) then makes the enforce run's Exchange calls from a minimal client, as its own
process, against a second emulator started with the same seed and options (so the same tenant: checked on
its GUIDs and values), with no storage at all; app wall / floor wall says what the app adds over the calls
themselves. The floor's call log must match the app's: the same pages, Get-TransportConfig and $batch calls.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Final

from .harness import (
    PYTHON,
    CallCounts,
    EmulatorOptions,
    EmulatorProcess,
    ProcResult,
    Sweep,
    SweepStack,
    base_env,
    calibration_ms,
    count_calls,
    cpu_seconds,
    load_average,
    log,
    machine_cpu_seconds,
    other_cpu_s,
    peak_rss_mib,
    run_measured,
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
FLOOR_RATIO_TARGET: Final = 1.3  # app wall / floor wall, enforce run
RSS_TARGET_MIB: Final = 150.0
# (header, key of a run's row) for the tables printed
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
    ("other CPU s", "other_cpu_s"),
)
# The enforce run beside the floor: (header, key) of the rows of `_floor_rows`
FLOOR_COLUMNS: Final = (
    ("run", "run"),
    ("wall s", "wall_s"),
    ("wall/bound", "ratio_wall_to_bound"),
    ("in-run s", "in_run_s"),
    ("CPU s", "cpu_s"),
    ("peak RSS MiB", "peak_rss_mib"),
    ("Exchange calls", "exchange_calls"),
    ("pages", "pages"),
    ("batches", "batches"),
    ("sub-requests", "batch_items"),
    ("429s", "throttled_429"),
    ("listing s", "listing_window_s"),
    ("$batch phase s", "batch_window_s"),
    ("$batch in flight", "batches_in_flight_mean"),
    ("emulator CPU s", "emulator_cpu_s"),
    ("other CPU s", "other_cpu_s"),
    ("calibration ms", "calibration_ms"),
)


@dataclass(frozen=True, slots=True)
class Run:
    mode: str
    sweep: Sweep
    load_before: float  # 1-minute load average as the sweep started
    calibration_ms: float  # the VM's speed just before (harness.calibration_ms)

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
            **_phases(self.sweep.entries),
            "bound_s": round(bound, 3),
            "wall_s": round(proc.wall_s, 3),
            "in_run_s": None if in_run is None else round(in_run, 3),
            "ratio_wall_to_bound": round(proc.wall_s / bound, 3) if bound else None,
            "ratio_in_run_to_bound": round(in_run / bound, 3) if bound and in_run else None,
            "peak_rss_mib": round(proc.max_rss_mib, 1),
            "app_cpu_s": round(proc.user_s + proc.sys_s, 2),
            "emulator_cpu_s": round(self.sweep.emulator_cpu_s, 2),
            "azurite_cpu_s": round(self.sweep.azurite_cpu_s, 2),
            "load_average_before": self.load_before,
            "calibration_ms": self.calibration_ms,
            "other_cpu_s": other_cpu_s(
                self.sweep.machine_cpu_s, proc.user_s + proc.sys_s, self.sweep.emulator_cpu_s, self.sweep.azurite_cpu_s
            ),
        }


@dataclass(frozen=True, slots=True)
class Measured:
    """Both runs, and how many mailboxes were not in the desired state before, between and after them."""

    report: Run
    enforce: Run
    # Two incremental report runs after it: the first indexes the enforce run's changes by mailbox
    # (a sweep leaves that to the next run), the second has nothing to index.
    next_runs: tuple[Run, Run]
    before: int
    before_digest: str  # of every mailbox's GUID and value before the runs, to check the floor's tenant
    after_report: int
    after_enforce: int
    emulator_peak_mib: float
    emulator_startup_s: float


def _sweep(stack: SweepStack, mode: str, label: str = "", full: bool = True) -> Run:
    args = ["--full"] * full + ["--mode", mode, "--json"]
    log(f"sweep {' '.join(args)}")
    load, calibration = load_average(), calibration_ms()
    sweep = stack.sweep(args, label=f"sweep {' '.join(args)}")
    proc = sweep.proc
    log(f"  {label or mode}: {proc.wall_s:.2f}s wall, {proc.max_rss_mib:.1f} MiB peak RSS, {sweep.calls.json()}")
    return Run(label or mode, sweep, load, calibration)


def _not_desired(mailboxes: list[dict[str, Any]]) -> int:
    # No exceptions are granted in this benchmark, so the desired state is True everywhere.
    return sum(1 for m in mailboxes if m["smtp"] is not True)


def _phases(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """From the emulator's call log: how long the listing and the $batch phase took on the server's clock,
    and how many $batch calls were in flight on average (CONCURRENCY would keep every slot busy)."""
    pages = [e for e in entries if e.get("kind") == "invoke" and e.get("cmdlet") == "Get-CASMailbox"]
    batches = [e for e in entries if e.get("kind") == "batch"]

    def window(of: list[dict[str, Any]]) -> float:
        return max(e["t_end"] for e in of) - min(e["t"] for e in of) if of else 0.0

    apply_s = window(batches)
    busy = sum(e["t_end"] - e["t"] for e in batches)
    return {
        "listing_window_s": round(window(pages), 3),
        "batch_window_s": round(apply_s, 3),
        "batches_in_flight_mean": round(busy / apply_s, 2) if apply_s else None,
    }


def _digest(mailboxes: list[dict[str, Any]]) -> str:
    """One hash of every mailbox's GUID and SMTP AUTH value: equal digests, the same tenant to reconcile."""
    text = "\n".join(sorted(f"{m['guid']}={m['smtp']}" for m in mailboxes))
    return hashlib.sha256(text.encode()).hexdigest()


def _options(count: int) -> EmulatorOptions:
    return EmulatorOptions(
        mailboxes=count,
        latency_ms=LATENCY_MS,
        concurrency_limit=CONCURRENCY,
        disabled_true=DISABLED_TRUE,
        disabled_none=DISABLED_NONE,
    )


def _measure(count: int) -> Measured:
    """A tenant of `count` mailboxes: count what is out of line, sweep in report mode, then in enforce mode."""
    with sweep_stack(_options(count), exchange_concurrency=CONCURRENCY) as stack:
        emulator = stack.emulator
        log(f"emulator up in {emulator.startup_s:.1f}s")
        mailboxes = emulator.mailboxes()
        before, digest = _not_desired(mailboxes), _digest(mailboxes)
        del mailboxes
        log(f"{before:,} of {count:,} mailboxes not in the desired state ({before / count:.1%})")
        report = _sweep(stack, "report")
        after_report = _not_desired(emulator.mailboxes())
        enforce = _sweep(stack, "enforce")
        after_enforce = _not_desired(emulator.mailboxes())
        indexing = _sweep(stack, "report", "next run (indexes)", full=False)
        again = _sweep(stack, "report", "next run again", full=False)
        return Measured(
            report,
            enforce,
            (indexing, again),
            before,
            digest,
            after_report,
            after_enforce,
            peak_rss_mib(emulator.pid),
            emulator.startup_s,
        )


# -- the floor ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FloorRun:
    """One measured `python -m benchmarks.floor` against its own emulator, and what that emulator saw."""

    proc: ProcResult
    result: dict[str, Any]  # the floor's JSON line ({} if it failed)
    entries: list[dict[str, Any]]  # its emulator's call log
    calls: CallCounts
    emulator_cpu_s: float
    digest: str  # of its tenant before the run
    before: int
    after: int
    load_before: float
    calibration_ms: float
    machine_cpu_s: float  # every process on the machine, over the floor's run

    def row(self, latency_s: float) -> dict[str, Any]:
        proc, calls = self.proc, self.calls
        bound = calls.pages * latency_s + calls.batches * latency_s / CONCURRENCY
        return {
            "exit_code": proc.returncode,
            **self.result,
            **calls.json(),
            **_phases(self.entries),
            "bound_s": round(bound, 3),
            "wall_s": round(proc.wall_s, 3),
            "ratio_wall_to_bound": round(proc.wall_s / bound, 3) if bound else None,
            "peak_rss_mib": round(proc.max_rss_mib, 1),
            "cpu_s": round(proc.user_s + proc.sys_s, 2),
            "emulator_cpu_s": round(self.emulator_cpu_s, 2),
            "not_desired_before": self.before,
            "not_desired_after": self.after,
            "load_average_before": self.load_before,
            "calibration_ms": self.calibration_ms,
            "other_cpu_s": other_cpu_s(self.machine_cpu_s, proc.user_s + proc.sys_s, self.emulator_cpu_s),
        }


def _measure_floor(count: int) -> FloorRun:
    """The floor against a fresh emulator with the app's seed and options: the app's tenant before its runs."""
    with EmulatorProcess(_options(count)) as emulator:
        log(f"floor's emulator up in {emulator.startup_s:.1f}s")
        mailboxes = emulator.mailboxes()
        before, digest = _not_desired(mailboxes), _digest(mailboxes)
        del mailboxes
        emulator.clear_calls()
        env = {**base_env(), **emulator.env, "EXCHANGE_CONCURRENCY": str(CONCURRENCY)}
        log("python -m benchmarks.floor")
        load, calibration = load_average(), calibration_ms()
        emu_cpu, all_cpu = cpu_seconds(emulator.pid), machine_cpu_seconds()
        proc = run_measured([PYTHON, "-m", "benchmarks.floor"], env=env, timeout=1800)
        all_cpu = machine_cpu_seconds() - all_cpu
        emu_cpu = cpu_seconds(emulator.pid) - emu_cpu
        if proc.returncode != 0:
            log(f"  the floor exited {proc.returncode}: {proc.stderr.strip()[-800:]}")
        result = proc.json() if proc.returncode == 0 else {}
        entries = emulator.calls()
        calls = count_calls(entries)
        after = _not_desired(emulator.mailboxes())
        log(f"  floor: {proc.wall_s:.2f}s wall, {proc.user_s + proc.sys_s:.2f} CPU s, {calls.json()}")
        return FloorRun(proc, result, entries, calls, emu_cpu, digest, before, after, load, calibration, all_cpu)


def _floor_rows(app: dict[str, Any], floor: dict[str, Any]) -> list[dict[str, Any]]:
    """The enforce run, the floor and their ratios, as rows of FLOOR_COLUMNS."""
    app_row = {"run": "app (enforce)", **app, "cpu_s": app["app_cpu_s"]}
    floor_row = {"run": "floor", **floor}
    ratio: dict[str, Any] = {"run": "app / floor"}
    for key in ("wall_s", "in_run_s", "cpu_s", "peak_rss_mib", "listing_window_s", "batch_window_s", "emulator_cpu_s"):
        a, f = app_row.get(key), floor_row.get(key)
        ratio[key] = round(a / f, 3) if a and f else None
    return [app_row, floor_row, ratio]


def _vs_floor(app: dict[str, Any], floor: dict[str, Any]) -> dict[str, Any]:
    """The figures the issue asks for: app wall / floor wall, and the CPU seconds of both."""
    return {
        "app_wall_s": app["wall_s"],
        "floor_wall_s": floor["wall_s"],
        "ratio_wall_to_floor": round(app["wall_s"] / floor["wall_s"], 3) if floor["wall_s"] else None,
        "app_cpu_s": app["app_cpu_s"],
        "floor_cpu_s": floor["cpu_s"],
        "app_peak_rss_mib": app["peak_rss_mib"],
        "floor_peak_rss_mib": floor["peak_rss_mib"],
        "app_exchange_calls": app["exchange_calls"],
        "floor_exchange_calls": floor["exchange_calls"],
    }


def _floor_checks(measured: Measured, floor: FloorRun, enforce: dict[str, Any]) -> dict[str, bool]:
    """The floor reconciled the same tenant with the same calls, and what the target says of the ratio."""
    app_calls, floor_calls = measured.enforce.sweep.calls, floor.calls
    same = ("pages", "batches", "batch_items", "other_invokes", "throttled")
    ratio = enforce["wall_s"] / floor.proc.wall_s if floor.proc.wall_s else None
    return {
        "floor_completed": floor.proc.returncode == 0 and floor.result.get("applied") == measured.before,
        "floor_same_initial_state": floor.digest == measured.before_digest,
        "floor_same_calls": all(getattr(app_calls, k) == getattr(floor_calls, k) for k in same),
        "floor_final_state_all_desired": floor.after == 0,
        "floor_ratio_target_met": ratio is not None and ratio <= FLOOR_RATIO_TARGET,
    }


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


def _print_report(
    measured: Measured, rows: list[dict[str, Any]], floor_rows: list[dict[str, Any]], checks: dict[str, bool]
) -> None:
    for columns, of in ((RUN_COLUMNS, rows), (CPU_COLUMNS, rows), (FLOOR_COLUMNS, floor_rows)):
        print(table([header for header, _ in columns], [[_shown(r.get(key)) for _, key in columns] for r in of]))
    print(
        f"mailboxes not in desired state: before {measured.before:,}, after report {measured.after_report:,}, "
        f"after enforce {measured.after_enforce:,}; emulator peak RSS {measured.emulator_peak_mib:.0f} MiB"
    )
    print(
        f"targets: wall/bound <= {RATIO_TARGET}, app wall / floor wall <= {FLOOR_RATIO_TARGET} and peak RSS "
        f"<= {RSS_TARGET_MIB:g} MiB; checks: {checks}"
    )


def _shown(value: Any) -> Any:
    return "" if value is None else value


def run(quick: bool = False) -> dict[str, Any]:
    count = QUICK_MAILBOXES if quick else MAILBOXES
    print(f"\n== full reconcile: {count:,} mailboxes, {LATENCY_MS:g} ms latency, concurrency limit {CONCURRENCY}")
    measured = _measure(count)
    floor = _measure_floor(count)
    latency_s = LATENCY_MS / 1000
    rows = [measured.report.row(latency_s), measured.enforce.row(latency_s)]
    rows += [run.row(latency_s) for run in measured.next_runs]
    floor_row = floor.row(latency_s)
    checks = {**_checks(measured, rows[1]), **_floor_checks(measured, floor, rows[1])}
    _print_report(measured, rows, _floor_rows(rows[1], floor_row), checks)
    result = _result(quick, count, measured, rows, floor_row, checks)
    path = write_artifact("full-quick" if quick else "full", result)
    print(f"written {path}")
    return result


def _result(
    quick: bool,
    count: int,
    measured: Measured,
    rows: list[dict[str, Any]],
    floor_row: dict[str, Any],
    checks: dict[str, bool],
) -> dict[str, Any]:
    return {
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
        "floor": floor_row,
        "vs_floor": _vs_floor(rows[1], floor_row),
        "checks": checks,
        "targets": {
            "ratio_wall_to_bound": RATIO_TARGET,
            "ratio_wall_to_floor": FLOOR_RATIO_TARGET,
            "peak_rss_mib": RSS_TARGET_MIB,
        },
    }
