"""Shared fixtures: Azurite (real Azure Storage emulator) and the local tenant emulator over HTTPS.

The app reaches both only through settings, exactly as it reaches Azure: AzureWebJobsStorage,
AZURE_AUTHORITY_HOST, EXCHANGE_ENDPOINT, GRAPH_ENDPOINT, and SSL_CERT_FILE for the emulator's CA.
"""

from __future__ import annotations

# aiohttp builds its default TLS context when it is imported, reading SSL_CERT_FILE then; so the
# session's emulator CA must exist before anything imports aiohttp.
import os
import tempfile
from pathlib import Path

from emulator.certs import ensure_ca

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="smtp-guard-tests-"))
SESSION_CA_PATH = _SESSION_DIR / "emulator-ca.pem"
ensure_ca(SESSION_CA_PATH)
os.environ["SSL_CERT_FILE"] = str(SESSION_CA_PATH)
os.environ["REQUESTS_CA_BUNDLE"] = str(SESSION_CA_PATH)

import subprocess  # noqa: E402
import sys  # noqa: E402
from collections.abc import AsyncIterator, Iterator  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
from azure.data.tables.aio import TableServiceClient  # noqa: E402

from devservices.azurite import Azurite, AzuriteError, free_port  # noqa: E402
from devservices.localhost import LocalHost  # noqa: E402
from emulator.server import EmulatorServer  # noqa: E402
from emulator.tenant import Tenant  # noqa: E402
from tests.workflow_support import PUBLIC_BASE_URL, People, Site, add_people, run_async  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def azurite() -> Iterator[str]:
    """A real Azurite table service for the session; yields its connection string."""
    try:
        service = Azurite().start()
    except AzuriteError as err:
        pytest.fail(str(err), pytrace=False)
    try:
        yield service.connection_string
    finally:
        service.stop()


async def _drop_tables(connection_string: str) -> None:
    async with TableServiceClient.from_connection_string(connection_string) as service:
        async for table in service.list_tables():
            await service.delete_table(table.name)


@pytest.fixture
def storage(azurite: str) -> str:
    """An empty storage account for this test (every table dropped first)."""
    run_async(_drop_tables(azurite))
    return azurite


@pytest.fixture
def tenant() -> Tenant:
    """A realistic small tenant: every mailbox type, mixed true/false/null, late-provisioned ones."""
    t = Tenant()
    t.seed(60)
    return t


@pytest.fixture
def emulator(tenant: Tenant) -> Iterator[EmulatorServer]:
    server = EmulatorServer(tenant, ca_path=SESSION_CA_PATH, reuse_ca=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def app_env(emulator: EmulatorServer, storage: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The app settings for this test, also set in os.environ (the app reads nothing else)."""
    env = {
        **emulator.env(),
        "SSL_CERT_FILE": str(SESSION_CA_PATH),
        "REQUESTS_CA_BUNDLE": str(SESSION_CA_PATH),
        "AzureWebJobsStorage": storage,
        "ENFORCEMENT_MODE": "report",
        "EXCHANGE_CONCURRENCY": "4",
    }
    for name in ("MAX_CHANGES_PER_RUN", "SWEEP_TIME_BUDGET_SECONDS", "EXCEPTION_MAX_DAYS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(app_env: dict[str, str]):  # type: ignore[no-untyped-def]
    """Run `python -m shared.cli ...` as a real process with the test's settings."""

    def run(*args: str, env: dict[str, str] | None = None) -> CliResult:
        full_env = {"PATH": os.environ.get("PATH", ""), "HOME": str(_SESSION_DIR)}
        full_env.update(app_env if env is None else env)
        done = subprocess.run(
            [sys.executable, "-m", "shared.cli", *args],
            cwd=REPO,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        return CliResult(done.returncode, done.stdout, done.stderr)

    return run


@pytest.fixture
def cli_process(app_env: dict[str, str]):  # type: ignore[no-untyped-def]
    """Start `python -m shared.cli ...` as a real process and return it running (to be killed)."""
    started: list[subprocess.Popen[str]] = []

    def start(*args: str, **extra_env: str) -> subprocess.Popen[str]:
        env = {"PATH": os.environ.get("PATH", ""), "HOME": str(_SESSION_DIR), **app_env, **extra_env}
        process = subprocess.Popen(
            [sys.executable, "-m", "shared.cli", *args],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate()


@pytest.fixture
async def store(app_env: dict[str, str]) -> AsyncIterator[object]:
    """The app's own Store on this test's Azurite account (read back what runs wrote)."""
    from shared.bootstrap import open_store
    from shared.microsoft.identity import build_credential
    from shared.settings import load_settings

    settings = load_settings()
    credential = build_credential()
    async with open_store(settings, credential) as s:
        yield s
    await credential.close()


@pytest.fixture
async def people(
    app_env: dict[str, str], emulator: EmulatorServer, store: Any, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[People]:
    """The workflow's people in the emulated tenant, with the platform's settings (Easy Auth on)."""
    from shared.bootstrap import close_all

    found = add_people(emulator.tenant)
    monkeypatch.setenv("WEBSITE_AUTH_ENABLED", "True")
    monkeypatch.setenv("PUBLIC_BASE_URL", PUBLIC_BASE_URL)
    monkeypatch.setenv("NOTIFY_FROM", found.notify.primary_smtp_address)
    monkeypatch.setenv("APPROVER_GROUP_ID", found.group_id)
    await store.state.initialise(emulator.tenant.tenant_id, "test")
    yield found
    await close_all()


@pytest.fixture
def site(
    app_env: dict[str, str], emulator: EmulatorServer, storage: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Site]:
    from shared.bootstrap import close_all, open_store
    from shared.microsoft.identity import build_credential
    from shared.settings import load_settings

    people = add_people(emulator.tenant)
    port = free_port()
    base = f"http://localhost:{port}"
    monkeypatch.setenv("PUBLIC_BASE_URL", base)
    monkeypatch.setenv("NOTIFY_FROM", people.notify.primary_smtp_address)
    monkeypatch.setenv("APPROVER_GROUP_ID", people.group_id)

    async def install() -> None:
        credential = build_credential()
        async with open_store(load_settings(), credential) as store:
            await store.state.initialise(emulator.tenant.tenant_id, "test")
        await credential.close()

    run_async(install())
    host = LocalHost(
        port=port,
        users_url=f"{emulator.base_url}/_emulator/users",
        tenant_id=emulator.tenant.tenant_id,
        on_stop=[close_all],
    )
    with host:
        yield Site(base, people, host)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Browser tests last: Playwright's sync API keeps an event loop running in the main thread for the
    rest of the session, and the async tests need that thread's loop slot free."""
    items.sort(key=lambda item: item.path.name == "test_browser.py")
