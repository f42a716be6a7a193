"""Audit export: 100,000 change rows out of Azurite as CSV and as JSON, by `shared.cli audit export`.

Setup (not measured): Azurite, a small emulator (the app's settings need a tenant, and `init` a token),
`shared.cli init`, then `python -m benchmarks.seed_audit`, which writes the rows of five completed runs on
five UTC days through the app's own store. Measured, each as its own process, alternating the formats:

    python -m shared.cli audit export --format csv|json --output FILE

wall time from spawn to exit, peak RSS (/usr/bin/time -v), the export's CPU and Azurite's meanwhile; then
the rows in the file are counted and must be the rows seeded.
"""

from __future__ import annotations

import csv
import json
import re
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from devservices.azurite import Azurite

from .harness import (
    PYTHON,
    EmulatorOptions,
    EmulatorProcess,
    app_env,
    calibration_ms,
    cli,
    cpu_seconds,
    init_store,
    load_average,
    log,
    machine_cpu_seconds,
    other_cpu_s,
    run_measured,
    table,
    write_artifact,
)

ROWS: Final = 100_000
QUICK_ROWS: Final = 5_000
RUNS: Final = 5  # runs the rows are split among, one a UTC day
REPEATS: Final = 3
QUICK_REPEATS: Final = 1
FORMATS: Final = ("csv", "json")
SAMPLE_COLUMNS: Final = (
    ("format", "format"),
    ("repeat", "repeat"),
    ("rows", "rows"),
    ("wall s", "wall_s"),
    ("peak RSS MiB", "peak_rss_mib"),
    ("CPU s", "cpu_s"),
    ("Azurite CPU s", "azurite_cpu_s"),
    ("file MiB", "file_mib"),
    ("rows/s", "rows_per_s"),
    ("other CPU s", "other_cpu_s"),
    ("calibration ms", "calibration_ms"),
)
SUMMARY_COLUMNS: Final = (
    ("format", "format"),
    ("rows", "rows"),
    ("median wall s", "wall_s_median"),
    ("min", "wall_s_min"),
    ("max", "wall_s_max"),
    ("peak RSS MiB (max)", "peak_rss_mib_max"),
    ("CPU s (median)", "cpu_s_median"),
    ("file bytes", "file_bytes"),
    ("file MiB", "file_mib"),
)


@dataclass(frozen=True, slots=True)
class Stack:
    azurite: Azurite
    env: dict[str, str]


def _seed(env: dict[str, str], rows: int) -> dict[str, Any]:
    log(f"seeding {rows:,} change rows in {RUNS} runs (python -m benchmarks.seed_audit)")
    proc = run_measured([PYTHON, "-m", "benchmarks.seed_audit", "--rows", str(rows), "--runs", str(RUNS)], env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"seeding the audit rows failed ({proc.returncode}): {proc.stderr.strip()[-800:]}")
    seeded = dict(proc.json())
    log(f"  seeded {seeded['rows']:,} rows in {proc.wall_s:.1f}s")
    return {**seeded, "wall_s": round(proc.wall_s, 2)}


def _rows_in(path: Path, kind: str) -> int:
    """The change rows in an export file, read back in full."""
    with path.open(encoding="utf-8", newline="") as file:
        if kind == "csv":
            return sum(1 for _ in csv.reader(file)) - 1  # the header
        return len(json.load(file))


def _export(stack: Stack, kind: str, repeat: int, folder: Path) -> dict[str, Any]:
    target = folder / f"audit-{repeat}.{kind}"
    azurite_pid = stack.azurite.pid or 0
    load, calibration = load_average(), calibration_ms()
    azurite_cpu, all_cpu = cpu_seconds(azurite_pid), machine_cpu_seconds()
    proc = cli(["audit", "export", "--format", kind, "--output", str(target)], stack.env)
    all_cpu = machine_cpu_seconds() - all_cpu
    azurite_cpu = cpu_seconds(azurite_pid) - azurite_cpu
    if proc.returncode != 0:
        raise RuntimeError(f"audit export --format {kind} exited {proc.returncode}: {proc.stderr.strip()[-800:]}")
    said = re.search(r"exported (\d+) changes", proc.stderr)
    size = target.stat().st_size
    rows = _rows_in(target, kind)
    target.unlink()
    log(f"  {kind} #{repeat}: {rows:,} rows, {proc.wall_s:.2f}s wall, {proc.max_rss_mib:.1f} MiB, {size:,} bytes")
    return {
        "format": kind,
        "repeat": repeat,
        "exit_code": proc.returncode,
        "rows": rows,
        "rows_reported": int(said.group(1)) if said else None,
        "wall_s": round(proc.wall_s, 3),
        "peak_rss_mib": round(proc.max_rss_mib, 1),
        "cpu_s": round(proc.user_s + proc.sys_s, 2),
        "azurite_cpu_s": round(azurite_cpu, 2),
        "file_bytes": size,
        "file_mib": round(size / 1024 / 1024, 2),
        "rows_per_s": round(rows / proc.wall_s) if proc.wall_s else None,
        "load_average_before": load,
        "calibration_ms": calibration,
        "other_cpu_s": other_cpu_s(all_cpu, proc.user_s + proc.sys_s, azurite_cpu),
    }


def _summaries(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for kind in FORMATS:
        mine = [s for s in samples if s["format"] == kind]
        walls = [s["wall_s"] for s in mine]
        out.append(
            {
                "format": kind,
                "rows": mine[0]["rows"],
                "wall_s_median": round(statistics.median(walls), 3),
                "wall_s_min": min(walls),
                "wall_s_max": max(walls),
                "peak_rss_mib_max": max(s["peak_rss_mib"] for s in mine),
                "cpu_s_median": round(statistics.median(s["cpu_s"] for s in mine), 2),
                "file_bytes": mine[0]["file_bytes"],
                "file_mib": mine[0]["file_mib"],
            }
        )
    return out


def _measure(rows: int, repeats: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Seed `rows` into a fresh store, then export them `repeats` times in each format, alternating."""
    options = EmulatorOptions(mailboxes=10, latency_ms=0.0, concurrency_limit=0)
    with Azurite() as azurite, EmulatorProcess(options) as emulator, tempfile.TemporaryDirectory() as folder:
        stack = Stack(azurite, app_env(emulator.env, azurite.connection_string))
        init_store(stack.env)
        seeded = _seed(stack.env, rows)
        samples = [_export(stack, kind, repeat, Path(folder)) for repeat in range(1, repeats + 1) for kind in FORMATS]
    return seeded, samples


def run(quick: bool = False) -> dict[str, Any]:
    rows, repeats = (QUICK_ROWS, QUICK_REPEATS) if quick else (ROWS, REPEATS)
    print(f"\n== audit export: {rows:,} change rows in {RUNS} runs, {repeats} export(s) per format")
    seeded, samples = _measure(rows, repeats)
    summaries = _summaries(samples)
    for columns, of in ((SAMPLE_COLUMNS, samples), (SUMMARY_COLUMNS, summaries)):
        print(table([header for header, _ in columns], [[r[key] for _, key in columns] for r in of]))
    checks = {
        "every_export_complete": all(s["rows"] == seeded["rows"] == s["rows_reported"] for s in samples),
        "every_export_exit_0": all(s["exit_code"] == 0 for s in samples),
    }
    print(f"checks: {checks}")
    result = {
        "benchmark": "audit_export",
        "quick": quick,
        "parameters": {"rows": rows, "runs": RUNS, "repeats": repeats, "formats": list(FORMATS)},
        "seeded": seeded,
        "samples": samples,
        "summary": summaries,
        "checks": checks,
    }
    path = write_artifact("export-quick" if quick else "export", result)
    print(f"written {path}")
    return result
