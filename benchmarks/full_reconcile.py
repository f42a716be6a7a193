"""Full reconcile: 100,000 mailboxes, ~20% not in the desired state, 30 ms latency, 4 concurrent calls.

Measures `python -m shared.cli sweep --full --mode enforce --json` (and the same in report mode) against a
bound derived from the emulated latency alone: listing pages are sequential, batches run 4 at a time, so

    bound = pages x latency + batches x latency / 4

and wall / bound says how much the app (and everything else on the machine) adds on top.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from devservices.azurite import Azurite

from .harness import (
    EmulatorOptions,
    EmulatorProcess,
    ProcResult,
    app_env,
    cli,
    count_calls,
    cpu_seconds,
    init_store,
    log,
    peak_rss_mib,
    sweep_duration_s,
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


@dataclass(frozen=True, slots=True)
class Run:
    mode: str
    proc: ProcResult
    summary: dict[str, Any]
    calls: dict[str, int]
    emulator_cpu_s: float
    azurite_cpu_s: float

    def row(self, latency_s: float) -> dict[str, Any]:
        pages, batches = self.calls["pages"], self.calls["batches"]
        bound = pages * latency_s + batches * latency_s / CONCURRENCY
        in_run = sweep_duration_s(self.summary)
        return {
            "mode": self.mode,
            "exit_code": self.proc.returncode,
            "outcome": self.summary.get("outcome"),
            "scanned": self.summary.get("scanned"),
            "planned": self.summary.get("planned"),
            "applied": self.summary.get("applied"),
            "failed": self.summary.get("failed"),
            **self.calls,
            "bound_s": round(bound, 3),
            "wall_s": round(self.proc.wall_s, 3),
            "in_run_s": None if in_run is None else round(in_run, 3),
            "ratio_wall_to_bound": round(self.proc.wall_s / bound, 3) if bound else None,
            "ratio_in_run_to_bound": round(in_run / bound, 3) if bound and in_run else None,
            "peak_rss_mib": round(self.proc.max_rss_mib, 1),
            "app_cpu_s": round(self.proc.user_s + self.proc.sys_s, 2),
            "emulator_cpu_s": round(self.emulator_cpu_s, 2),
            "azurite_cpu_s": round(self.azurite_cpu_s, 2),
        }


def _sweep(mode: str, env: dict[str, str], emulator: EmulatorProcess, azurite_pid: int) -> Run:
    emulator.clear_calls()
    emu_cpu, az_cpu = cpu_seconds(emulator.pid), cpu_seconds(azurite_pid)
    log(f"sweep --full --mode {mode} --json")
    proc = cli(["sweep", "--full", "--mode", mode, "--json"], env)
    emu_cpu, az_cpu = cpu_seconds(emulator.pid) - emu_cpu, cpu_seconds(azurite_pid) - az_cpu
    if proc.returncode != 0:
        raise RuntimeError(f"sweep --mode {mode} exited {proc.returncode}: {proc.stderr.strip()[-800:]}")
    summary = proc.json()
    calls = count_calls(emulator.calls()).json()
    log(f"  {mode}: {proc.wall_s:.2f}s wall, {proc.max_rss_mib:.1f} MiB peak RSS, {calls}")
    return Run(mode, proc, summary, calls, emu_cpu, az_cpu)


def _not_desired(mailboxes: list[dict[str, Any]]) -> int:
    # No exceptions are granted in this benchmark, so the desired state is True everywhere.
    return sum(1 for m in mailboxes if m["smtp"] is not True)


def run(quick: bool = False) -> dict[str, Any]:
    count = QUICK_MAILBOXES if quick else MAILBOXES
    latency_s = LATENCY_MS / 1000
    options = EmulatorOptions(
        mailboxes=count,
        latency_ms=LATENCY_MS,
        concurrency_limit=CONCURRENCY,
        disabled_true=DISABLED_TRUE,
        disabled_none=DISABLED_NONE,
    )
    print(f"\n== full reconcile: {count:,} mailboxes, {LATENCY_MS:g} ms latency, concurrency limit {CONCURRENCY}")
    with Azurite() as azurite, EmulatorProcess(options) as emulator:
        azurite_pid = azurite._process.pid if azurite._process else 0
        log(f"emulator up in {emulator.startup_s:.1f}s")
        before = _not_desired(emulator.mailboxes())
        log(f"{before:,} of {count:,} mailboxes not in the desired state ({before / count:.1%})")
        env = app_env(emulator.env, azurite.connection_string, EXCHANGE_CONCURRENCY=str(CONCURRENCY))
        init_store(env)
        report = _sweep("report", env, emulator, azurite_pid)
        still = _not_desired(emulator.mailboxes())
        enforce = _sweep("enforce", env, emulator, azurite_pid)
        after = _not_desired(emulator.mailboxes())
        emulator_peak = peak_rss_mib(emulator.pid)

    rows = [report.row(latency_s), enforce.row(latency_s)]
    e = rows[1]
    checks = {
        "report_changed_nothing": still == before,
        "enforce_completed": e["outcome"] == "completed",
        "enforce_applied_all": e["applied"] == before,
        "final_state_all_desired": after == 0,
        "ratio_target_met": e["ratio_wall_to_bound"] is not None and e["ratio_wall_to_bound"] <= RATIO_TARGET,
        "rss_target_met": e["peak_rss_mib"] <= RSS_TARGET_MIB,
        "no_throttling": e["throttled_429"] == 0,
    }
    print(
        table(
            [
                "mode",
                "scanned",
                "changes",
                "pages",
                "batches",
                "429s",
                "bound s",
                "wall s",
                "in-run s",
                "wall/bound",
                "peak RSS MiB",
            ],
            [
                [
                    r["mode"],
                    r["scanned"],
                    r["planned"],
                    r["pages"],
                    r["batches"],
                    r["throttled_429"],
                    r["bound_s"],
                    r["wall_s"],
                    r["in_run_s"],
                    r["ratio_wall_to_bound"],
                    r["peak_rss_mib"],
                ]
                for r in rows
            ],
        )
    )
    print(
        table(
            ["mode", "app CPU s", "emulator CPU s", "Azurite CPU s"],
            [[r["mode"], r["app_cpu_s"], r["emulator_cpu_s"], r["azurite_cpu_s"]] for r in rows],
        )
    )
    print(
        f"mailboxes not in desired state: before {before:,}, after report {still:,}, after enforce {after:,}; "
        f"emulator peak RSS {emulator_peak:.0f} MiB"
    )
    print(f"targets: wall/bound <= {RATIO_TARGET} and peak RSS <= {RSS_TARGET_MIB:g} MiB; checks: {checks}")
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
            "emulator_startup_s": round(emulator.startup_s, 2),
        },
        "not_desired_before": before,
        "not_desired_after_report": still,
        "not_desired_after_enforce": after,
        "emulator_peak_rss_mib": round(emulator_peak, 1),
        "runs": rows,
        "checks": checks,
        "targets": {"ratio_wall_to_bound": RATIO_TARGET, "peak_rss_mib": RSS_TARGET_MIB},
    }
    path = write_artifact("full-quick" if quick else "full", result)
    print(f"written {path}")
    return result
