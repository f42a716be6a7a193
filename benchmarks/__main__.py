"""`python -m benchmarks [--only full|incremental|coldstart|submission|export|rollout|oauth] [--quick]`.

Runs the benchmarks, prints a table for each and writes .artifacts/bench-*.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

from .harness import machine


def _runners() -> dict[str, Callable[[bool], dict[str, Any]]]:
    from . import audit_export, cold_start, full_reconcile, incremental, oauth_only, rollout, submission

    return {
        "full": full_reconcile.run,
        "incremental": incremental.run,
        "coldstart": cold_start.run,
        "submission": submission.run,
        "export": audit_export.run,
        "rollout": rollout.run,
        "oauth": oauth_only.run,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "--only",
        choices=("full", "incremental", "coldstart", "submission", "export", "rollout", "oauth"),
        help="run one benchmark",
    )
    parser.add_argument("--quick", action="store_true", help="a small smoke version (minutes, not tens of minutes)")
    args = parser.parse_args(argv)
    runners = _runners()
    names = [args.only] if args.only else list(runners)
    info = machine()
    print(
        f"machine: {info['nproc']} CPUs ({info['cpu_model']}), {info['mem_total_gib']} GiB RAM, "
        f"Python {info['python']}; {'quick' if args.quick else 'full-size'} run of {', '.join(names)}"
    )
    started = time.perf_counter()
    for name in names:
        runners[name](args.quick)
    print(f"\nbenchmarks finished in {time.perf_counter() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
