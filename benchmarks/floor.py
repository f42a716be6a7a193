"""The floor of a full reconcile: the app's Exchange calls from a minimal client, as its own process.

`python -m benchmarks.floor`, with the emulator's printed env (AZURE_TENANT_ID, AZURE_CLIENT_ID,
AZURE_CLIENT_SECRET, AZURE_AUTHORITY_HOST, EXCHANGE_ENDPOINT, SSL_CERT_FILE) and EXCHANGE_CONCURRENCY.

It makes the calls `shared.cli sweep --full --mode enforce` makes, and nothing else: one client-credentials
token for `{EXCHANGE_ENDPOINT}/.default`, Get-TransportConfig once, every page of Get-CASMailbox with the
app's $select and page size, then the app's plan with no exceptions (every mailbox not already True gets
True), sent as the app sends it: $batch calls of 10 Set-CASMailbox, in listing order, EXCHANGE_CONCURRENCY
at a time. One aiohttp session that trusts only the emulator's CA; no storage, no retries, no audit.
It prints one JSON line of counts and timings and exits 1 if any call failed.

The constants mirror shared/microsoft/exchange.py (PAGE_SIZE, CAS_SELECT, BATCH_LIMIT, the request shapes);
the benchmark checks them against the emulator's call log rather than importing the app here, which would
add azure-core's import to the floor.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import sys
import time
from collections.abc import Mapping
from typing import Any, Final

import aiohttp

PAGE_SIZE: Final = 1000
CAS_SELECT: Final = "Guid,PrimarySmtpAddress,SmtpClientAuthenticationDisabled"
BATCH_LIMIT: Final = 10
USER_AGENT: Final = "smtp-auth-guard-floor/0.1"


class FloorError(RuntimeError):
    """A call the app would have retried or reported: the floor only measures clean runs."""


def _cmdlet(name: str, parameters: Mapping[str, Any]) -> dict[str, Any]:
    return {"CmdletInput": {"CmdletName": name, "Parameters": dict(parameters)}}


class Floor:
    """One session, one token, the app's calls in the app's order."""

    def __init__(self, session: aiohttp.ClientSession, env: Mapping[str, str]) -> None:
        self.session = session
        self.env = env
        endpoint = env["EXCHANGE_ENDPOINT"].rstrip("/")
        self.scope = f"{endpoint}/.default"
        self.base = f"{endpoint}/adminapi/beta/{env['AZURE_TENANT_ID']}"
        self.headers: dict[str, str] = {}
        self.pages = self.batches = self.applied = 0

    async def token(self) -> None:
        """A plain client-credentials POST to the emulator's Entra token endpoint."""
        url = f"{self.env['AZURE_AUTHORITY_HOST'].rstrip('/')}/{self.env['AZURE_TENANT_ID']}/oauth2/v2.0/token"
        form = {
            "grant_type": "client_credentials",
            "client_id": self.env["AZURE_CLIENT_ID"],
            "client_secret": self.env["AZURE_CLIENT_SECRET"],
            "scope": self.scope,
        }
        async with self.session.post(url, data=form) as response:
            body = await response.read()
            if response.status != 200:
                raise FloorError(f"token: HTTP {response.status}: {body[:300]!r}")
        tenant = self.env["AZURE_TENANT_ID"]
        self.headers = {
            "Authorization": f"Bearer {json.loads(body)['access_token']}",
            "Accept": "application/json",
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "X-AnchorMailbox": f"APP:SystemMailbox{{bb558c35-97f1-4cb9-8ff7-d53741dc928c}}@{tenant}",
            "Prefer": f"odata.maxpagesize={PAGE_SIZE}",
        }

    async def post(self, url: str, body: Mapping[str, Any], cmdlet: str) -> dict[str, Any]:
        headers = {**self.headers, "X-CmdletName": cmdlet}
        async with self.session.post(url, data=json.dumps(body).encode(), headers=headers) as response:
            data = await response.read()
            if response.status != 200:
                raise FloorError(f"{cmdlet}: HTTP {response.status}: {data[:300]!r}")
        payload = json.loads(data)
        if not isinstance(payload, dict):
            raise FloorError(f"{cmdlet}: HTTP 200 without a JSON object")
        return payload

    async def transport_config(self) -> None:
        payload = await self.post(
            f"{self.base}/InvokeCommand", _cmdlet("Get-TransportConfig", {}), "Get-TransportConfig"
        )
        if not payload.get("value"):
            raise FloorError("Get-TransportConfig returned nothing")

    async def plan(self) -> tuple[int, list[str]]:
        """Every page of the listing; returns (mailboxes scanned, GUIDs not already True) in listing order."""
        body = _cmdlet("Get-CASMailbox", {"ResultSize": "Unlimited"})
        url: str | None = f"{self.base}/InvokeCommand?$select={CAS_SELECT}"
        scanned, changes = 0, []
        while url is not None:
            payload = await self.post(url, body, "Get-CASMailbox")
            self.pages += 1
            page = payload["value"]
            scanned += len(page)
            changes.extend(m["Guid"] for m in page if m["SmtpClientAuthenticationDisabled"] is not True)
            url = payload.get("@odata.nextLink")
        return scanned, changes

    async def apply(self, guids: list[str], workers: int) -> None:
        """$batch calls of BATCH_LIMIT, `workers` at a time, from one queue in listing order (as the app)."""
        queue: asyncio.Queue[list[str]] = asyncio.Queue()
        for start in range(0, len(guids), BATCH_LIMIT):
            queue.put_nowait(guids[start : start + BATCH_LIMIT])
        tasks = [asyncio.create_task(self._work(queue)) for _ in range(max(1, min(workers, queue.qsize())))]
        await asyncio.gather(*tasks)

    async def _work(self, queue: asyncio.Queue[list[str]]) -> None:
        invoke = f"{self.base}/InvokeCommand"
        while not queue.empty():
            batch = queue.get_nowait()
            requests = [
                {
                    "id": str(index),
                    "method": "POST",
                    "url": invoke,
                    "headers": {"Content-Type": "application/json"},
                    "body": _cmdlet("Set-CASMailbox", {"Identity": guid, "SmtpClientAuthenticationDisabled": True}),
                }
                for index, guid in enumerate(batch)
            ]
            payload = await self.post(f"{self.base}/$batch", {"requests": requests}, "Set-CASMailbox")
            self.batches += 1
            statuses = [r.get("status") for r in payload.get("responses") or []]
            if len(statuses) != len(batch) or not all(isinstance(s, int) and 200 <= s < 300 for s in statuses):
                raise FloorError(f"a $batch came back with sub-request statuses {statuses}")
            self.applied += len(batch)


async def reconcile(env: Mapping[str, str]) -> dict[str, Any]:
    """The whole floor run; the timings are from inside the process (the benchmark also times it whole)."""
    started = time.perf_counter()
    context = ssl.create_default_context(cafile=env["SSL_CERT_FILE"])  # the emulator's CA and nothing else
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
        floor = Floor(session, env)
        await floor.token()
        token_s = time.perf_counter() - started
        await floor.transport_config()
        scanned, changes = await floor.plan()
        listed_s = time.perf_counter() - started
        await floor.apply(changes, int(env.get("EXCHANGE_CONCURRENCY", "4")))
    finished = time.perf_counter() - started
    return {
        "scanned": scanned,
        "planned": len(changes),
        "applied": floor.applied,
        "pages": floor.pages,
        "batches": floor.batches,
        "token_s": round(token_s, 3),
        "list_s": round(listed_s - token_s, 3),
        "apply_s": round(finished - listed_s, 3),
        "in_run_s": round(finished, 3),
    }


def main() -> int:
    try:
        result = asyncio.run(reconcile(os.environ))
    except (FloorError, aiohttp.ClientError, KeyError, ValueError) as err:
        sys.stderr.write(f"floor failed: {type(err).__name__}: {err}\n")
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
