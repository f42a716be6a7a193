"""Local Microsoft 365 tenant emulator (Entra token endpoint, Exchange admin REST, Graph, Teams webhook).

Test and benchmark tooling only: it is not deployed. The app reaches it only through settings.
Names are loaded lazily so that `emulator.certs` can be used before aiohttp is imported.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .calllog import CallLog
    from .faults import Faults
    from .server import EmulatorServer, build_app
    from .tenant import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, DEFAULT_TENANT_ID, Mailbox, Tenant, User

_EXPORTS = {
    "CallLog": "calllog",
    "Faults": "faults",
    "EmulatorServer": "server",
    "build_app": "server",
    "DEFAULT_CLIENT_ID": "tenant",
    "DEFAULT_CLIENT_SECRET": "tenant",
    "DEFAULT_TENANT_ID": "tenant",
    "Mailbox": "tenant",
    "Tenant": "tenant",
    "User": "tenant",
}
__all__ = [
    "DEFAULT_CLIENT_ID",
    "DEFAULT_CLIENT_SECRET",
    "DEFAULT_TENANT_ID",
    "CallLog",
    "EmulatorServer",
    "Faults",
    "Mailbox",
    "Tenant",
    "User",
    "build_app",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
