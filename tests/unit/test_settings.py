"""Settings: validated when used, never at import; every error names its setting."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from shared.settings import EnforcementMode, SettingsError, load_settings, schedule

BASE = {"AZURE_TENANT_ID": "72f988bf-86f1-41af-91ab-2d7cd011db47", "AzureWebJobsStorage": "UseDevelopmentStorage=true"}


def test_defaults() -> None:
    settings = load_settings(BASE)
    assert settings.enforcement_mode is EnforcementMode.REPORT
    assert settings.max_changes_per_run == 500
    assert settings.exchange_concurrency == 4
    assert settings.sweep_time_budget_seconds == 480
    assert settings.exception_max_days == 180
    assert settings.exchange_endpoint == "https://outlook.office365.com"
    assert settings.graph_endpoint == "https://graph.microsoft.com"
    assert settings.exchange_scope == "https://outlook.office365.com/.default"


def test_trailing_semicolon_on_development_storage_is_tolerated() -> None:
    settings = load_settings({**BASE, "AzureWebJobsStorage": "UseDevelopmentStorage=true;"})
    assert settings.storage.connection_string == "UseDevelopmentStorage=true"


def test_identity_based_storage() -> None:
    env = {"AZURE_TENANT_ID": BASE["AZURE_TENANT_ID"], "AzureWebJobsStorage__accountName": "guardstore01"}
    assert load_settings(env).storage.table_endpoint == "https://guardstore01.table.core.windows.net"


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("AZURE_TENANT_ID", "", "AZURE_TENANT_ID is missing"),
        ("AZURE_TENANT_ID", "contoso", "AZURE_TENANT_ID is invalid: expected a GUID"),
        ("AZURE_CLIENT_ID", "nope", "AZURE_CLIENT_ID is invalid"),
        ("ENFORCEMENT_MODE", "enforcing", "ENFORCEMENT_MODE is invalid: expected report or enforce"),
        ("MAX_CHANGES_PER_RUN", "0", "MAX_CHANGES_PER_RUN is invalid: expected a whole number from 1"),
        ("MAX_CHANGES_PER_RUN", "lots", "MAX_CHANGES_PER_RUN is invalid"),
        ("EXCHANGE_CONCURRENCY", "64", "EXCHANGE_CONCURRENCY is invalid"),
        ("EXCHANGE_ENDPOINT", "http://outlook.office365.com", "EXCHANGE_ENDPOINT is invalid: expected an https://"),
        ("AzureWebJobsStorage", "", "AzureWebJobsStorage is missing"),
        ("AzureWebJobsStorage", "@Microsoft.KeyVault(SecretUri=https://kv/secrets/x)", "is unresolved"),
        ("EXCEPTION_MAX_DAYS", "-3", "EXCEPTION_MAX_DAYS is invalid"),
    ],
)
def test_bad_values_name_the_setting(name: str, value: str, fragment: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({**BASE, name: value})
    assert fragment in str(caught.value)
    assert caught.value.name == name


def test_schedules_have_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SWEEP_SCHEDULE", raising=False)
    assert schedule("SWEEP_SCHEDULE") == "0 */15 * * * *"
    monkeypatch.setenv("RECONCILE_SCHEDULE", "0 0 1 * * *")
    assert schedule("RECONCILE_SCHEDULE") == "0 0 1 * * *"


def test_function_app_indexes_with_no_settings_at_all() -> None:
    """The host imports function_app before any setting is validated; it must not fail."""
    code = (
        "import function_app\n"
        "fs = {f.get_function_name(): f for f in function_app.app.get_functions()}\n"
        "print(sorted(fs))\n"
        "print(fs['full_reconcile'].get_bindings()[0].schedule)\n"
        "print(fs['incremental_sweep'].get_bindings()[0].schedule)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(__import__("pathlib").Path(__file__).parents[2]),
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert ast.literal_eval(lines[0]) == sorted(
        [
            "full_reconcile",
            "incremental_sweep",
            "exception_form",
            "exception_submit",
            "exception_status",
            "exception_revoke",
            "approval_page",
            "approval_decision",
            "health",
            "send_notifications",
            "exception_lifecycle",
        ]
    )
    assert lines[1] == "0 30 2 * * *"
    assert lines[2] == "0 */15 * * * *"
