"""Who is signed in to the workflow: their Entra object id, sign-in name and display name."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Principal:
    object_id: str
    upn: str  # lower case
    name: str
