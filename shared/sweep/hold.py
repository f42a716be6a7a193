"""Pause and resume: the enforcement hold that stops every sweep from applying, audited both ways.

While the hold stands, sweeps plan and report but apply nothing, a running apply stops before its
next batch, and the watermarks stay. Approvals and revocations still act on their one mailbox.
"""

from __future__ import annotations

from datetime import datetime

from shared.model.actor import Actor
from shared.model.hold import Hold
from shared.model.runs import new_run_id
from shared.storage import Store

MAX_REASON = 500


async def pause(store: Store, tenant_id: str, actor: Actor, reason: str, now: datetime) -> tuple[Hold, bool]:
    """Set the hold; when one stands already it is kept as it is. Returns it and whether it is new."""
    await store.state.require_current(tenant_id)
    hold, new = await store.state.set_hold(Hold(held_by=str(actor), reason=reason, held_at=now))
    if new:
        await store.audit.record_hold(f"pause-{new_run_id(now)}", "pause", hold, actor, now)
    return hold, new


async def resume(store: Store, tenant_id: str, actor: Actor, now: datetime) -> Hold | None:
    """Lift the hold; returns the one lifted, or None when there was none (nothing to audit then)."""
    await store.state.require_current(tenant_id)
    lifted = await store.state.lift_hold()
    if lifted is not None:
        await store.audit.record_hold(f"resume-{new_run_id(now)}", "resume", lifted, actor, now)
    return lifted
