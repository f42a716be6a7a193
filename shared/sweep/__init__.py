"""The reconcile loop: `planner` (pure: desired against actual state), `engine` (one run: marker,
lease, read, plan, record or apply, audit) and `applier` (the changes in $batch calls, audited)."""
