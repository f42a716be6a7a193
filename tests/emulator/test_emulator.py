"""The local tenant emulator, driven over HTTPS like the app drives Microsoft 365."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest

from emulator import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, EmulatorServer, Tenant
from emulator.exchange import CONCURRENCY_MESSAGE

REPO = Path(__file__).resolve().parents[2]
# msgraph-sdk's generated request builders warn about their own deprecated configuration classes.
pytestmark = [
    pytest.mark.filterwarnings("ignore:This class is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:GetQueryParameters is deprecated:DeprecationWarning"),
]
SEED_COUNT = 2345
SEED_NOW = datetime.now(UTC) - timedelta(hours=2)  # every seeded mailbox is older than this


@pytest.fixture(scope="module")
def server() -> Iterator[EmulatorServer]:
    tenant = Tenant()
    tenant.seed(SEED_COUNT, rng_seed=7, now=SEED_NOW)
    with EmulatorServer(tenant) as srv:
        yield srv


@pytest.fixture(autouse=True)
def _clean(server: EmulatorServer) -> None:
    server.faults.reset()
    server.calllog.clear()


@pytest.fixture
async def session(server: EmulatorServer) -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(ssl=server.client_ssl_context())
    async with aiohttp.ClientSession(connector=connector) as s:
        yield s


async def get_token(session: aiohttp.ClientSession, server: EmulatorServer, resource: str = "exchange") -> str:
    endpoint = server.exchange_endpoint if resource == "exchange" else server.graph_endpoint
    async with session.post(
        f"{server.authority_host}/{server.tenant.tenant_id}/oauth2/v2.0/token",
        data={
            "grant_type": "client_credentials",
            "client_id": DEFAULT_CLIENT_ID,
            "client_secret": DEFAULT_CLIENT_SECRET,
            "scope": f"{endpoint}/.default",
        },
    ) as r:
        assert r.status == 200, await r.text()
        return str((await r.json())["access_token"])


@pytest.fixture
async def token(session: aiohttp.ClientSession, server: EmulatorServer) -> str:
    return await get_token(session, server)


def invoke_url(server: EmulatorServer) -> str:
    return f"{server.exchange_endpoint}/adminapi/beta/{server.tenant.tenant_id}/InvokeCommand"


def batch_url(server: EmulatorServer) -> str:
    return f"{server.exchange_endpoint}/adminapi/beta/{server.tenant.tenant_id}/$batch"


def cmdlet(name: str, **params: Any) -> dict[str, Any]:
    return {"CmdletInput": {"CmdletName": name, "Parameters": params}}


async def post(
    session: aiohttp.ClientSession, url: str, body: Any, token: str, **headers: str
) -> tuple[int, dict[str, Any], Any]:
    async with session.post(url, json=body, headers={"Authorization": f"Bearer {token}", **headers}) as r:
        return r.status, await r.json(), r.headers


# -- identity ------------------------------------------------------------------------------------


async def test_token_endpoint_answers_like_entra(session: aiohttp.ClientSession, server: EmulatorServer) -> None:
    url = f"{server.authority_host}/{server.tenant.tenant_id}/oauth2/v2.0/token"
    form = {
        "grant_type": "client_credentials",
        "client_id": DEFAULT_CLIENT_ID,
        "client_secret": DEFAULT_CLIENT_SECRET,
        "scope": f"{server.exchange_endpoint}/.default",
    }
    async with session.post(url, data=form) as r:
        body = await r.json()
    assert r.status == 200
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3599 and body["ext_expires_in"] == 3599
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["aud"] == server.exchange_endpoint
    assert claims["tid"] == server.tenant.tenant_id
    assert claims["appid"] == DEFAULT_CLIENT_ID
    assert claims["oid"] == server.tenant.clients[DEFAULT_CLIENT_ID].object_id
    assert claims["roles"] == ["Exchange.ManageAsApp"]
    assert claims["exp"] - claims["iat"] == 3599

    async with session.post(url, data={**form, "client_secret": "wrong"}) as r:
        err = await r.json()
    assert r.status == 401
    assert err["error"] == "invalid_client" and err["error_description"].startswith("AADSTS7000215:")

    bad_tenant = url.replace(server.tenant.tenant_id, "99999999-9999-9999-9999-999999999999")
    async with session.post(bad_tenant, data=form) as r:
        assert r.status == 400
        assert (await r.json())["error"] == "invalid_request"

    async with session.post(url, data={**form, "scope": "https://outlook.office365.com/.default"}) as r:
        assert r.status == 400  # only this emulator's own resources get tokens


async def test_exchange_rejects_missing_or_wrong_audience_token(
    session: aiohttp.ClientSession, server: EmulatorServer
) -> None:
    async with session.post(invoke_url(server), json=cmdlet("Get-TransportConfig")) as r:
        assert r.status == 401
        assert (await r.json())["error"]["code"] == "InvalidAuthenticationToken"
        assert "invalid_token" in r.headers["WWW-Authenticate"]
    graph_token = await get_token(session, server, "graph")
    status, body, _ = await post(session, invoke_url(server), cmdlet("Get-TransportConfig"), graph_token)
    assert status == 401 and "audience" in body["error"]["message"]
    assert [e["status"] for e in server.calllog.entries()] == [401, 401]


async def test_azure_identity_credential_gets_a_working_token(
    server: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from azure.identity.aio import ClientSecretCredential

    monkeypatch.setenv("SSL_CERT_FILE", str(server.ca_path))
    # aiohttp built its default SSL context when it was imported (before this test), so SSL_CERT_FILE
    # set now is not seen in this process; connection_verify is the in-process stand-in. The
    # subprocess test below proves the env-only path the app uses.
    credential = ClientSecretCredential(
        server.tenant.tenant_id,
        DEFAULT_CLIENT_ID,
        DEFAULT_CLIENT_SECRET,
        authority=server.authority_host,
        connection_verify=str(server.ca_path),
    )
    async with credential:
        access = await credential.get_token(f"{server.exchange_endpoint}/.default")
    assert access.expires_on > datetime.now(UTC).timestamp() + 3000
    connector = aiohttp.TCPConnector(ssl=server.client_ssl_context())
    async with aiohttp.ClientSession(connector=connector) as s:
        status, body, _ = await post(s, invoke_url(server), cmdlet("Get-TransportConfig"), access.token)
    assert status == 200
    assert body["value"][0]["SmtpClientAuthenticationDisabled"] is True


def test_app_process_reaches_emulator_through_settings_only(server: EmulatorServer) -> None:
    """A fresh process with only server.env(): the async credential and aiohttp trust the CA."""
    child = textwrap.dedent(
        """
        import asyncio, json, os
        import aiohttp
        from azure.identity.aio import EnvironmentCredential

        async def main():
            async with EnvironmentCredential() as cred:
                tok = await cred.get_token(os.environ["EXCHANGE_ENDPOINT"] + "/.default")
            url = f"{os.environ['EXCHANGE_ENDPOINT']}/adminapi/beta/{os.environ['AZURE_TENANT_ID']}/InvokeCommand"
            body = {"CmdletInput": {"CmdletName": "Get-TransportConfig", "Parameters": {}}}
            async with aiohttp.ClientSession() as s:  # default SSL: trusts SSL_CERT_FILE
                async with s.post(url, json=body, headers={"Authorization": "Bearer " + tok.token}) as r:
                    print(json.dumps({"status": r.status, "body": await r.json()}))

        asyncio.run(main())
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "SSL_", "REQUESTS_"))}
    env.update(server.env())
    out = subprocess.run(
        [sys.executable, "-c", child], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["status"] == 200
    assert result["body"]["value"][0]["Identity"] == "Transport Settings"


# -- listing -------------------------------------------------------------------------------------


async def test_paging_with_nextlink_returns_every_mailbox_exactly_once(
    session: aiohttp.ClientSession, server: EmulatorServer, token: str
) -> None:
    body = cmdlet("Get-CASMailbox", ResultSize="Unlimited")
    url: str | None = invoke_url(server) + "?$select=Guid,PrimarySmtpAddress,SmtpClientAuthenticationDisabled"
    seen: list[str] = []
    pages = 0
    added = None
    while url:
        status, page, headers = await post(session, url, body, token, Prefer="odata.maxpagesize=400")
        assert status == 200, page
        assert headers["Preference-Applied"] == "odata.maxpagesize=400"
        assert all(set(v) == {"Guid", "PrimarySmtpAddress", "SmtpClientAuthenticationDisabled"} for v in page["value"])
        seen += [v["Guid"] for v in page["value"]]
        url = page.get("@odata.nextLink")
        if url:
            assert url.startswith(invoke_url(server) + "?$select=Guid,PrimarySmtpAddress")
            assert "$skiptoken=" in url
        pages += 1
        if pages == 2:
            # Changes during paging must not shift the keyset: no duplicates, no gaps.
            server.tenant.set_smtp(seen[0], False)
            added = server.tenant.add_mailbox("during.paging@contoso.onmicrosoft.com")
    assert len(seen) == len(set(seen))
    expected = {m.guid for m in server.tenant.snapshot()}
    assert added is not None
    # A mailbox created mid-listing shows up only if its guid sorts after the cursor.
    assert set(seen) in (expected, expected - {added.guid})
    assert pages == -(-len(seen) // 400)
    keys = [e["key"] for e in server.calllog.entries()]
    assert len(keys) == len(set(keys)) == pages  # each page is its own logical operation


async def test_default_result_size_is_1000_with_a_warning(
    session: aiohttp.ClientSession, server: EmulatorServer, token: str
) -> None:
    status, body, _ = await post(session, invoke_url(server), cmdlet("Get-Mailbox"), token)
    assert status == 200
    assert len(body["value"]) == 1000
    assert "@odata.nextLink" not in body
    assert "ResultSize" in body["@adminapi.warnings"][0]
    mbx = body["value"][0]
    assert mbx["RecipientType"] == "UserMailbox"
    assert mbx["WhenChangedUTC"].endswith("Z") and len(mbx["WhenChangedUTC"]) == len("2026-11-28T05:56:20.1234567Z")


async def test_filter_on_when_changed_utc_and_when_mailbox_created(
    session: aiohttp.ClientSession, server: EmulatorServer, token: str
) -> None:
    cutoff = SEED_NOW - timedelta(days=200)
    expected = {m.guid for m in server.tenant.snapshot() if m.when_changed > cutoff}
    assert 0 < len(expected) < len(server.tenant)
    us_literal = f"{cutoff.month}/{cutoff.day}/{cutoff.year} {cutoff:%H:%M:%S}"
    for literal in (us_literal, cutoff.strftime("%Y-%m-%dT%H:%M:%SZ")):
        body = cmdlet("Get-CASMailbox", ResultSize="Unlimited", Filter=f"WhenChangedUTC -gt '{literal}'")
        url: str | None = invoke_url(server) + "?$select=Guid,WhenChangedUTC"
        got: list[str] = []
        while url:
            status, page, _ = await post(session, url, body, token)
            assert status == 200, page
            got += [v["Guid"] for v in page["value"]]
            url = page.get("@odata.nextLink")
        # Second precision of the en-US literal can't matter: seeded times have random microseconds.
        assert set(got) == expected and len(got) == len(expected)

    late = {
        m.guid
        for m in server.tenant.snapshot()
        if m.when_mailbox_created > SEED_NOW - timedelta(days=1) and m.when_created < SEED_NOW - timedelta(days=30)
    }
    assert late, "the seed should include late-provisioned mailboxes"
    since = (SEED_NOW - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    body = cmdlet(
        "Get-Mailbox",
        ResultSize="Unlimited",
        Filter=f"(WhenMailboxCreated -ge '{since}') -and (RecipientTypeDetails -ne 'RoomMailbox')",
    )
    status, page, _ = await post(session, invoke_url(server), body, token)
    assert status == 200
    types = {v["Guid"]: v["RecipientTypeDetails"] for v in page["value"]}
    assert {g for g in late if server.tenant.mailboxes[g].recipient_type_details != "RoomMailbox"} <= set(types)
    assert "RoomMailbox" not in types.values()


@pytest.mark.parametrize(
    ("name", "flt"),
    [
        ("Get-CASMailbox", "SmtpClientAuthenticationDisabled -eq $false"),
        ("Get-CASMailbox", "WhenChangedUTC -gt"),
        ("Get-CASMailbox", "WhenChangedUTC -gt 'not a date'"),
        ("Get-CASMailbox", "(WhenCreated -lt '1/1/2024 00:00:00'"),
        ("Get-CASMailbox", "WhenMailboxCreated -gt '1/1/2024 00:00:00'"),  # not a CAS mailbox property
        ("Get-Mailbox", "Bogus -eq 'x'"),
    ],
)
async def test_bad_filters_are_rejected(
    session: aiohttp.ClientSession, server: EmulatorServer, token: str, name: str, flt: str
) -> None:
    status, body, _ = await post(session, invoke_url(server), cmdlet(name, Filter=flt), token)
    assert status == 400
    assert body["error"]["message"] == "Invalid Operation"
    assert "InvalidFilterException" in body["error"]["details"][0]["message"]


# -- changes -------------------------------------------------------------------------------------


async def test_set_casmailbox_changes_state_and_when_changed(
    session: aiohttp.ClientSession, server: EmulatorServer, token: str
) -> None:
    mb = server.tenant.add_mailbox(
        "set.target@contoso.onmicrosoft.com", smtp=None, when_mailbox_created=SEED_NOW - timedelta(days=3)
    )

    async def read() -> dict[str, Any]:
        status, body, _ = await post(session, invoke_url(server), cmdlet("Get-CASMailbox", Identity=mb.guid), token)
        assert status == 200
        return dict(body["value"][0])

    before = await read()
    assert before["SmtpClientAuthenticationDisabled"] is None
    await asyncio.sleep(0.01)
    status, body, _ = await post(
        session,
        invoke_url(server),
        cmdlet("Set-CASMailbox", Identity=mb.primary_smtp_address.upper(), SmtpClientAuthenticationDisabled=True),
        token,
    )
    assert status == 200 and body["value"] == []
    after = await read()
    assert after["SmtpClientAuthenticationDisabled"] is True
    assert after["WhenChangedUTC"] > before["WhenChangedUTC"]
    assert server.tenant.find(mb.guid).smtp_client_authentication_disabled is True  # type: ignore[union-attr]

    # Same value again: a no-op with EXO's warning; WhenChanged stays put.
    _, body, _ = await post(
        session,
        invoke_url(server),
        cmdlet("Set-CASMailbox", Identity=mb.guid, SmtpClientAuthenticationDisabled=True),
        token,
    )
    assert "no settings" in body["@adminapi.warnings"][0]
    assert (await read())["WhenChangedUTC"] == after["WhenChangedUTC"]

    # JSON null resets the mailbox to follow the organisation.
    await post(
        session,
        invoke_url(server),
        cmdlet("Set-CASMailbox", Identity=mb.guid, SmtpClientAuthenticationDisabled=None),
        token,
    )
    assert (await read())["SmtpClientAuthenticationDisabled"] is None


async def test_error_body_shape(session: aiohttp.ClientSession, server: EmulatorServer, token: str) -> None:
    status, body, _ = await post(
        session,
        invoke_url(server),
        cmdlet("Set-CASMailbox", Identity="nobody@contoso.onmicrosoft.com", SmtpClientAuthenticationDisabled=True),
        token,
    )
    assert status == 404
    err = body["error"]
    assert err["message"] == "Invalid Operation"
    code, exc_type, text = err["details"][0]["message"].split("|", 2)
    assert code == err["details"][0]["code"] == "Ex6F9304"
    assert exc_type == "Microsoft.Exchange.Configuration.Tasks.ManagementObjectNotFoundException"
    assert "'nobody@contoso.onmicrosoft.com' couldn't be found" in text
    assert err["innererror"]["internalexception"]["type"] == exc_type

    status, body, _ = await post(session, invoke_url(server), cmdlet("Get-CASMailbox", Bogus=1), token)
    assert status == 400 and "Bogus" in body["error"]["details"][0]["message"]
    status, body, _ = await post(session, invoke_url(server), cmdlet("Remove-Mailbox", Identity="x"), token)
    assert status == 400 and "CommandNotFoundException" in body["error"]["details"][0]["message"]
    status, body, _ = await post(
        session,
        invoke_url(server),
        cmdlet("Set-CASMailbox", Identity=server.tenant.sorted_guids[0], SmtpClientAuthenticationDisabled="yes"),
        token,
    )
    assert status == 400


async def test_batch(session: aiohttp.ClientSession, server: EmulatorServer, token: str) -> None:
    guids = server.tenant.sorted_guids[100:110]
    items = [
        {
            "id": str(i),
            "method": "POST",
            "url": invoke_url(server),
            "headers": {"Content-Type": "application/json"},
            "body": cmdlet("Set-CASMailbox", Identity=g, SmtpClientAuthenticationDisabled=True),
        }
        for i, g in enumerate(guids)
    ]
    items[3]["body"] = cmdlet(
        "Set-CASMailbox", Identity="ghost@contoso.onmicrosoft.com", SmtpClientAuthenticationDisabled=True
    )
    items[4]["url"] = "InvokeCommand"  # relative URLs resolve against the $batch URL
    status, body, _ = await post(session, batch_url(server), {"requests": items}, token, Accept="application/json")
    assert status == 200
    by_id = {r["id"]: r for r in body["responses"]}
    assert set(by_id) == {str(i) for i in range(10)}
    assert by_id["3"]["status"] == 404
    assert "ManagementObjectNotFoundException" in by_id["3"]["body"]["error"]["details"][0]["message"]
    assert all(by_id[str(i)]["status"] == 200 for i in range(10) if i != 3)
    assert all(
        server.tenant.mailboxes[g].smtp_client_authentication_disabled is True for i, g in enumerate(guids) if i != 3
    )
    assert server.calllog.count(kind="batch") == 1
    assert server.calllog.count(kind="batch_item", cmdlet="Set-CASMailbox") == 10

    status, body, _ = await post(session, batch_url(server), {"requests": [*items, {**items[0], "id": "10"}]}, token)
    assert status == 400
    assert body["error"]["message"] == "Invalid Operation"
    assert "maximum is 10" in body["error"]["details"][0]["message"]


# -- faults --------------------------------------------------------------------------------------


async def test_429_faults_carry_retry_after(session: aiohttp.ClientSession, server: EmulatorServer, token: str) -> None:
    server.faults.configure(throttle_rate=1.0, retry_after_seconds=7)
    status, body, headers = await post(session, invoke_url(server), cmdlet("Get-TransportConfig"), token)
    assert status == 429 and headers["Retry-After"] == "7"
    assert body["error"]["code"] == "TooManyRequests"

    server.faults.reset(batch_item_throttle_rate=1.0, retry_after_seconds=3)
    item = {"id": "a", "method": "POST", "url": invoke_url(server), "body": cmdlet("Get-TransportConfig")}
    status, body, headers = await post(session, batch_url(server), {"requests": [item]}, token)
    assert status == 200 and "Retry-After" not in headers
    sub = body["responses"][0]
    assert sub["status"] == 429 and sub["headers"]["Retry-After"] == "3"
    assert server.calllog.entries()[-2]["retry_after"] == 3  # the batch_item entry precedes its batch


async def test_concurrency_limit_gives_429_without_retry_after(
    session: aiohttp.ClientSession, server: EmulatorServer, token: str
) -> None:
    server.faults.configure(concurrency_limit=2, latency_ms=300)
    results = await asyncio.gather(
        *(post(session, invoke_url(server), cmdlet("Get-TransportConfig"), token) for _ in range(5))
    )
    statuses = sorted(r[0] for r in results)
    assert statuses == [200, 200, 429, 429, 429]
    for status, body, headers in results:
        if status == 429:
            assert body["error"]["message"] == CONCURRENCY_MESSAGE
            assert "Retry-After" not in headers
    ok = [e for e in server.calllog.entries() if e["status"] == 200]
    assert all(e["t_end"] - e["t"] >= 0.29 for e in ok)  # latency is served while holding the slot


async def test_failing_cmdlet_fails_top_level_and_in_batches(
    session: aiohttp.ClientSession, server: EmulatorServer, token: str
) -> None:
    server.faults.configure(failing_cmdlets={"Set-CASMailbox": 500})
    set_body = cmdlet("Set-CASMailbox", Identity=server.tenant.sorted_guids[0], SmtpClientAuthenticationDisabled=True)
    status, body, _ = await post(session, invoke_url(server), set_body, token)
    assert status == 500
    assert "StoragePermanentException" in body["error"]["details"][0]["message"]
    items = [
        {"id": "1", "method": "POST", "url": invoke_url(server), "body": set_body},
        {"id": "2", "method": "POST", "url": invoke_url(server), "body": cmdlet("Get-TransportConfig")},
    ]
    status, body, _ = await post(session, batch_url(server), {"requests": items}, token)
    assert status == 200
    assert {r["id"]: r["status"] for r in body["responses"]} == {"1": 500, "2": 200}


async def test_call_log_keys_identify_retries(
    session: aiohttp.ClientSession, server: EmulatorServer, token: str
) -> None:
    guid = server.tenant.sorted_guids[5]
    body = cmdlet("Set-CASMailbox", Identity=guid, SmtpClientAuthenticationDisabled=False)
    server.faults.configure(throttle_rate=1.0, retry_after_seconds=1)
    assert (await post(session, invoke_url(server), body, token))[0] == 429
    server.faults.reset()
    assert (await post(session, invoke_url(server), body, token))[0] == 200
    other = cmdlet("Get-CASMailbox", Identity=guid)
    assert (await post(session, invoke_url(server), other, token))[0] == 200
    entries = server.calllog.entries()
    assert [e["status"] for e in entries] == [429, 200, 200]
    assert entries[0]["key"] == entries[1]["key"] != entries[2]["key"]
    assert entries[0]["retry_after"] == 1 and entries[1]["retry_after"] is None
    assert entries[0]["identity"] == guid and entries[0]["kind"] == "invoke"
    assert server.calllog.count(cmdlet="Set-CASMailbox") == 2
    assert entries[0]["t"] <= entries[1]["t"] <= entries[2]["t"]


# -- Graph and the control API -------------------------------------------------------------------


async def test_graph_users_and_organization(session: aiohttp.ClientSession, server: EmulatorServer) -> None:
    token = await get_token(session, server, "graph")
    headers = {"Authorization": f"Bearer {token}"}
    user = next(m for m in server.tenant.snapshot() if m.recipient_type_details == "UserMailbox")
    shared = next(m for m in server.tenant.snapshot() if m.recipient_type_details == "SharedMailbox")
    async with session.get(f"{server.graph_endpoint}/v1.0/users/{user.user_principal_name}", headers=headers) as r:
        assert r.status == 200
        body = await r.json()
    assert body["id"] == user.external_directory_object_id and body["mail"] == user.primary_smtp_address
    async with session.get(f"{server.graph_endpoint}/v1.0/users/{shared.user_principal_name}", headers=headers) as r:
        assert r.status == 404
        assert (await r.json())["error"]["code"] == "Request_ResourceNotFound"
    async with session.get(f"{server.graph_endpoint}/v1.0/organization", headers=headers) as r:
        assert (await r.json())["value"][0]["id"] == server.tenant.tenant_id
    exchange_token = await get_token(session, server, "exchange")
    async with session.get(
        f"{server.graph_endpoint}/v1.0/organization", headers={"Authorization": f"Bearer {exchange_token}"}
    ) as r:
        assert r.status == 401


async def test_control_api(session: aiohttp.ClientSession, server: EmulatorServer, token: str) -> None:
    base = f"{server.base_url}/_emulator"
    async with session.post(
        f"{base}/mailboxes",
        json={
            "address": "ctl.user@contoso.onmicrosoft.com",
            "type": "SharedMailbox",
            "smtp": False,
            "when_created": "1/2/2021 03:04:05",
            "when_mailbox_created": "2026-01-01T00:00:00Z",
        },
    ) as r:
        assert r.status == 201
        created = await r.json()
    assert created["type"] == "SharedMailbox" and created["smtp"] is False
    assert created["when_created"].startswith("2021-01-02T03:04:05")
    async with session.post(f"{base}/mailboxes/ctl.user@contoso.onmicrosoft.com/smtp", json={"value": None}) as r:
        changed = await r.json()
    assert changed["smtp"] is None and changed["when_changed"] >= created["when_changed"]
    async with session.post(f"{base}/mailboxes/ghost@x/smtp", json={"value": True}) as r:
        assert r.status == 404

    async with session.put(
        f"{base}/org",
        json={
            "smtp_client_authentication_disabled": False,
            "authentication_policies": [{"Name": "Block", "AllowBasicAuthSmtp": False}],
        },
    ) as r:
        assert (await r.json())["smtp_client_authentication_disabled"] is False
    _, body, _ = await post(session, invoke_url(server), cmdlet("Get-TransportConfig"), token)
    assert body["value"][0]["SmtpClientAuthenticationDisabled"] is False
    _, body, _ = await post(session, invoke_url(server), cmdlet("Get-AuthenticationPolicy"), token)
    assert body["value"] == [{"Identity": "Block", "Name": "Block", "AllowBasicAuthSmtp": False}]

    # Which policy governs a user: their own (Get-User), else the organisation's default.
    async with session.put(f"{base}/org", json={"default_authentication_policy": "Block"}) as r:
        assert (await r.json())["default_authentication_policy"] == "Block"
    _, body, _ = await post(session, invoke_url(server), cmdlet("Get-OrganizationConfig"), token)
    assert body["value"][0]["DefaultAuthenticationPolicy"] == "Block"
    user_address = "ctl.user@contoso.onmicrosoft.com"
    _, body, _ = await post(session, invoke_url(server), cmdlet("Get-User", Identity=user_address), token)
    assert body["value"][0]["AuthenticationPolicy"] is None and body["value"][0]["Guid"] == created["guid"]
    async with session.post(f"{base}/mailboxes/{user_address}/authentication-policy", json={"policy": "Allow"}) as r:
        assert r.status == 200
    _, body, _ = await post(session, invoke_url(server), cmdlet("Get-User", Identity=created["guid"]), token)
    assert body["value"][0]["AuthenticationPolicy"] == "Allow"
    async with session.post(f"{base}/mailboxes/{user_address}/authentication-policy", json={"policy": 7}) as r:
        assert r.status == 400
    async with session.post(f"{base}/mailboxes/ghost@x/authentication-policy", json={"policy": None}) as r:
        assert r.status == 404
    status, body, _ = await post(session, invoke_url(server), cmdlet("Get-User", Identity="ghost@x"), token)
    assert status == 404 and "ManagementObjectNotFoundException" in json.dumps(body)
    async with session.put(f"{base}/org", json={"default_authentication_policy": None}) as r:
        assert (await r.json())["default_authentication_policy"] is None
    async with session.put(
        f"{base}/org", json={"smtp_client_authentication_disabled": True, "authentication_policies": []}
    ):
        pass

    async with session.put(f"{base}/faults", json={"throttle_rate": 0.5}) as r:
        assert (await r.json())["throttle_rate"] == 0.5
    assert server.faults.throttle_rate == 0.5
    async with session.put(f"{base}/faults", json={"no_such_knob": 1}) as r:
        assert r.status == 400
    async with session.delete(f"{base}/faults") as r:
        assert (await r.json())["throttle_rate"] == 0.0
    async with session.get(f"{base}/calls?kind=invoke") as r:
        calls = await r.json()
    assert calls["count"] == 6 and {e["cmdlet"] for e in calls["entries"]} == {
        "Get-TransportConfig",
        "Get-AuthenticationPolicy",
        "Get-OrganizationConfig",
        "Get-User",
    }
    async with session.delete(f"{base}/calls"):
        pass
    assert len(server.calllog) == 0
    async with session.get(f"{base}/mailboxes") as r:
        assert len(await r.json()) == len(server.tenant)


def test_standalone_process(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "emulator",
            "--port",
            "0",
            "--mailboxes",
            "50",
            "--ca-file",
            str(ca),
            "--latency-ms",
            "5",
            "--concurrency-limit",
            "3",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        env = json.loads(proc.stdout.readline())
        assert env["SSL_CERT_FILE"] == str(ca.resolve()) and ca.is_file()
        assert env["EXCHANGE_ENDPOINT"] == env["AZURE_AUTHORITY_HOST"] + "/exchange"

        async def check() -> tuple[dict[str, Any], dict[str, Any]]:
            import ssl

            ctx = ssl.create_default_context(cafile=env["SSL_CERT_FILE"])
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as s:
                async with s.get(env["AZURE_AUTHORITY_HOST"] + "/_emulator/org") as r:
                    org = await r.json()
                async with s.get(env["AZURE_AUTHORITY_HOST"] + "/_emulator/faults") as r:
                    faults = await r.json()
            return org, faults

        org, faults = asyncio.run(check())
        assert org["mailbox_count"] == 50 and org["tenant_id"] == env["AZURE_TENANT_ID"]
        assert faults["latency_ms"] == 5 and faults["concurrency_limit"] == 3
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0


def test_seed_is_deterministic_and_mixed() -> None:
    now = datetime(2026, 11, 28, tzinfo=UTC)
    a, b = Tenant(), Tenant()
    a.seed(5000, now=now)
    b.seed(5000, now=now)
    assert [m.guid for m in a.snapshot()] == [m.guid for m in b.snapshot()]
    mbs = a.snapshot()
    types = {
        t: sum(m.recipient_type_details == t for m in mbs) / len(mbs)
        for t in ("UserMailbox", "SharedMailbox", "RoomMailbox", "EquipmentMailbox")
    }
    assert 0.82 < types["UserMailbox"] < 0.88 and 0.01 < types["EquipmentMailbox"] < 0.05
    states = [m.smtp_client_authentication_disabled for m in mbs]
    assert 0.57 < states.count(True) / len(mbs) < 0.63 and 0.22 < states.count(None) / len(mbs) < 0.28
    assert all(m.when_created <= m.when_changed <= now and m.when_mailbox_created <= m.when_changed for m in mbs)
    assert min(m.when_created for m in mbs) < now - timedelta(days=4 * 365)
    a.seed(10, now=now)  # a second call adds, with fresh guids
    assert len(a) == 5010 == len(a.sorted_guids)


# -- Graph through the real msgraph-sdk ----------------------------------------------------------
#
# This server uses the session CA that conftest put in SSL_CERT_FILE before aiohttp was imported, so
# azure-identity (aiohttp) and msgraph-sdk (httpx, which reads SSL_CERT_FILE per client) both trust it
# with no extra settings, exactly as the app will in its own process.


@pytest.fixture(scope="module")
def graph_server() -> Iterator[EmulatorServer]:
    tenant = Tenant()
    tenant.seed(150, rng_seed=11, now=SEED_NOW)
    with EmulatorServer(tenant, ca_path=os.environ["SSL_CERT_FILE"], reuse_ca=True) as srv:
        yield srv


@pytest.fixture
async def graph(graph_server: EmulatorServer) -> AsyncIterator[Any]:
    """A GraphServiceClient configured the way emulator/README.md tells the app to."""
    from azure.identity.aio import ClientSecretCredential
    from kiota_authentication_azure.azure_identity_authentication_provider import (
        AzureIdentityAuthenticationProvider,
    )
    from msgraph import GraphRequestAdapter, GraphServiceClient

    graph_server.faults.reset()
    graph_server.calllog.clear()
    t = graph_server.tenant
    with t.lock:
        t.premium, t.security_defaults = True, False
        t.conditional_access_policies.clear()
        t.sent_mail.clear()
        t.teams_posts.clear()
    env = graph_server.env()
    credential = ClientSecretCredential(
        env["AZURE_TENANT_ID"],
        env["AZURE_CLIENT_ID"],
        env["AZURE_CLIENT_SECRET"],
        authority=env["AZURE_AUTHORITY_HOST"],
    )
    endpoint = env["GRAPH_ENDPOINT"]
    auth = AzureIdentityAuthenticationProvider(credential, scopes=[f"{endpoint}/.default"], allowed_hosts=["127.0.0.1"])
    adapter = GraphRequestAdapter(auth)
    adapter.base_url = f"{endpoint}/v1.0"
    client = GraphServiceClient(request_adapter=adapter)
    yield client
    await credential.close()


@pytest.fixture
async def gsession(graph_server: EmulatorServer) -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(ssl=graph_server.client_ssl_context())
    async with aiohttp.ClientSession(connector=connector) as s:
        yield s


async def test_graph_sdk_plain_client_as_in_readme(graph_server: EmulatorServer) -> None:
    """The shortest setup (README): GraphServiceClient(credentials, scopes) and a new base_url."""
    from azure.identity.aio import ClientSecretCredential
    from msgraph import GraphServiceClient

    env = graph_server.env()
    graph_endpoint = env["GRAPH_ENDPOINT"]
    tenant_id, client_id, secret = env["AZURE_TENANT_ID"], env["AZURE_CLIENT_ID"], env["AZURE_CLIENT_SECRET"]
    credential = ClientSecretCredential(tenant_id, client_id, secret, authority=env["AZURE_AUTHORITY_HOST"])
    async with credential:
        client = GraphServiceClient(credentials=credential, scopes=[f"{graph_endpoint}/.default"])
        client.request_adapter.base_url = f"{graph_endpoint}/v1.0"
        org = await client.organization.get()
    assert org.value[0].id == graph_server.tenant.tenant_id


def _query(builder_cls: Any, **params: Any) -> Any:
    from kiota_abstractions.base_request_configuration import RequestConfiguration

    qp_name = next(n for n in vars(builder_cls) if n.endswith("GetQueryParameters"))
    return RequestConfiguration(query_parameters=getattr(builder_cls, qp_name)(**params))


def _no_retry() -> Any:
    from kiota_abstractions.base_request_configuration import RequestConfiguration
    from kiota_http.middleware.options import RetryHandlerOption

    return RequestConfiguration(options=[RetryHandlerOption(should_retry=False)])


def _user_mailboxes(server: EmulatorServer, smtp: Any = "any") -> list[Any]:
    return [
        m
        for m in server.tenant.snapshot()
        if m.recipient_type_details == "UserMailbox"
        and (smtp == "any" or m.smtp_client_authentication_disabled is smtp)
    ]


async def test_graph_sdk_users(graph: Any, graph_server: EmulatorServer) -> None:
    from msgraph.generated.models.o_data_errors.o_data_error import ODataError
    from msgraph.generated.users.item.user_item_request_builder import UserItemRequestBuilder
    from msgraph.generated.users.users_request_builder import UsersRequestBuilder

    mb = _user_mailboxes(graph_server)[0]
    user = await graph.users.by_user_id(mb.user_principal_name.upper()).get()
    assert user.id == mb.external_directory_object_id and user.mail == mb.primary_smtp_address
    assert user.account_enabled is True and user.display_name == mb.display_name
    assert f"{user.given_name} {user.surname}" == mb.display_name
    by_id = await graph.users.by_user_id(mb.external_directory_object_id).get(
        request_configuration=_query(UserItemRequestBuilder, select=["displayName", "mail"])
    )
    assert by_id.mail == mb.primary_smtp_address and by_id.user_principal_name is None  # $select honoured

    shared = next(m for m in graph_server.tenant.snapshot() if m.recipient_type_details == "SharedMailbox")
    for missing in ("nobody@contoso.onmicrosoft.com", shared.primary_smtp_address, mb.guid):
        with pytest.raises(ODataError) as err:
            await graph.users.by_user_id(missing).get()
        assert err.value.response_status_code == 404 and err.value.error.code == "Request_ResourceNotFound"

    found = await graph.users.get(
        request_configuration=_query(UsersRequestBuilder, filter=f"mail eq '{mb.primary_smtp_address.upper()}'")
    )
    assert [u.id for u in found.value] == [mb.external_directory_object_id]
    found = await graph.users.get(
        request_configuration=_query(UsersRequestBuilder, filter=f"userPrincipalName eq '{mb.user_principal_name}'")
    )
    assert [u.user_principal_name for u in found.value] == [mb.user_principal_name]
    with pytest.raises(ODataError) as err:
        await graph.users.get(request_configuration=_query(UsersRequestBuilder, filter="mail gt 'a'"))
    assert err.value.response_status_code == 400

    # $top and @odata.nextLink paging over every UserMailbox owner, each exactly once.
    ids: list[str] = []
    resp = await graph.users.get(request_configuration=_query(UsersRequestBuilder, top=40))
    while True:
        ids += [u.id for u in resp.value]
        if not resp.odata_next_link:
            break
        resp = await graph.users.with_url(resp.odata_next_link).get()
    assert sorted(ids) == sorted(m.external_directory_object_id for m in _user_mailboxes(graph_server))
    assert len(ids) == len(set(ids)) > 40


async def test_graph_sdk_groups(graph: Any, graph_server: EmulatorServer) -> None:
    from msgraph.generated.directory_objects.item.check_member_groups.check_member_groups_post_request_body import (
        CheckMemberGroupsPostRequestBody as DirObjBody,
    )
    from msgraph.generated.groups.item.members.members_request_builder import MembersRequestBuilder
    from msgraph.generated.models.user import User
    from msgraph.generated.users.item.check_member_groups.check_member_groups_post_request_body import (
        CheckMemberGroupsPostRequestBody,
    )

    t = graph_server.tenant
    users = _user_mailboxes(graph_server)[:5]
    approvers = t.add_group("SMTP AUTH approvers", [u.external_directory_object_id for u in users[:3]])
    other = t.add_group("Other", [users[4].user_principal_name])
    t.add_group_member(other, users[0].external_directory_object_id)
    asked = [approvers, other, "6f1c0a3e-0000-4000-8000-000000000000"]

    r = await graph.users.by_user_id(users[0].user_principal_name).check_member_groups.post(
        CheckMemberGroupsPostRequestBody(group_ids=asked)
    )
    assert r.value == [approvers, other]
    r = await graph.users.by_user_id(users[3].external_directory_object_id).check_member_groups.post(
        CheckMemberGroupsPostRequestBody(group_ids=asked)
    )
    assert r.value == []
    r = await graph.directory_objects.by_directory_object_id(
        users[1].external_directory_object_id
    ).check_member_groups.post(DirObjBody(group_ids=asked))
    assert r.value == [approvers]

    page = await graph.groups.by_group_id(approvers).members.get(
        request_configuration=_query(MembersRequestBuilder, top=2)
    )
    members = list(page.value)
    assert page.odata_next_link and len(members) == 2
    page = await graph.groups.by_group_id(approvers).members.with_url(page.odata_next_link).get()
    members += page.value
    assert page.odata_next_link is None
    assert all(isinstance(m, User) for m in members)  # "@odata.type" picks the derived type
    assert [m.id for m in members] == [u.external_directory_object_id for u in users[:3]]


async def test_graph_sdk_nested_groups_are_transitive(graph: Any, graph_server: EmulatorServer) -> None:
    from msgraph.generated.models.group import Group
    from msgraph.generated.models.user import User
    from msgraph.generated.users.item.check_member_groups.check_member_groups_post_request_body import (
        CheckMemberGroupsPostRequestBody,
    )

    t = graph_server.tenant
    users = _user_mailboxes(graph_server)[:4]
    innermost = t.add_group("Tier 3", [users[2].external_directory_object_id])
    inner = t.add_group("Messaging admins", [users[1].external_directory_object_id, innermost])
    outer = t.add_group("SMTP AUTH approvers", [users[0].external_directory_object_id, inner])

    for user, expected in ((users[2], [outer, inner]), (users[1], [outer, inner]), (users[3], [])):
        r = await graph.users.by_user_id(user.external_directory_object_id).check_member_groups.post(
            CheckMemberGroupsPostRequestBody(group_ids=[outer, inner])
        )
        assert sorted(r.value) == sorted(expected)

    direct = await graph.groups.by_group_id(outer).members.get()
    assert [type(m) for m in direct.value] == [User, Group]  # a nested group is listed as a group
    assert direct.value[1].id == inner
    everyone = await graph.groups.by_group_id(outer).transitive_members.get()
    ids = [u.external_directory_object_id for u in users[:3]]
    assert [(type(m), m.id) for m in everyone.value] == [
        (User, ids[0]),
        (Group, inner),
        (User, ids[1]),
        (Group, innermost),
        (User, ids[2]),
    ]

    t.add_group_member(innermost, outer)  # a cycle must not make the emulator loop
    assert t.member_groups(ids[0], [outer, inner, innermost]) == [outer, inner, innermost]
    assert [i for i in t.transitive_members(outer) if i in ids] == ids


async def test_graph_sdk_send_mail(graph: Any, graph_server: EmulatorServer) -> None:
    from msgraph.generated.models.body_type import BodyType
    from msgraph.generated.models.email_address import EmailAddress
    from msgraph.generated.models.internet_message_header import InternetMessageHeader
    from msgraph.generated.models.item_body import ItemBody
    from msgraph.generated.models.message import Message
    from msgraph.generated.models.o_data_errors.o_data_error import ODataError
    from msgraph.generated.models.recipient import Recipient
    from msgraph.generated.users.item.send_mail.send_mail_post_request_body import SendMailPostRequestBody

    sender = graph_server.tenant.add_mailbox("smtp-guard-notify", type="SharedMailbox", smtp=True)

    def mail(to: list[str], cc: list[str] = (), header: str = "X-SMTP-Guard-Request") -> SendMailPostRequestBody:  # type: ignore[assignment]
        return SendMailPostRequestBody(
            message=Message(
                subject="SMTP AUTH exception request: printer@contoso",
                body=ItemBody(content_type=BodyType.Html, content="<p>Please <b>approve</b></p>"),
                to_recipients=[Recipient(email_address=EmailAddress(address=a)) for a in to],
                cc_recipients=[Recipient(email_address=EmailAddress(address=a)) for a in cc],
                internet_message_headers=[InternetMessageHeader(name=header, value="req-1")],
            ),
            save_to_sent_items=False,
        )

    await graph.users.by_user_id(sender.primary_smtp_address).send_mail.post(
        mail(["approver@contoso.onmicrosoft.com", "sec@contoso.onmicrosoft.com"], ["owner@contoso.onmicrosoft.com"])
    )
    [sent] = graph_server.tenant.sent_mail
    assert sent["from"] == sender.primary_smtp_address and sent["sender_type"] == "SharedMailbox"
    assert sent["to"] == ["approver@contoso.onmicrosoft.com", "sec@contoso.onmicrosoft.com"]
    assert sent["cc"] == ["owner@contoso.onmicrosoft.com"]
    assert sent["subject"] == "SMTP AUTH exception request: printer@contoso"
    assert sent["content_type"] == "html" and "<b>approve</b>" in sent["body"]
    assert sent["headers"] == {"X-SMTP-Guard-Request": "req-1"} and sent["save_to_sent_items"] is False
    assert sent["message"]["toRecipients"][0]["emailAddress"]["address"] == "approver@contoso.onmicrosoft.com"

    with pytest.raises(ODataError) as err:
        await graph.users.by_user_id("ghost@contoso.onmicrosoft.com").send_mail.post(mail(["a@contoso.com"]))
    assert err.value.response_status_code == 404 and err.value.error.code == "ErrorInvalidUser"
    with pytest.raises(ODataError) as err:
        await graph.users.by_user_id(sender.primary_smtp_address).send_mail.post(mail([]))
    assert err.value.response_status_code == 400 and err.value.error.code == "ErrorInvalidRecipients"
    with pytest.raises(ODataError) as err:
        await graph.users.by_user_id(sender.primary_smtp_address).send_mail.post(mail(["a@contoso.com"], header="Ref"))
    assert err.value.error.code == "InvalidInternetMessageHeader"
    assert len(graph_server.tenant.sent_mail) == 1

    # Two transient failures: the SDK's retry handler honours Retry-After and the third try lands.
    graph_server.calllog.clear()
    graph_server.faults.configure(send_mail_failures=2)
    await graph.users.by_user_id(sender.user_principal_name).send_mail.post(mail(["a@contoso.com"]))
    assert len(graph_server.tenant.sent_mail) == 2
    path = f"/graph/v1.0/users/{sender.user_principal_name}/sendMail"
    assert [e["status"] for e in graph_server.calllog.entries() if e["cmdlet"] == f"POST {path}"] == [503, 503, 202]


async def test_graph_sdk_send_mail_mime(graph: Any, graph_server: EmulatorServer) -> None:
    """HTML with a plain-text alternative: sendMail's MIME form (text/plain body, base64 of the message)."""
    import base64
    from email.message import EmailMessage

    from kiota_abstractions.method import Method
    from kiota_abstractions.request_information import RequestInformation
    from msgraph.generated.models.o_data_errors.o_data_error import ODataError

    sender = graph_server.tenant.add_mailbox("mime-notify", type="SharedMailbox", smtp=True)
    builder = graph.users.by_user_id(sender.primary_smtp_address).send_mail

    async def send(payload: bytes) -> None:
        info = RequestInformation(Method.POST, builder.url_template, builder.path_parameters)
        info.set_stream_content(payload, "text/plain")
        await builder.request_adapter.send_no_response_content_async(info, {"XXX": ODataError})

    mime = EmailMessage()
    mime["From"] = sender.primary_smtp_address
    mime["To"] = "Avery <avery@contoso.onmicrosoft.com>, blake@contoso.onmicrosoft.com"
    mime["Subject"] = "Approve SMTP AUTH for scanner"
    mime["X-SMTP-Guard-Request"] = "req-9"
    mime.set_content("Plain: approve at https://x/y")
    mime.add_alternative("<p>HTML: <a href='https://x/y'>approve</a></p>", subtype="html")
    await send(base64.b64encode(mime.as_bytes()))
    [sent] = graph_server.tenant.sent_mail
    assert sent["mime"] is True and sent["from"] == sender.primary_smtp_address
    assert sent["to"] == ["avery@contoso.onmicrosoft.com", "blake@contoso.onmicrosoft.com"]
    assert sent["subject"] == "Approve SMTP AUTH for scanner" and sent["content_type"] == "html"
    assert "HTML: <a" in sent["html_body"] == sent["body"] and sent["text_body"].startswith("Plain: approve")
    assert sent["mime_content_type"] == "multipart/alternative"
    assert sent["headers"] == {"X-SMTP-Guard-Request": "req-9"}
    with pytest.raises(ODataError) as err:
        await send(b"this is not base64!")
    assert err.value.response_status_code == 400
    assert err.value.error.code == "ErrorMimeContentInvalidBase64String"


async def test_graph_sdk_signins(graph: Any, graph_server: EmulatorServer) -> None:
    from msgraph.generated.audit_logs.sign_ins.sign_ins_request_builder import SignInsRequestBuilder
    from msgraph.generated.models.o_data_errors.o_data_error import ODataError

    t = graph_server.tenant
    seeded_ids = {s["userId"] for s in t.signins}
    owners = {m.external_directory_object_id: m for m in t.snapshot()}
    assert seeded_ids and all(owners[i].smtp_client_authentication_disabled is False for i in seeded_ids)

    mb = _user_mailboxes(graph_server, smtp=True)[0]
    now = datetime.now(UTC).replace(microsecond=0)
    t.add_signin(mb.user_principal_name, when=now - timedelta(days=40))
    t.add_signin(mb.user_principal_name, when=now - timedelta(days=2), status_error_code=50126)
    t.add_signin(mb.external_directory_object_id, when=now - timedelta(days=1), ip="198.51.100.7")
    t.add_signin(mb.user_principal_name, when=now - timedelta(hours=1), client_app_used="Browser")

    since = (now - timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    flt = (
        f"userId eq '{mb.external_directory_object_id}' and clientAppUsed eq 'Authenticated SMTP' "
        f"and createdDateTime ge {since}"
    )
    resp = await graph.audit_logs.sign_ins.get(request_configuration=_query(SignInsRequestBuilder, filter=flt))
    assert [s.ip_address for s in resp.value] == ["198.51.100.7", "203.0.113.10"]  # newest first
    assert resp.value[1].status.error_code == 50126 and resp.value[0].status.error_code == 0
    assert resp.value[0].user_principal_name == mb.user_principal_name
    assert resp.value[0].created_date_time == now - timedelta(days=1)

    flt = f"userPrincipalName eq '{mb.user_principal_name}'"
    resp = await graph.audit_logs.sign_ins.get(request_configuration=_query(SignInsRequestBuilder, filter=flt, top=3))
    assert len(resp.value) == 3 and resp.value[0].client_app_used == "Browser" and resp.odata_next_link
    rest = await graph.audit_logs.sign_ins.with_url(resp.odata_next_link).get()
    assert len(rest.value) == 1 and rest.odata_next_link is None

    with pytest.raises(ODataError) as err:  # a quoted date is a client bug Graph rejects too
        await graph.audit_logs.sign_ins.get(
            request_configuration=_query(SignInsRequestBuilder, filter=f"createdDateTime ge '{since}'")
        )
    assert err.value.response_status_code == 400

    t.premium = False
    with pytest.raises(ODataError) as err:
        await graph.audit_logs.sign_ins.get()
    assert err.value.response_status_code == 403
    assert err.value.error.code == "Authentication_RequestFromNonPremiumTenantOrB2CTenant"


async def test_graph_sdk_blocker_reads(graph: Any, graph_server: EmulatorServer) -> None:
    from msgraph.generated.models.conditional_access_client_app import ConditionalAccessClientApp
    from msgraph.generated.models.conditional_access_grant_control import ConditionalAccessGrantControl
    from msgraph.generated.models.conditional_access_policy_state import ConditionalAccessPolicyState

    sd = await graph.policies.identity_security_defaults_enforcement_policy.get()
    assert sd.is_enabled is False and sd.id == "00000000-0000-0000-0000-000000000005"
    graph_server.tenant.security_defaults = True
    assert (await graph.policies.identity_security_defaults_enforcement_policy.get()).is_enabled is True

    assert (await graph.identity.conditional_access.policies.get()).value == []
    graph_server.tenant.block_legacy_auth_policy()
    graph_server.tenant.block_legacy_auth_policy("enabledForReportingButNotEnforced")
    policies = (await graph.identity.conditional_access.policies.get()).value
    assert [p.state for p in policies] == [
        ConditionalAccessPolicyState.Enabled,
        ConditionalAccessPolicyState.EnabledForReportingButNotEnforced,
    ]
    p = policies[0]
    assert p.display_name == "Block legacy authentication"
    assert p.conditions.client_app_types == [
        ConditionalAccessClientApp.ExchangeActiveSync,
        ConditionalAccessClientApp.Other,
    ]
    assert p.conditions.users.include_users == ["All"]
    assert p.grant_controls.built_in_controls == [ConditionalAccessGrantControl.Block]


async def test_graph_faults_and_call_log(graph: Any, graph_server: EmulatorServer) -> None:
    from msgraph.generated.models.o_data_errors.o_data_error import ODataError

    upn = _user_mailboxes(graph_server)[0].user_principal_name
    graph_server.faults.configure(graph_down=True)
    with pytest.raises(ODataError) as err:
        await graph.users.by_user_id(upn).get(request_configuration=_no_retry())
    assert err.value.response_status_code == 503
    graph_server.faults.configure(graph_down=False)
    assert (await graph.users.by_user_id(upn).get()).user_principal_name == upn
    entries = [e for e in graph_server.calllog.entries() if e["kind"] == "graph"]
    assert [(e["cmdlet"], e["status"], e["retry_after"]) for e in entries] == [
        (f"GET /graph/v1.0/users/{upn}", 503, 1.0),
        (f"GET /graph/v1.0/users/{upn}", 200, None),
    ]
    with pytest.raises(ValueError):
        graph_server.faults.configure(graph_down="yes")


async def test_graph_raw_shapes_and_teams_webhook(
    gsession: aiohttp.ClientSession, graph_server: EmulatorServer
) -> None:
    session = gsession
    graph_server.faults.reset()
    token = await get_token(session, graph_server, "graph")
    headers = {"Authorization": f"Bearer {token}", "client-request-id": "abc"}
    g = f"{graph_server.graph_endpoint}/v1.0"
    graph_server.faults.configure(graph_down=True)
    async with session.get(f"{g}/organization", headers=headers) as r:
        assert r.status == 503 and r.headers["Retry-After"] == "1"
        inner = (await r.json())["error"]["innerError"]
        assert inner["client-request-id"] == "abc" and {"date", "request-id"} <= set(inner)
    graph_server.faults.reset()
    async with session.get(f"{g}/users/nobody@contoso.onmicrosoft.com", headers=headers) as r:
        body = await r.json()
        assert r.status == 404 and body["error"]["code"] == "Request_ResourceNotFound"
    async with session.get(f"{g}/notARealSegment", headers=headers) as r:
        assert r.status == 400 and "notARealSegment" in (await r.json())["error"]["message"]
    async with session.get(f"{g}/auditLogs/signIns") as r:  # no token
        assert r.status == 401 and (await r.json())["error"]["code"] == "InvalidAuthenticationToken"

    card = {"type": "AdaptiveCard", "version": "1.4", "body": [{"type": "TextBlock", "text": "New request"}]}
    payload = {
        "type": "message",
        "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive", "content": card}],
    }
    url = f"{graph_server.base_url}/teams/workflows/abc123/triggers/manual/paths/invoke?api-version=1&sig=xyz"
    async with session.post(url, json=payload) as r:
        assert r.status == 202 and await r.read() == b""
    async with session.post(url, data=b"not json") as r:
        assert r.status == 400
    async with session.get(f"{graph_server.base_url}/_emulator/teams") as r:
        [post] = await r.json()
    assert post["cards"] == [card] and post["query"]["sig"] == "xyz"
    assert graph_server.calllog.count(kind="teams") == 2


async def test_graph_control_api(gsession: aiohttp.ClientSession, graph_server: EmulatorServer) -> None:
    session = gsession
    base = f"{graph_server.base_url}/_emulator"
    async with session.get(f"{base}/users") as r:
        users = await r.json()
    assert len(users) == len(_user_mailboxes(graph_server))
    assert set(users[0]) == {"id", "userPrincipalName", "displayName", "mail"}
    async with session.post(f"{base}/users", json={"upn": "admin.nomail", "with_mailbox": False}) as r:
        bare = await r.json()
        assert r.status == 201 and bare["mail"] is None
    async with session.post(
        f"{base}/groups", json={"display_name": "Approvers", "members": [users[0]["id"], bare["id"]]}
    ) as r:
        assert r.status == 201
        gid = (await r.json())["id"]
    assert graph_server.tenant.member_groups(bare["id"], [gid]) == [gid]
    async with session.post(f"{base}/groups", json={"display_name": "X", "members": ["ghost@nowhere"]}) as r:
        assert r.status == 404
    async with session.post(
        f"{base}/signins",
        json={"user": users[0]["userPrincipalName"], "when": "2026-11-02T10:00:00Z", "status_error_code": 50126},
    ) as r:
        entry = await r.json()
        assert r.status == 201 and entry["createdDateTime"] == "2026-11-02T10:00:00Z"
        assert entry["status"]["errorCode"] == 50126 and entry["userId"] == users[0]["id"]
    async with session.put(
        f"{base}/graph", json={"premium": False, "security_defaults": True, "block_legacy_auth": "enabled"}
    ) as r:
        state = await r.json()
    assert state["premium"] is False and state["security_defaults"] is True
    assert [p["state"] for p in state["conditional_access_policies"]] == ["enabled"]
    async with session.put(f"{base}/graph", json={"premium": True, "block_legacy_auth": "disabled"}) as r:
        assert [p["state"] for p in (await r.json())["conditional_access_policies"]] == ["disabled"]
    async with session.put(f"{base}/graph", json={"block_legacy_auth": None, "security_defaults": False}) as r:
        assert (await r.json())["conditional_access_policies"] == []
    async with session.put(f"{base}/graph", json={"premium": "yes"}) as r:
        assert r.status == 400
    graph_server.tenant.sent_mail.append({"id": "m1", "subject": "s"})
    async with session.get(f"{base}/mail") as r:
        assert [m["id"] for m in await r.json()] == ["m1"]
    async with session.delete(f"{base}/mail") as r:
        assert r.status == 200
    assert graph_server.tenant.sent_mail == []
    async with session.put(f"{base}/faults", json={"graph_down": True, "send_mail_failures": 2}) as r:
        assert (await r.json())["send_mail_failures"] == 2
    graph_server.faults.reset()


def test_seeded_signins_are_deterministic() -> None:
    now = datetime(2026, 11, 28, tzinfo=UTC)
    a, b = Tenant(), Tenant()
    a.seed(3000, now=now)
    b.seed(3000, now=now)
    assert a.signins and a.signins == b.signins
    assert all(s["createdDateTime"] <= "2026-11-28T00:00:00Z" for s in a.signins)
    assert len({s["userId"] for s in a.signins}) <= 40


async def test_new_authentication_policy_and_set_user_assign_it(
    session: aiohttp.ClientSession, server: EmulatorServer, token: str
) -> None:
    """New-AuthenticationPolicy blocks every Basic protocol not switched on; Set-User assigns it, by
    name or back to none, and refuses an unknown policy or user as Exchange does."""
    mailbox = server.tenant.snapshot()[0]
    saved = list(server.tenant.authentication_policies)
    try:
        url = invoke_url(server)
        status, body, _ = await post(session, url, cmdlet("New-AuthenticationPolicy", Name="Guard OAuth only"), token)
        assert status == 200 and body["value"][0]["AllowBasicAuthSmtp"] is False
        assert body["value"][0]["AllowBasicAuthImap"] is False and body["value"][0]["Identity"] == "Guard OAuth only"
        status, body, _ = await post(session, url, cmdlet("New-AuthenticationPolicy", Name="guard oauth ONLY"), token)
        assert status == 400 and "ADObjectAlreadyExistsException" in json.dumps(body)
        with_smtp = cmdlet("New-AuthenticationPolicy", Name="Allow SMTP", AllowBasicAuthSmtp=True)
        status, body, _ = await post(session, url, with_smtp, token)
        assert status == 200 and body["value"][0]["AllowBasicAuthSmtp"] is True

        assign = cmdlet("Set-User", Identity=mailbox.guid, AuthenticationPolicy="GUARD OAuth only")
        status, body, _ = await post(session, url, assign, token)
        assert status == 200 and body["value"] == []
        assert server.tenant.user_authentication_policies[mailbox.guid] == "Guard OAuth only"
        _, body, _ = await post(session, url, cmdlet("Get-User", Identity=mailbox.guid), token)
        assert body["value"][0]["AuthenticationPolicy"] == "Guard OAuth only"
        _, body, _ = await post(session, url, assign, token)
        assert body["@adminapi.warnings"] and "no settings" in body["@adminapi.warnings"][0]  # unchanged

        unknown = cmdlet("Set-User", Identity=mailbox.guid, AuthenticationPolicy="No such policy")
        status, body, _ = await post(session, url, unknown, token)
        assert status == 404 and "ManagementObjectNotFoundException" in json.dumps(body)
        nobody = cmdlet("Set-User", Identity=str(uuid.uuid4()), AuthenticationPolicy=None)
        status, body, _ = await post(session, url, nobody, token)
        assert status == 404 and "ManagementObjectNotFoundException" in json.dumps(body)
        clear = cmdlet("Set-User", Identity=mailbox.guid, AuthenticationPolicy=None)
        status, _, _ = await post(session, url, clear, token)
        assert status == 200 and mailbox.guid not in server.tenant.user_authentication_policies
    finally:
        server.tenant.authentication_policies[:] = saved
        server.tenant.user_authentication_policies.pop(mailbox.guid, None)
