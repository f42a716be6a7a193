"""`inventory`: who has SMTP AUTH effectively on and who used it, read from the emulated tenant only."""

from __future__ import annotations

import csv
import io
import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from emulator.server import EmulatorServer
from emulator.tenant import Tenant

NOW = datetime.now(UTC)


@pytest.fixture
def tenant() -> Tenant:
    """Every setting and type, and sign-ins that count, that do not, and that are password spray."""
    t = Tenant()
    t.seed(40, rng_seed=5)
    t.signins.clear()  # only the sign-ins below
    printer = t.add_mailbox("printer@contoso.com", smtp=False, type="SharedMailbox")
    t.add_mailbox("=formula@contoso.com", smtp=False)
    t.add_mailbox("follows.org@contoso.com", smtp=None)
    used_off = t.add_mailbox("used.since@contoso.com", smtp=True)  # used lately, off now: listed
    sprayed = t.add_mailbox("sprayed@contoso.com", smtp=True)  # failures only: not use, not listed
    for hours, ip in ((5, "198.51.100.7"), (30, "198.51.100.8"), (50, "198.51.100.7")):
        t.add_signin(printer.external_directory_object_id, when=NOW - timedelta(hours=hours), ip=ip)
    t.add_signin(printer.user_principal_name, when=NOW - timedelta(hours=2), status_error_code=50126, ip="192.0.2.66")
    t.add_signin(printer.user_principal_name, when=NOW - timedelta(hours=1), client_app_used="Browser")  # not SMTP
    t.add_signin(printer.user_principal_name, when=NOW - timedelta(days=12), ip="198.51.100.9")  # outside --days 7
    t.add_signin(printer.user_principal_name, when=NOW - timedelta(days=40), ip="198.51.100.10")  # outside the log
    t.add_signin(used_off.external_directory_object_id, when=NOW - timedelta(days=3), ip="203.0.113.5")
    for _ in range(4):
        t.add_signin(sprayed.external_directory_object_id, when=NOW - timedelta(days=1), status_error_code=50053)
    return t


def _inventory(cli: Any, *args: str) -> list[dict[str, Any]]:
    result = cli("inventory", "--json", *args)
    assert result.code == 0, result.err
    return json.loads(result.out)


def _exchange_calls(emulator: EmulatorServer) -> int:
    return emulator.calllog.count(kind="invoke") + emulator.calllog.count(kind="batch")


@pytest.mark.parametrize("org_disabled", [False, True])
def test_the_listed_set_is_what_is_effectively_on_or_used(
    cli: Any, emulator: EmulatorServer, org_disabled: bool
) -> None:
    tenant = emulator.tenant
    tenant.org_smtp_client_authentication_disabled = org_disabled
    assert cli("init").code == 0
    assert cli("exceptions", "add", "--mailbox", "printer@contoso.com", "--days", "30", "--reason", "MFP").code == 0
    emulator.calllog.clear()

    rows = _inventory(cli)

    mailboxes = tenant.snapshot()
    on = {
        m.guid
        for m in mailboxes
        if m.smtp_client_authentication_disabled is False
        or (m.smtp_client_authentication_disabled is None and not org_disabled)
    }
    used = {tenant.find("used.since@contoso.com").guid, tenant.find("printer@contoso.com").guid}
    assert {r["mailbox_guid"] for r in rows} == on | used
    by_address = {r["mailbox"].lower(): r for r in rows}
    printer = by_address["printer@contoso.com"]
    assert printer["type"] == "SharedMailbox" and printer["setting"] is False and printer["effective"] == "on"
    assert printer["exception"] is True and printer["signins"] == 4 and printer["failures"] == 1
    assert printer["ips"] == ["198.51.100.7", "198.51.100.8", "198.51.100.9"]  # distinct, latest first; no spray
    assert abs(datetime.fromisoformat(printer["last_signin"]) - (NOW - timedelta(hours=5))) < timedelta(seconds=2)
    assert rows[0]["mailbox"] == "printer@contoso.com"  # sorted by last use
    off_but_used = by_address["used.since@contoso.com"]
    assert (off_but_used["effective"], off_but_used["signins"], off_but_used["exception"]) == ("off", 1, False)
    assert "sprayed@contoso.com" not in by_address  # failures never make a mailbox "used"
    assert ("follows.org@contoso.com" in by_address) is (not org_disabled)
    assert all(r["protocol"] is None for r in rows)

    assert emulator.calllog.count(cmdlet="Set-CASMailbox") == 0
    assert _exchange_calls(emulator) == 1 + math.ceil(len(mailboxes) / 1000) + math.ceil(len(rows) / 10)


def test_the_window_and_the_terminal_summary(cli: Any, emulator: EmulatorServer) -> None:
    assert cli("init").code == 0
    week = {r["mailbox"]: r for r in _inventory(cli, "--days", "7")}
    assert week["printer@contoso.com"]["signins"] == 3  # the one 12 days ago is outside the week
    month = {r["mailbox"]: r for r in _inventory(cli)}
    assert month["printer@contoso.com"]["signins"] == 4  # the one 40 days ago is beyond the log

    shown = cli("inventory")
    assert shown.code == 0, shown.err
    lines = shown.out.splitlines()
    assert lines[0].startswith("mailbox") and lines[1].startswith("printer@contoso.com")
    assert "used Basic SMTP AUTH in the last 30 days" in lines[-1] and "listed without an exception" in lines[-1]

    nowhere = cli("inventory", "--csv", "/no-such-folder/inventory.csv")
    assert (
        nowhere.code == 2
        and nowhere.err == "error: --csv: cannot write /no-such-folder/inventory.csv: no such folder\n"
    )

    for bad in ("0", "31", "week"):
        refused = cli("inventory", "--days", bad)
        assert refused.code == 2 and refused.err.startswith("error: days:") and len(refused.err.splitlines()) == 1


def test_without_p1_rows_are_listed_with_nulls_and_one_warning(cli: Any, emulator: EmulatorServer) -> None:
    assert cli("init").code == 0
    emulator.tenant.premium = False
    result = cli("inventory", "--json")
    assert result.code == 0, result.err
    rows = json.loads(result.out)
    assert rows and all(r["signins"] is None and r["failures"] is None and r["last_signin"] is None for r in rows)
    assert "used.since@contoso.com" not in {r["mailbox"] for r in rows}  # no evidence of use without the log
    warnings = [line for line in result.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "Entra ID P1" in warnings[0]


def test_the_usage_report_sets_the_protocol_and_a_csv_round_trips(
    cli: Any, emulator: EmulatorServer, tmp_path: Path
) -> None:
    assert cli("init").code == 0
    report = tmp_path / "smtp-auth-clients.csv"
    report.write_text(
        "\ufeffSender address;Domain;TLS 1.2;Messages sent;Authentication protocol\n"
        "PRINTER@contoso.com;contoso.com;100;50;Basic\n"
        "printer@contoso.com;contoso.com;100;5;OAuth\n"
        "used.since@contoso.com;contoso.com;100;5;OAuth\n",
        encoding="utf-8",
    )
    out = tmp_path / "inventory.csv"
    rows = {r["mailbox"]: r for r in _inventory(cli, "--usage-csv", str(report), "--csv", str(out))}
    assert rows["printer@contoso.com"]["protocol"] == "both"
    assert rows["used.since@contoso.com"]["protocol"] == "oauth"
    table = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"))))
    assert list(table[0]) == [
        "mailbox",
        "mailbox_guid",
        "type",
        "setting",
        "effective",
        "exception",
        "signins",
        "last_signin",
        "ips",
        "failures",
        "protocol",
    ]
    assert {r["mailbox_guid"] for r in table} == {r["mailbox_guid"] for r in rows.values()}
    assert "'=formula@contoso.com" in {r["mailbox"] for r in table}  # neutralised for spreadsheets

    wrong = tmp_path / "wrong.csv"
    wrong.write_text("User,Count\nprinter@contoso.com,3\n", encoding="utf-8")
    refused = cli("inventory", "--usage-csv", str(wrong))
    assert refused.code == 2 and len(refused.err.splitlines()) == 1
    assert "usage-csv" in refused.err and "'Sender address'" in refused.err
    assert "'Authentication protocol'" in refused.err


def test_password_spray_is_read_only_so_far_and_said_so(cli: Any, emulator: EmulatorServer) -> None:
    assert cli("init").code == 0
    printer = emulator.tenant.find("printer@contoso.com")
    assert printer is not None
    for n in range(5_001):  # more failures than the five pages read of them
        emulator.tenant.add_signin(
            printer.user_principal_name, when=NOW - timedelta(minutes=n), status_error_code=50126
        )
    result = cli("inventory", "--json")
    assert result.code == 0, result.err
    row = next(r for r in json.loads(result.out) if r["mailbox"] == "printer@contoso.com")
    # Every use; of failures the newest 5,000 of the tenant, four of them the sprayed mailbox's.
    assert (row["signins"], row["failures"]) == (4, 5_000 - 4)
    assert "warning: failed sign-ins beyond the 5 pages read; failure counts are lower bounds" in result.err


def test_an_exchange_failure_in_the_lookups_is_one_line(cli: Any, emulator: EmulatorServer) -> None:
    assert cli("init").code == 0
    emulator.faults.configure(failing_cmdlets={"Get-Mailbox": 403})
    result = cli("inventory", "--json")
    assert result.code == 1 and result.out == ""
    assert result.err.startswith("failed: Get-Mailbox failed with HTTP 403") and len(result.err.splitlines()) == 1
