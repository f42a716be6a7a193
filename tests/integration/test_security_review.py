"""Findings of the outside security review of the request and approval endpoints, one test (or a few)
per finding, through the app's HTTP functions, Azurite and the tenant emulator. The browser part of
the CSRF finding is in test_browser.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import azure.functions as func
import pytest
from aiohttp import ClientSession, web
from itsdangerous import URLSafeTimedSerializer
from yarl import URL

from emulator.server import EmulatorServer
from shared.bootstrap import open_store
from shared.model.notifications import NotificationKind
from shared.model.requests import RequestStatus
from shared.storage import Store
from tests.workflow_support import (
    PUBLIC_BASE_URL,
    People,
    call,
    csrf_from,
    open_approval,
    post_decision,
    send_outbox,
    submit_form,
    submit_json,
    submitted_request,
    valid_request,
)


def _form_post(user: Any, fields: dict[str, str], cookie: str, **headers: str) -> Any:
    return call("exception_submit", "POST", "/api/exceptions", user=user, form=fields, cookie=cookie, headers=headers)


async def _pending(store: Store) -> list[Any]:
    return await store.requests.query("Status eq @s", {"s": "pending"})


# -- 1. CSRF --------------------------------------------------------------------------------------------


async def test_origin_null_and_a_sibling_origin_are_refused(people: People, store: Store) -> None:
    page = await call("exception_form", "GET", "/api/exceptions/new", user=people.requester)
    token, cookie = csrf_from(page)
    fields = valid_request(people.printer.primary_smtp_address, people.requester.primary_smtp_address)
    fields["csrf_token"] = token
    for headers in (
        {"origin": "null"},  # what Chromium sends after a cross-site redirect
        {"sec-fetch-site": "same-site", "origin": "null"},  # a sibling origin is same-site, not same-origin
        {"sec-fetch-site": "cross-site"},
        {"referer": "http://localhost:9999/attack"},
        {"origin": PUBLIC_BASE_URL, "sec-fetch-site": "same-site"},  # Fetch Metadata wins over Origin
    ):
        refused = await _form_post(people.requester, fields, cookie, **headers)
        assert refused.status == 403, headers
    assert await _pending(store) == []
    for headers in ({"sec-fetch-site": "same-origin"}, {"origin": PUBLIC_BASE_URL}):
        ok = await _form_post(people.requester, fields, cookie, **headers)
        assert ok.status in (303, 409), (headers, ok.text)  # the second is the pending mailbox
    assert len(await _pending(store)) == 1


async def test_a_form_post_that_says_nothing_of_its_origin_is_refused(people: People, store: Store) -> None:
    page = await call("exception_form", "GET", "/api/exceptions/new", user=people.requester)
    token, cookie = csrf_from(page)
    fields = valid_request(people.printer.primary_smtp_address, people.requester.primary_smtp_address)
    refused = await _form_post(people.requester, {**fields, "csrf_token": token}, cookie, origin="")  # nor Referer
    assert refused.status == 403
    assert await _pending(store) == []


async def test_a_planted_cookie_and_another_users_token_are_refused(people: People, store: Store) -> None:
    fields = valid_request(people.printer.primary_smtp_address, people.requester.primary_smtp_address)
    planted = "A" * 43  # what an attacker who can set a cookie for the host would choose
    forged = await _form_post(people.requester, {**fields, "csrf_token": planted}, f"smtpguard_csrf={planted}")
    assert forged.status == 403
    outsiders_page = await call("exception_form", "GET", "/api/exceptions/new", user=people.outsider)
    token, cookie = csrf_from(outsiders_page)
    foreign = await _form_post(people.requester, {**fields, "csrf_token": token}, cookie)
    assert foreign.status == 403 and "CSRF" in foreign.text
    assert await _pending(store) == []


async def test_an_expired_token_is_refused(people: People, store: Store) -> None:
    secret = await store.state.csrf_secret()  # the install's key, as a token signed 9 hours ago used it

    class NineHoursAgo(URLSafeTimedSerializer):
        pass

    serializer = NineHoursAgo(secret, salt="smtp-auth-guard/csrf")
    signer = serializer.make_signer()
    signer.get_timestamp = lambda: int(time.time()) - 9 * 3600  # type: ignore[method-assign]
    payload = serializer.dump_payload({"sub": people.requester.external_directory_object_id, "n": "x"})
    old = signer.sign(payload).decode()
    fields = valid_request(people.printer.primary_smtp_address, people.requester.primary_smtp_address)
    expired = await _form_post(people.requester, {**fields, "csrf_token": old}, f"smtpguard_csrf={old}")
    assert expired.status == 403
    fresh = serializer.dumps({"sub": people.requester.external_directory_object_id, "n": "x"})
    accepted = await _form_post(people.requester, {**fields, "csrf_token": fresh}, f"smtpguard_csrf={fresh}")
    assert accepted.status == 303, accepted.text  # the same key and user, only younger: the age decides


async def test_the_csrf_key_is_made_once_by_an_insert_that_every_worker_agrees_on(app_env: dict[str, str]) -> None:
    from azure.data.tables.aio import TableServiceClient

    from shared.microsoft.identity import build_credential
    from shared.settings import load_settings

    settings = load_settings()
    credential = build_credential()
    stores = [open_store(settings, credential) for _ in range(4)]
    try:
        await stores[0].state.initialise("tenant", "test")
        keys = await asyncio.gather(*(s.state.csrf_secret() for s in stores))
    finally:
        for s in stores:
            await s.close()
        await credential.close()
    assert len(set(keys)) == 1 and len(keys[0]) == 32
    async with TableServiceClient.from_connection_string(app_env["AzureWebJobsStorage"]) as service:
        row = await service.get_table_client("SmtpGuardState").get_entity("install", "csrf-secret")
    assert row["Key"] and row["Key"] not in settings.tenant_id


def test_the_cookie_is_host_prefixed_secure_and_strict_over_https() -> None:
    from shared.web.csrf import csrf_token

    request = func.HttpRequest(method="GET", url="https://guard.contoso.com/api/exceptions/new", body=b"")
    token, headers = csrf_token(request, "https://guard.contoso.com", b"k" * 32, "00000000-0000-0000-0000-000000000001")
    cookie = headers["Set-Cookie"]
    assert cookie.startswith(f"__Host-smtpguard_csrf={token};")
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
    assert {"secure", "httponly", "path", "samesite"} <= attributes
    assert "Path=/;" in cookie or cookie.endswith("Path=/")
    assert "SameSite=Strict" in cookie and "Domain" not in cookie
    local = func.HttpRequest(method="GET", url="http://localhost:7071/api/exceptions/new", body=b"")
    _, plain = csrf_token(local, "http://localhost:7071", b"k" * 32, "00000000-0000-0000-0000-000000000001")
    assert plain["Set-Cookie"].startswith("smtpguard_csrf=") and "Secure" not in plain["Set-Cookie"]


# -- 2. deeply nested JSON -----------------------------------------------------------------------------


async def test_deeply_nested_json_is_a_400_not_a_500(people: People) -> None:
    for body in (b"[" * 5000, b'{"mailbox": ' + b"[" * 3000 + b"]" * 3000 + b"}"):
        response = await call(
            "exception_submit",
            "POST",
            "/api/exceptions",
            user=people.requester,
            body=body,
            headers={"content-type": "application/json"},
        )
        assert response.status == 400, response.text
        assert response.json()["error"]
    brackets_in_a_string = {**valid_request("x@contoso.com", ""), "vendor": "[" * 100}
    fine = await call("exception_submit", "POST", "/api/exceptions", user=people.requester, body=brackets_in_a_string)
    assert fine.status in (400, 422) and "body" not in fine.json()["errors"]  # parsed: only its fields are judged


# -- 3. approvers and their own mailbox ----------------------------------------------------------------


async def test_an_approver_cannot_decide_for_their_own_mailbox_or_one_they_own(
    people: People, emulator: EmulatorServer, store: Store
) -> None:
    approver = people.approver
    mine = await submitted_request(people, mailbox=approver.primary_smtp_address)
    page, link = await open_approval(people, emulator, mine)
    assert "your own mailbox" in page.text and 'name="decision"' not in page.text
    form_page = await call("exception_form", "GET", "/api/exceptions/new", user=approver)  # for a CSRF token
    refused = await post_decision(people, mine, form_page, link)
    assert refused.status == 403 and "you cannot approve a request for your own mailbox" in refused.text
    assert (await store.requests.get(mine))[0].status is RequestStatus.PENDING

    owned = await submit_form(people, valid_request(people.printer.primary_smtp_address, approver.primary_smtp_address))
    assert owned.status == 303, owned.text
    owned_id = owned.headers["Location"].rsplit("/", 1)[1]
    page, link = await open_approval(people, emulator, owned_id)
    assert "a mailbox you own" in page.text
    refused = await post_decision(people, owned_id, form_page, link)
    assert refused.status == 403 and "you cannot approve a request for a mailbox you own" in refused.text
    assert (await store.requests.get(owned_id))[0].status is RequestStatus.PENDING
    # Another approver may.
    page, link = await open_approval(people, emulator, owned_id, user=people.second_approver)
    decided = await post_decision(people, owned_id, page, link, user=people.second_approver)
    assert decided.status == 200, decided.text


# -- 4. input rules ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("days", "1_0"),
        ("days", "٣٠"),  # Arabic-Indic digits
        ("days", "+30"),
        ("vendor", "Ricoh\nBcc: everyone"),
        ("contact", "ext. 4411\u2028second line"),
        ("ticket", "INC-1\u2029INC-2"),
        ("mailbox", "*@contoso.onmicrosoft.com"),
        ("owner", "boss*@contoso.onmicrosoft.com"),
    ],
)
async def test_input_looser_than_promised_is_refused(
    people: People, emulator: EmulatorServer, store: Store, field: str, value: str
) -> None:
    fields = valid_request(people.printer.primary_smtp_address, people.requester.primary_smtp_address)
    response = await call(
        "exception_submit", "POST", "/api/exceptions", user=people.requester, body={**fields, field: value}
    )
    assert response.status == 400, response.text
    assert field in response.json()["errors"]
    assert not any("*" in str(e.get("identity") or "") for e in emulator.calllog.entries())
    assert await _pending(store) == []


async def test_a_multiline_detail_keeps_its_line_breaks(people: People, store: Store) -> None:
    detail = "Firmware 2.1 has no OAuth.\r\nVendor ticket 88."
    response = await submit_form(
        people,
        valid_request(
            people.printer.primary_smtp_address, people.requester.primary_smtp_address, alternatives_detail=detail
        ),
    )
    assert response.status == 303, response.text
    (request,) = await _pending(store)
    assert request.alternatives_detail == "Firmware 2.1 has no OAuth.\nVendor ticket 88."


async def test_the_owner_must_be_a_user_of_the_tenant_and_is_kept_by_object_id(
    people: People, emulator: EmulatorServer, store: Store
) -> None:
    printer = people.printer.primary_smtp_address
    external = await call(
        "exception_submit",
        "POST",
        "/api/exceptions",
        user=people.requester,
        body=valid_request(printer, "someone@fabrikam.example"),
    )
    assert external.status == 422 and "owner" in external.json()["errors"]
    assert await _pending(store) == []
    ok = await call(
        "exception_submit",
        "POST",
        "/api/exceptions",
        user=people.requester,
        body=valid_request(printer, people.approver.primary_smtp_address.upper()),
    )
    assert ok.status == 201, ok.text
    (request,) = await _pending(store)
    assert request.owner == people.approver.primary_smtp_address
    assert request.owner_id == people.approver.external_directory_object_id


def test_cli_exceptions_add_resolves_the_owner(cli: Any, emulator: EmulatorServer, app_env: dict[str, str]) -> None:
    printer = emulator.tenant.add_mailbox("label-printer", type="SharedMailbox", smtp=True)
    boss = emulator.tenant.add_mailbox("dana.boss", smtp=True)
    assert cli("init").code == 0
    unknown = cli(
        "exceptions", "add", "--mailbox", printer.primary_smtp_address, "--days", "10", "--reason", "x",
        "--owner", "nobody@fabrikam.example",
    )  # fmt: skip
    assert unknown.code == 2 and "owner" in unknown.err and len(unknown.err.strip().splitlines()) == 1
    wildcard = cli("exceptions", "add", "--mailbox", "label-*@contoso.com", "--days", "10", "--reason", "x")
    assert wildcard.code == 2 and "mailbox" in wildcard.err
    added = cli(
        "exceptions", "add", "--mailbox", printer.primary_smtp_address, "--days", "10", "--reason", "x",
        "--owner", boss.primary_smtp_address,
    )  # fmt: skip
    assert added.code == 0, added.err
    from azure.data.tables import TableServiceClient

    with TableServiceClient.from_connection_string(app_env["AzureWebJobsStorage"]) as service:
        (row,) = service.get_table_client("SmtpGuardExceptions").query_entities(
            "PartitionKey eq @pk", parameters={"pk": printer.guid}
        )
    assert row["Owner"] == boss.primary_smtp_address and row["OwnerId"] == boss.external_directory_object_id


async def test_read_access_is_keyed_on_object_ids_not_the_username_claim(
    people: People, emulator: EmulatorServer
) -> None:
    request_id = await submitted_request(people)  # owner: the requester
    # Someone whose mutable preferred_username now reads like the owner's address, with another object id.
    impostor = emulator.tenant.add_mailbox("imp.ostor", smtp=True)
    impostor.user_principal_name = people.requester.user_principal_name
    status = await call(
        "exception_status", "GET", f"/api/exceptions/{request_id}", user=impostor, route_params={"id": request_id}
    )
    assert status.status == 403


# -- 5. existence oracles ------------------------------------------------------------------------------


async def test_outsiders_get_one_answer_whether_a_request_exists_or_not(
    people: People, emulator: EmulatorServer
) -> None:
    real = await submitted_request(people)
    _, link = await open_approval(people, emulator, real)
    ghost = "00000000-0000-4000-8000-000000000000"
    answers = []
    for request_id in (real, ghost):
        status = await call(
            "exception_status", "GET", f"/api/exceptions/{request_id}", user=people.outsider,
            route_params={"id": request_id}, headers={"accept": "application/json"},
        )  # fmt: skip
        outsiders_page = await call(
            "exception_form", "GET", "/api/exceptions/new", user=people.outsider
        )  # a CSRF token of their own
        decision = await post_decision(people, request_id, outsiders_page, link, user=people.outsider)
        answers.append((status.status, status.text, decision.status, decision.text))
    assert answers[0] == answers[1]
    assert answers[0][0] == 403 and answers[0][2] == 403
    approvers_ghost = await call(
        "exception_status", "GET", f"/api/exceptions/{ghost}", user=people.approver, route_params={"id": ghost}
    )
    assert approvers_ghost.status == 404


async def test_a_pending_mailbox_gives_the_other_requests_id_only_to_those_who_may_see_it(people: People) -> None:
    first = await submit_json(people)
    assert first.status == 201
    outsider = await submit_json(people, user=people.outsider)
    assert outsider.status == 409
    assert first.json()["id"] not in outsider.text and "request_id" not in outsider.json()["errors"]
    again = await submit_json(people)
    assert again.status == 409 and again.json()["errors"]["request_id"] == first.json()["id"]


# -- 6. health -----------------------------------------------------------------------------------------


@pytest.fixture
async def counted_storage(app_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[list[str]]:
    """Azurite behind a counting reverse proxy: every storage request the app makes is listed."""
    from devservices.azurite import free_port

    connection = app_env["AzureWebJobsStorage"]
    parts = dict(part.split("=", 1) for part in connection.split(";") if part)
    upstream = parts["TableEndpoint"].rstrip("/")
    upstream_origin = upstream.rsplit("/", 1)[0]
    seen: list[str] = []
    session = ClientSession(auto_decompress=False)

    async def forward(request: web.Request) -> web.StreamResponse:
        seen.append(f"{request.method} {request.path}")
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        target = URL(f"{upstream_origin}{request.raw_path}", encoded=True)  # byte for byte: it is signed
        data = await request.read() or None  # bytes would get a Content-Type, and that is signed too
        async with session.request(
            request.method, target, headers=headers, data=data, skip_auto_headers=("Content-Type",)
        ) as answer:
            body = await answer.read()
            drop = {"content-length", "transfer-encoding", "content-encoding"}
            return web.Response(
                status=answer.status,
                body=body,
                headers={k: v for k, v in answer.headers.items() if k.lower() not in drop},
            )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    account = upstream.rsplit("/", 1)[1]
    parts["TableEndpoint"] = f"http://127.0.0.1:{port}/{account}"
    monkeypatch.setenv("AzureWebJobsStorage", ";".join(f"{k}={v}" for k, v in parts.items()))
    try:
        yield seen
    finally:
        await runner.cleanup()
        await session.close()


async def test_a_burst_of_health_probes_costs_one_storage_read_and_one_credential(
    people: People, counted_storage: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import shared.bootstrap

    built: list[object] = []
    real = shared.bootstrap.build_credential

    def counting() -> Any:
        built.append(object())
        return real()

    monkeypatch.setattr(shared.bootstrap, "build_credential", counting)
    answers = await asyncio.gather(*(call("health", "GET", "/api/health") for _ in range(25)))
    answers += [await call("health", "GET", "/api/health") for _ in range(25)]
    assert [a.status for a in answers] == [200] * 50, answers[0].text
    reads = [r for r in counted_storage if r.startswith("GET")]
    assert len(reads) == 1, counted_storage
    assert len(built) == 1
    assert all(
        a.json() == {"status": "ok", "checks": {"settings": "ok", "storage": "ok"}, "enforcement_hold": False}
        for a in answers
    )


# -- 7. squatting ----------------------------------------------------------------------------------------


async def test_one_person_holds_at_most_three_pending_requests(
    people: People, emulator: EmulatorServer, store: Store
) -> None:
    targets = [emulator.tenant.add_mailbox(f"device-{n}", type="SharedMailbox", smtp=True) for n in range(4)]
    results = [await submit_json(people, mailbox=t.primary_smtp_address) for t in targets]
    assert [r.status for r in results] == [201, 201, 201, 429]
    assert "3 pending requests" in results[3].json()["error"]
    assert emulator.tenant.find(targets[3].guid) is not None
    assert len(await _pending(store)) == 3
    # The fourth mailbox was not reserved: someone else may ask for it.
    other = await submit_json(people, user=people.outsider, mailbox=targets[3].primary_smtp_address)
    assert other.status == 201, other.text
    # A decision gives a slot back.
    first = results[0].json()["id"]
    page, link = await open_approval(people, emulator, first)
    denied = await post_decision(people, first, page, link, decision="deny", comment="no")
    assert denied.status == 200, denied.text
    fifth = emulator.tenant.add_mailbox("device-5", type="SharedMailbox", smtp=True)
    assert (await submit_json(people, mailbox=fifth.primary_smtp_address)).status == 201


async def test_the_mailboxs_user_is_told_when_someone_else_asks(
    people: People, emulator: EmulatorServer, store: Store
) -> None:
    theirs = await submit_json(people, mailbox=people.outsider.primary_smtp_address)
    assert theirs.status == 201, theirs.text
    mine = await submit_json(people, mailbox=people.requester.primary_smtp_address)
    assert mine.status == 201, mine.text
    await send_outbox()
    to_outsider = [m for m in emulator.tenant.sent_mail if people.outsider.primary_smtp_address in str(m.get("to"))]
    assert len(to_outsider) == 1
    assert "asked for SMTP AUTH on your mailbox" in str(to_outsider[0].get("subject"))
    to_requester = [m for m in emulator.tenant.sent_mail if people.requester.primary_smtp_address in str(m.get("to"))]
    assert not any("your mailbox" in str(m.get("subject")) for m in to_requester)
    kinds = {item.kind for item, _ in await store.outbox.due(datetime.now(UTC) + timedelta(days=1))}
    assert NotificationKind.MAILBOX_NOTICE not in kinds  # sent, not left pending


async def test_an_older_tabs_form_still_posts_after_a_new_cookie_was_set(people: People, store: Store) -> None:
    first_tab = await call("exception_form", "GET", "/api/exceptions/new", user=people.requester)
    first_token, _ = csrf_from(first_tab)
    # A second tab opened from a link in a mail: the Strict cookie is not sent, so a new one is set.
    second_tab = await call("exception_form", "GET", "/api/exceptions/new", user=people.requester)
    _, second_cookie = csrf_from(second_tab)
    assert second_cookie != f"smtpguard_csrf={first_token}"
    fields = valid_request(people.printer.primary_smtp_address, people.requester.primary_smtp_address)
    posted = await _form_post(people.requester, {**fields, "csrf_token": first_token}, second_cookie)
    assert posted.status == 303, posted.text


async def test_a_shared_mailbox_or_a_group_is_not_an_owner(people: People, store: Store) -> None:
    response = await call(
        "exception_submit",
        "POST",
        "/api/exceptions",
        user=people.requester,
        body=valid_request(people.printer.primary_smtp_address, people.notify.primary_smtp_address),
    )
    assert response.status == 422 and "not a user of this tenant" in response.json()["errors"]["owner"]
    assert await _pending(store) == []
