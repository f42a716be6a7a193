"""The route matcher of `devservices.localhost`: the few route template forms this app uses.

A route template is split at "/" into segments, and each segment is one of:

* a literal (`exceptions`), matched case-insensitively, as the Functions host's routing does;
* `{name}`: any one non-empty path segment, passed to the function as route value `name`;
* `{name:guid}`: one path segment that parses as a GUID, passed through as given.

Everything else the host's (ASP.NET Core) grammar offers, such as other constraints, optional and
default values, catch-alls and several parameters in one segment, is refused with a `RouteError`
that names the form, so nobody mistakes this host for a complete one. Routes the Functions host
reserves for itself are refused too (`reserved_prefix`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

SUPPORTED: Final = "this local host supports literals, {name} and {name:guid} only"
# The host refuses a route whose text, trimmed of "/" and lower-cased, starts with one of these:
# `ScriptHost.ValidateHttpFunction` in Azure/azure-functions-host. A string prefix, not a segment,
# so `administration/x` is refused as well; the route prefix (`api`) plays no part in the check.
RESERVED_PREFIXES: Final = ("admin", "runtime")

_HEX: Final = "[0-9a-fA-F]"
_GUID_D: Final = f"{_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}}"
# Guid.TryParse's usual forms: D (hyphens), B {braces}, P (parentheses) and N (32 digits).
_GUID: Final = re.compile(rf"{_GUID_D}|\{{{_GUID_D}\}}|\({_GUID_D}\)|{_HEX}{{32}}")
_PARAMETER: Final = re.compile(
    r"\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::(?P<constraint>guid))?\}", re.IGNORECASE | re.ASCII
)  # constraint names are case-insensitive on the host: {id:GUID} is {id:guid}


class RouteError(ValueError):
    """A route template this host cannot serve, or one the Functions host would refuse."""


class Kind(IntEnum):
    """A segment's kind; the value is its rank when routes compete (ASP.NET Core's inbound precedence)."""

    LITERAL = 1
    GUID = 3
    NAME = 4


@dataclass(frozen=True, slots=True)
class Segment:
    kind: Kind
    text: str  # the literal, lower-cased, or the parameter's name

    def accepts(self, value: str) -> bool:
        if self.kind is Kind.LITERAL:
            return value.lower() == self.text
        if self.kind is Kind.GUID:
            return _GUID.fullmatch(value) is not None
        return value != ""


def reserved_prefix(template: str) -> str | None:
    """The reserved prefix `template` starts with, as the Functions host checks it, else None."""
    route = template.strip().strip("/").lower()
    return next((prefix for prefix in RESERVED_PREFIXES if route.startswith(prefix)), None)


def _where(template: str, function: str | None) -> str:
    return f"route {template!r}" + (f" of function {function!r}" if function else "")


def _segment(text: str, template: str, function: str | None) -> Segment:
    if text == "":
        raise RouteError(f"{_where(template, function)} has an empty segment: {SUPPORTED}")
    if "{" not in text and "}" not in text:
        return Segment(Kind.LITERAL, text.lower())
    parameter = _PARAMETER.fullmatch(text)
    if parameter is None:
        raise RouteError(f"{_where(template, function)} uses {text!r}: {SUPPORTED}")
    kind = Kind.GUID if parameter["constraint"] else Kind.NAME
    return Segment(kind, parameter["name"])


@dataclass(frozen=True, slots=True)
class RouteTemplate:
    """A function's route ("exceptions/{id:guid}/revoke"), compiled for matching."""

    template: str
    segments: tuple[Segment, ...]

    @classmethod
    def parse(cls, template: str, function: str | None = None) -> RouteTemplate:
        """The compiled route; a `RouteError` naming `function` and the form if it is not supported."""
        prefix = reserved_prefix(template)
        if prefix is not None:
            raise RouteError(
                f"{_where(template, function)} starts with {prefix!r}, which the Functions host reserves "
                "for its own endpoints (it refuses the function, whatever the route prefix)"
            )
        text = template.strip().strip("/")
        segments = tuple(_segment(part, template, function) for part in text.split("/")) if text else ()
        names = [segment.text.lower() for segment in segments if segment.kind is not Kind.LITERAL]
        if len(names) != len(set(names)):
            raise RouteError(f"{_where(template, function)} uses a parameter name twice")
        return cls(template, segments)

    @property
    def precedence(self) -> tuple[tuple[int, ...], str]:
        """Sort key: a literal segment wins over `{name:guid}`, which wins over `{name}`."""
        return tuple(segment.kind.value for segment in self.segments), self.template.lower()

    def match(self, segments: Sequence[str]) -> dict[str, str] | None:
        """Route values for decoded path segments (after the route prefix), or None."""
        if len(segments) != len(self.segments):
            return None
        values: dict[str, str] = {}
        for segment, value in zip(self.segments, segments, strict=True):
            if not segment.accepts(value):
                return None
            if segment.kind is not Kind.LITERAL:
                values[segment.text] = value
        return values
