"""schemathesis against docs/openapi.yaml on the local host: generated requests must never get a 5xx.

The caller is a signed-in approver (the most privileged role). How many requests were generated is
written to .artifacts/schemathesis.json and printed at the end of the module.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from devservices.localhost import LocalHost
from emulator.server import EmulatorServer
from tests.workflow_support import add_people, run_async

REPO = Path(__file__).resolve().parent.parent
SCHEMA = schemathesis.openapi.from_path(str(REPO / "docs" / "openapi.yaml"))
GENERATED: Counter[str] = Counter()
STATUSES: Counter[int] = Counter()
EXAMPLES = 100  # per operation


@pytest.fixture(scope="module", autouse=True)
def report() -> Iterator[None]:
    yield
    out = REPO / ".artifacts" / "schemathesis.json"
    out.parent.mkdir(exist_ok=True)
    data = {"requests": sum(GENERATED.values()), "by_operation": GENERATED, "by_status": STATUSES}
    out.write_text(json.dumps(data, indent=2, default=str))
    print(f"\nschemathesis: {data['requests']} requests, statuses {dict(sorted(STATUSES.items()))}")


@pytest.fixture
def api(
    app_env: dict[str, str], emulator: EmulatorServer, storage: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, dict[str, str]]]:
    from devservices.azurite import free_port
    from shared.clients import close_all
    from shared.identity import build_credential
    from shared.settings import load_settings
    from shared.store import Store

    people = add_people(emulator.tenant)
    port = free_port()
    monkeypatch.setenv("PUBLIC_BASE_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("NOTIFY_FROM", people.notify.primary_smtp_address)
    monkeypatch.setenv("APPROVER_GROUP_ID", people.group_id)

    async def install() -> None:
        credential = build_credential()
        async with Store.from_config(load_settings().storage, credential) as store:
            await store.initialise(emulator.tenant.tenant_id, "test")
        await credential.close()

    run_async(install())
    users = [
        {
            "id": m.external_directory_object_id,
            "userPrincipalName": m.user_principal_name,
            "displayName": m.display_name,
        }
        for m in (people.approver, people.requester)
    ]
    with LocalHost(port=port, users=users, on_stop=[close_all]) as host:
        cookie = host.session_cookie(people.approver.external_directory_object_id)
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in cookie.items()), "Accept": "application/json"}
        yield host.base_url, headers


@SCHEMA.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case: schemathesis.Case, api: tuple[str, dict[str, str]]) -> None:
    base_url, headers = api
    response = case.call(base_url=base_url, headers=headers, timeout=30)
    GENERATED[f"{case.method} {case.path}"] += 1
    STATUSES[response.status_code] += 1
    case.validate_response(response, checks=[not_a_server_error])
