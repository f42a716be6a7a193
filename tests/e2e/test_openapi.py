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

from tests.workflow_support import Site

REPO = Path(__file__).resolve().parents[2]
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
def api(site: Site) -> tuple[str, dict[str, str]]:
    cookie = site.host.session_cookie(site.people.approver.external_directory_object_id)
    headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in cookie.items()), "Accept": "application/json"}
    return site.host.base_url, headers


@SCHEMA.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case: schemathesis.Case, api: tuple[str, dict[str, str]]) -> None:
    base_url, headers = api
    response = case.call(base_url=base_url, headers=headers, timeout=30)
    GENERATED[f"{case.method} {case.path}"] += 1
    STATUSES[response.status_code] += 1
    case.validate_response(response, checks=[not_a_server_error])
