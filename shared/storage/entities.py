"""Plain dataclasses as table entities and back: PascalCase properties, enums as their values.

For the aggregates whose entity is their dataclass field for field (requests, notifications); the
others map their properties by hand in their own repository.
"""

from __future__ import annotations

from dataclasses import fields
from enum import Enum
from functools import cache
from typing import Any, TypeVar, get_type_hints

T = TypeVar("T")


def _pascal(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def to_entity(record: Any) -> dict[str, Any]:
    """A dataclass as table properties (PascalCase); enums as their values; None left out."""
    entity: dict[str, Any] = {}
    for f in fields(record):
        value = getattr(record, f.name)
        if value is None:
            continue
        entity[_pascal(f.name)] = value.value if isinstance(value, Enum) else value
    return entity


@cache
def _type_hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def from_entity(cls: type[T], entity: dict[str, Any]) -> T:
    hints = _type_hints(cls)
    values: dict[str, Any] = {}
    for f in fields(cls):  # type: ignore[arg-type]
        key = _pascal(f.name)
        if key not in entity:
            continue
        value = entity[key]
        kind = hints[f.name]
        if isinstance(kind, type) and issubclass(kind, Enum):
            value = kind(value)
        values[f.name] = value
    return cls(**values)
