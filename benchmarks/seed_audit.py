"""`python -m benchmarks.seed_audit --rows N --runs K`: change rows in the app's store, written by the app's code.

The setup step of the export benchmark (benchmarks/audit_export.py), not measured. It runs as a child with the
app's settings (AzureWebJobsStorage and the emulator's env), after `shared.cli init`, and writes what K
completed enforce runs would have left: N change rows split evenly among the runs through
`Store.audit.append` (so in transactions of up to 100, with the day index rows), and a summary row per run.
Run k is dated k days before the last one, at 02:30 UTC (the nightly reconcile), one change every 10 ms.
Mailboxes and values come from a seeded generator. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from shared.bootstrap import open_store
from shared.microsoft.identity import build_credential
from shared.model.actor import Actor
from shared.model.mailbox import Change, ChangeReason
from shared.model.runs import AuditEntry, RunOutcome, RunSummary, new_run_id
from shared.settings import load_settings
from shared.storage import Store

CHUNK: Final = 1_000  # entries per append call; append splits them into transactions of 100
PARALLEL: Final = 4  # append calls in flight
SEED: Final = 42


def _entries(run_id: str, started: datetime, count: int, actor: Actor, rng: random.Random) -> list[AuditEntry]:
    """`count` changes of one run: half from null, half from False (drift), all to True."""
    entries = []
    for i in range(count):
        guid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        before, reason = (None, ChangeReason.NULL) if rng.random() < 0.5 else (False, ChangeReason.DRIFT)
        change = Change(guid, f"user-{guid[:8]}@contoso.onmicrosoft.com", before, True, reason)
        entries.append(AuditEntry(run_id, change, actor, started + timedelta(milliseconds=10 * i), run_id))
    return entries


def _summary(run_id: str, tenant_id: str, started: datetime, entries: Sequence[AuditEntry], actor: Actor) -> RunSummary:
    by_reason: dict[str, int] = {}
    for e in entries:
        by_reason[e.change.reason.value] = by_reason.get(e.change.reason.value, 0) + 1
    return RunSummary(
        run_id=run_id,
        tenant_id=tenant_id,
        mode="enforce",
        full=True,
        started_at=started,
        outcome=RunOutcome.COMPLETED,
        finished_at=entries[-1].at if entries else started,
        actor=actor,
        scanned=len(entries) * 5,
        planned=len(entries),
        applied=len(entries),
        plan_id=run_id,
        org_smtp_auth_disabled=True,
        message=f"applied {len(entries)} changes",
        by_reason=by_reason,
    )


async def _write(store: Store, entries: list[AuditEntry]) -> None:
    gate = asyncio.Semaphore(PARALLEL)

    async def chunk(start: int) -> None:
        async with gate:
            await store.audit.append(entries[start : start + CHUNK])

    await asyncio.gather(*(chunk(start) for start in range(0, len(entries), CHUNK)))


async def seed(rows: int, runs: int) -> dict[str, Any]:
    settings = load_settings()
    actor = Actor(object_id=str(uuid.uuid5(uuid.NAMESPACE_URL, "bench-actor")), app_id=settings.client_id or "")
    rng = random.Random(SEED)
    last = datetime.now(UTC).replace(hour=2, minute=30, second=0, microsecond=0)
    credential = build_credential()  # unused with a connection string; open_store takes one
    written: list[dict[str, Any]] = []
    try:
        async with open_store(settings, credential) as store:
            for k in range(runs):
                started = last - timedelta(days=runs - 1 - k)
                run_id = new_run_id(started)
                count = rows // runs + (1 if k < rows % runs else 0)
                entries = _entries(run_id, started, count, actor, rng)
                await _write(store, entries)
                await store.audit.write_summary(_summary(run_id, settings.tenant_id, started, entries, actor))
                written.append({"run_id": run_id, "rows": count})
    finally:
        await credential.close()  # type: ignore[attr-defined]
    return {"rows": sum(r["rows"] for r in written), "runs": written}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.seed_audit", description=__doc__)
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    result = asyncio.run(seed(args.rows, args.runs))
    print(json.dumps({**result, "seconds": round(time.perf_counter() - started, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
