"""`exceptions import`: many grants from a spreadsheet, checked in batches, all or nothing for bad rows."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import pytest

from emulator.server import EmulatorServer
from emulator.tenant import Tenant
from tests.workflow_support import People, add_people


@pytest.fixture
def tenant(request: pytest.FixtureRequest) -> Tenant:
    t = Tenant()
    t.seed(getattr(request, "param", 30), rng_seed=9)
    for name in ("scanner", "printer", "app", "-dash"):
        t.add_mailbox(f"{name}@contoso.com", smtp=False)
    app = t.find("app@contoso.com")
    assert app is not None
    app.user_principal_name = "app.service@contoso.com"  # a UPN unlike its address: one more name for it
    t.index[app.user_principal_name] = app
    return t


@pytest.fixture
def staff(tenant: Tenant) -> People:
    return add_people(tenant)


def _write(path: Path, text: str, bom: bool = False) -> str:
    path.write_text(("\ufeff" if bom else "") + text, encoding="utf-8")
    return str(path)


def _exceptions(cli: Any) -> dict[str, dict[str, Any]]:
    listed = cli("exceptions", "list", "--json")
    assert listed.code == 0, listed.err
    return {r["mailbox_address"]: r for r in json.loads(listed.out)}


def test_excel_bom_semicolons_and_any_header_order(
    cli: Any, emulator: EmulatorServer, staff: People, tmp_path: Path
) -> None:
    assert cli("init").code == 0
    owner = staff.requester.primary_smtp_address
    text = (
        f"REASON;Auth;Days;Owner;MAILBOX;Notes\n"
        f"scan to email;OAUTH;90;{owner};Scanner@contoso.com;floor 2\n"
        f"legacy printer;basic;30;;printer@contoso.com;\n"
    )
    result = cli("exceptions", "import", "--csv", _write(tmp_path / "grandfather.csv", text, bom=True))
    assert result.code == 0, result.err
    assert "granted 2, skipped 0" in result.out
    stored = _exceptions(cli)
    assert set(stored) == {"scanner@contoso.com", "printer@contoso.com"}
    assert (stored["scanner@contoso.com"]["auth_method"], stored["scanner@contoso.com"]["owner"]) == ("oauth", owner)
    assert stored["printer@contoso.com"]["auth_method"] == "basic" and stored["printer@contoso.com"]["active"]
    assert emulator.calllog.count(cmdlet="Set-CASMailbox") == 0  # storage only: the sweeps act


def test_one_bad_row_writes_nothing_and_names_its_line(cli: Any, tmp_path: Path, staff: People) -> None:
    assert cli("init").code == 0
    text = (
        "mailbox,days,reason,auth\n"
        "scanner@contoso.com,90,scan to email,oauth\n"
        "printer@contoso.com,400,printer,oauth\n"  # line 3: over EXCEPTION_MAX_DAYS
        "nobody@contoso.com,10,gone,oauth\n"  # line 4: no such mailbox
        "scanner@contoso.com,5,again,oauth\n"  # line 5: twice in the file
        "app@contoso.com,10,,basic\n"  # line 6: no reason
        "-dash@contoso.com,10,app,\n"  # line 7: auth unknown
        "app@contoso.com,10,app,oauth\n"
        "App.Service@contoso.com,10,app again,oauth\n"  # line 9: the same mailbox by its UPN
    )
    result = cli("exceptions", "import", "--csv", _write(tmp_path / "bad.csv", text))
    assert result.code == 2, result.err
    lines = result.err.splitlines()
    assert lines[:6] == [
        "line 3: days: must be from 1 to 180, not 400",
        "line 4: mailbox: Exchange has no mailbox nobody@contoso.com",
        "line 5: mailbox: scanner@contoso.com is also on line 2",
        "line 6: reason: is required",
        "line 7: auth: is unknown: give oauth or basic (a wrong oauth would block a Basic device)",
        "line 9: mailbox: app.service@contoso.com is the same mailbox as line 8",
    ]
    assert lines[-1].startswith("error: 6 problems") and "nothing was imported" in lines[-1]
    assert _exceptions(cli) == {}

    no_auth = cli("exceptions", "import", "--csv", _write(tmp_path / "no-auth.csv", "mailbox,days,reason\n"))
    assert no_auth.code == 2 and len(no_auth.err.splitlines()) == 1 and "no auth column" in no_auth.err


def test_a_rerun_skips_what_was_granted_and_dry_run_writes_nothing(cli: Any, tmp_path: Path) -> None:
    assert cli("init").code == 0
    first = _write(tmp_path / "first.csv", "mailbox,days,reason,auth\nscanner@contoso.com,30,scan,oauth\n")
    assert cli("exceptions", "import", "--csv", first).code == 0
    both = _write(
        tmp_path / "both.csv",
        "mailbox,days,reason,auth\nscanner@contoso.com,30,scan,oauth\nprinter@contoso.com,30,print,basic\n",
    )
    dry = cli("exceptions", "import", "--csv", both, "--dry-run")
    assert dry.code == 0 and "would grant 1, skipped 1" in dry.out, dry.err
    assert set(_exceptions(cli)) == {"scanner@contoso.com"}
    again = cli("exceptions", "import", "--csv", both)
    assert again.code == 0, again.err
    assert "skipped line 2: scanner@contoso.com already holds an active exception" in again.out
    assert set(_exceptions(cli)) == {"scanner@contoso.com", "printer@contoso.com"}


def test_inventory_output_imports_as_it_is(cli: Any, emulator: EmulatorServer, tmp_path: Path) -> None:
    assert cli("init").code == 0
    listed = json.loads(cli("inventory", "--json").out)
    report = "Sender address,Authentication protocol\n" + "".join(
        f"{r['mailbox']},{'Basic' if n % 2 else 'OAuth'}\n" for n, r in enumerate(listed)
    )
    out = tmp_path / "inventory.csv"
    assert cli("inventory", "--usage-csv", _write(tmp_path / "report.csv", report), "--csv", str(out)).code == 0
    table = list(csv.reader(io.StringIO(out.read_text(encoding="utf-8"))))
    edited = io.StringIO()
    csv.writer(edited, lineterminator="\n").writerows(
        [[*table[0], "days", "reason"]] + [[*r, "60", "grandfathered"] for r in table[1:]]
    )
    result = cli("exceptions", "import", "--csv", _write(tmp_path / "edited.csv", edited.getvalue()))
    assert result.code == 0, result.err
    stored = _exceptions(cli)
    assert set(stored) == {r["mailbox"].lower() for r in listed}  # '-dash@contoso.com was read back unquoted
    for n, row in enumerate(listed):
        assert stored[row["mailbox"].lower()]["auth_method"] == ("basic" if n % 2 else "oauth")


@pytest.mark.parametrize("tenant", [9_000], indirect=True)
def test_five_thousand_rows_are_checked_in_batches(
    cli: Any, emulator: EmulatorServer, staff: People, tmp_path: Path
) -> None:
    assert cli("init").code == 0
    owners = [p.primary_smtp_address for p in (staff.requester, staff.approver, staff.second_approver)]
    rows = [m for m in emulator.tenant.snapshot() if m.recipient_type_details == "UserMailbox"][:5_000]
    assert len(rows) == 5_000
    text = "mailbox,days,reason,auth,owner\n" + "".join(
        f"{m.primary_smtp_address},30,grandfathered,oauth,{owners[n % len(owners)]}\n" for n, m in enumerate(rows)
    )
    emulator.calllog.clear()
    result = cli("exceptions", "import", "--csv", _write(tmp_path / "many.csv", text), "--dry-run")
    assert result.code == 0, result.err
    calls = emulator.calllog.count(kind="invoke") + emulator.calllog.count(kind="batch")
    assert calls <= math.ceil(len(rows) / 10) + 5, calls
    assert emulator.calllog.count(cmdlet="Set-CASMailbox") == 0
    assert f"would grant {len(rows)}" in result.out
