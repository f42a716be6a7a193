"""What OAuth-only exceptions cost a sweep: 10,000 mailboxes, 500 OAuth-only exceptions.

The emulator seeded with 10,000 mailboxes (30 ms latency, limit 4) and the app's authentication
policy; 500 user mailboxes granted OAuth-only exceptions through `exceptions import`; a full enforce
sweep with OAUTH_ONLY_POLICY=off sets their SMTP AUTH and the watermark. Then one incremental
enforce sweep with OAUTH_ONLY_POLICY=enforce assigns the policy to the 500 users, and the steady
state is measured: incremental enforce sweeps, `off` and `enforce` in turn, REPEATS pairs, with
nothing left to change. Its cost is the read of every OAuth-only user's policy, ceil(500/10) Get-User
$batch calls, and two reads of the policies: target ceil(exceptions/10) + 2 calls more than `off`.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Final

from shared.model.auth_policy import APP_POLICY_NAME

from .harness import EmulatorOptions, Sweep, SweepStack, cli, log, sweep_duration_s, sweep_stack, table, write_artifact

MAILBOXES: Final = 10_000
EXCEPTIONS: Final = 500
REPEATS: Final = 5
QUICK: Final = (2_000, 100, 2)
LATENCY_MS: Final = 30.0
CONCURRENCY: Final = 4


def _grant(stack: SweepStack, count: int) -> list[str]:
    users = [m for m in stack.emulator.mailboxes() if m.get("type", "UserMailbox") == "UserMailbox"][:count]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["mailbox", "days", "reason", "auth"])
    writer.writerows([m["address"], 60, "scanner moved to OAuth", "oauth"] for m in users)
    with tempfile.TemporaryDirectory(prefix="bench-oauth-") as folder:
        path = Path(folder) / "import.csv"
        path.write_text(text.getvalue(), encoding="utf-8")
        proc = cli(["exceptions", "import", "--csv", str(path)], stack.env)
    if proc.returncode != 0:
        raise RuntimeError(f"exceptions import exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return [m["guid"] for m in users]


def _with(stack: SweepStack, mode: str) -> SweepStack:
    return replace(stack, env={**stack.env, "OAUTH_ONLY_POLICY": mode, "MAX_CHANGES_PER_RUN": "1000000"})


def _row(label: str, sweep: Sweep) -> dict[str, Any]:
    return {
        "label": label,
        "wall_s": round(sweep.proc.wall_s, 2),
        "in_run_s": sweep_duration_s(sweep.summary),
        "cpu_s": round(sweep.proc.user_s + sweep.proc.sys_s, 2),
        "exchange_calls": sweep.calls.exchange_calls,
        "applied": sweep.summary["applied"],
    }


def run(quick: bool = False) -> dict[str, Any]:
    mailboxes, exceptions, repeats = QUICK if quick else (MAILBOXES, EXCEPTIONS, REPEATS)
    print(f"\n== OAuth-only exceptions: {mailboxes:,} mailboxes, {exceptions:,} OAuth-only exceptions")
    options = EmulatorOptions(mailboxes=mailboxes, latency_ms=LATENCY_MS, concurrency_limit=CONCURRENCY)
    with sweep_stack(options, exchange_concurrency=CONCURRENCY) as stack:
        org = stack.emulator.control("GET", "org")
        policies = [*org.get("authentication_policies", []), {"Name": APP_POLICY_NAME, "AllowBasicAuthSmtp": False}]
        stack.emulator.control("PUT", "org", {"authentication_policies": policies})
        granted = _grant(stack, exceptions)
        log(f"granted {len(granted)} OAuth-only exceptions")
        _with(stack, "off").sweep(["--full", "--mode", "enforce", "--json"], label="full sweep (off)")
        first = _with(stack, "enforce").sweep(["--mode", "enforce", "--json"], label="first enforce sweep")
        log(f"  first enforce sweep: applied {first.summary['applied']}, {first.proc.wall_s:.1f}s")
        pairs: list[tuple[dict[str, Any], dict[str, Any]]] = []
        for n in range(repeats):
            off = _with(stack, "off").sweep(["--mode", "enforce", "--json"], label=f"off {n}")
            on = _with(stack, "enforce").sweep(["--mode", "enforce", "--json"], label=f"enforce {n}")
            pairs.append((_row("off", off), _row("enforce", on)))
            log(f"  pair {n}: off {off.proc.wall_s:.2f}s, enforce {on.proc.wall_s:.2f}s")
    result = _summarise(mailboxes, exceptions, _row("first enforce", first), pairs)
    _print(result)
    path = write_artifact("oauth-only-quick" if quick else "oauth-only", {"benchmark": "oauth-only", **result})
    print(f"written {path}")
    return result


def _summarise(
    mailboxes: int, exceptions: int, first: dict[str, Any], pairs: list[tuple[dict[str, Any], dict[str, Any]]]
) -> dict[str, Any]:
    def median(side: int, key: str) -> float:
        return round(statistics.median(pair[side][key] for pair in pairs), 2)

    extra_calls = [on["exchange_calls"] - off["exchange_calls"] for off, on in pairs]
    return {
        "mailboxes": mailboxes,
        "exceptions": exceptions,
        "first_enforce": first,
        "off_wall_s_median": median(0, "wall_s"),
        "enforce_wall_s_median": median(1, "wall_s"),
        "wall_ratio_median": round(statistics.median(on["wall_s"] / off["wall_s"] for off, on in pairs), 2),
        "off_cpu_s_median": median(0, "cpu_s"),
        "enforce_cpu_s_median": median(1, "cpu_s"),
        "extra_calls": extra_calls,
        "target_extra_calls": math.ceil(exceptions / 10) + 2,
        "steady_state_applied": sum(on["applied"] for _, on in pairs),
        "pairs": pairs,
    }


def _print(result: dict[str, Any]) -> None:
    print()
    headers = ("", "wall s (median)", "CPU s (median)", "extra Exchange calls", "target", "applied")
    rows = [
        ["off", result["off_wall_s_median"], result["off_cpu_s_median"], 0, "", 0],
        [
            "enforce",
            result["enforce_wall_s_median"],
            result["enforce_cpu_s_median"],
            max(result["extra_calls"]),
            result["target_extra_calls"],
            result["steady_state_applied"],
        ],
    ]
    print(table(headers, rows))
    first = result["first_enforce"]
    print(f"first enforce sweep: {first['applied']} applied in {first['wall_s']}s ({first['exchange_calls']} calls)")
    print(f"enforce/off wall ratio, median of the pairs: {result['wall_ratio_median']}")
