"""The local tenant emulator, driven over HTTPS like the app drives Microsoft 365."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest

from emulator import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, EmulatorServer, Tenant
from emulator.exchange import CONCURRENCY_MESSAGE

REPO = Path(__file__).resolve().parents[1]
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
    assert calls["count"] == 2 and {e["cmdlet"] for e in calls["entries"]} == {
        "Get-TransportConfig",
        "Get-AuthenticationPolicy",
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
