"""Azure Table Storage: one repository per aggregate, opened together as one `Store`.

- `tables`      table names, every partition and row key, size limits, SDK-error translation
- `state`       the install marker, the CSRF key, the sweep watermarks and the lease
- `exceptions`  exception records: the one grant path and the one revoke path
- `plans`       report runs' plans, for review and `--confirm-plan`
- `audit`       one row per change made, and each run's summary; the index by day
- `intents`     what a run is about to change, so that a crash loses no audit row
- `requests`    exception requests with their mailbox and requester reservations
- `outbox`      notifications, with the requesters' daily approval slots
"""

from shared.storage.outbox import NoticeRef
from shared.storage.state import InstallMarker, InstallStep, Lease, SweepState
from shared.storage.store import Store
from shared.storage.tables import TABLES

__all__ = ["TABLES", "InstallMarker", "InstallStep", "Lease", "NoticeRef", "Store", "SweepState"]
