"""What passes between the local host and a function, converted by `azure.functions`' own converters.

On Azure the host sends the worker an RPC message and the worker decodes it with these converters;
going through them here keeps the function's view the same: an aiohttp request becomes a
`func.HttpRequest`, a function's return value becomes an aiohttp response, and a manual timer run
becomes a `func.TimerRequest`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, Final

import azure.functions as func
from aiohttp import web
from azure.functions import meta
from azure.functions.http import HttpRequestConverter, HttpResponseConverter
from azure.functions.timer import TimerRequestConverter
from multidict import CIMultiDict

# Headers the server computes itself; a function's values for them would be wrong or harmful.
HOP_BY_HOP: Final = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})


def _joined(pairs: Iterable[tuple[str, str]], separator: str) -> dict[str, meta.Datum]:
    # The host sends one value per name: repeated headers or query parameters arrive joined.
    merged: dict[str, str] = {}
    for name, value in pairs:
        merged[name] = f"{merged[name]}{separator}{value}" if name in merged else value
    return {name: meta.Datum(type="string", value=value) for name, value in merged.items()}


def to_azure_request(request: web.Request, route_values: Mapping[str, str], body: bytes) -> func.HttpRequest:
    """The request as the worker decodes it from the host's RPC message."""
    datum = meta.Datum(
        type="http",
        value={
            "method": meta.Datum(type="string", value=request.method),
            "url": meta.Datum(type="string", value=str(request.url)),
            "headers": _joined(request.headers.items(), ", "),
            "query": _joined(request.query.items(), ","),
            "params": {name: meta.Datum(type="string", value=value) for name, value in route_values.items()},
            "body": meta.Datum(type="bytes", value=body),
        },
    )
    return HttpRequestConverter.decode(datum, trigger_metadata=None)


def to_aiohttp_response(result: Any) -> web.Response:
    """A function's return value as the host sends it (through the worker's encoder)."""
    if result is None:
        return web.Response(status=204)
    datum = HttpResponseConverter.encode(result, expected_type=None)
    if datum.type == "string":
        return web.Response(text=datum.value, content_type="text/plain", charset="utf-8")
    value = datum.value
    headers: CIMultiDict[str] = CIMultiDict()
    for name, header in value["headers"].items():
        if name.lower() not in HOP_BY_HOP:
            headers.add(name, str(header.value))
    for cookie in value.get("cookies") or ():
        for morsel in cookie.values():
            headers.add("Set-Cookie", morsel.OutputString())
    status = int(value["status_code"].value)
    body = value["body"].value if status not in (204, 304) and value["body"] is not None else b""
    return web.Response(status=status, body=body or None, headers=headers)


def manual_timer_request() -> func.TimerRequest:
    """What the host sends for a manual run of a timer function, decoded by the worker's converter."""
    datum = meta.Datum(type="json", value=json.dumps({"Schedule": {"AdjustForDST": True}, "IsPastDue": False}))
    return TimerRequestConverter.decode(datum, trigger_metadata=None)
