"""The rules of usage evidence, the spreadsheet reader and the inventory's effective state."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared.model.inventory import effectively_on
from shared.model.spreadsheet import read_table, spreadsheet_safe, unquote_safe
from shared.model.usage import (
    SMTP_CLIENT_APP,
    LayoutError,
    Protocol,
    SignIn,
    by_user,
    read_usage_report,
    sign_ins_of,
    tally,
)

T0 = datetime(2026, 12, 1, 12, tzinfo=UTC)


def _sign_in(hours: int, ip: str = "198.51.100.1", error: int = 0, app: str = SMTP_CLIENT_APP, **who: str) -> SignIn:
    return SignIn(T0 - timedelta(hours=hours), ip, app, error, who.get("user_id", "u1"), who.get("upn", "a@x.com"))


def test_only_successful_smtp_sign_ins_are_use() -> None:
    usage = tally(
        [
            _sign_in(1, "198.51.100.1"),
            _sign_in(2, "192.0.2.66", error=50126),
            _sign_in(3, "198.51.100.2"),
            _sign_in(4, "198.51.100.1"),
            _sign_in(0, "198.51.100.9", app="Browser"),
            _sign_in(5, "192.0.2.67", error=50053),
        ]
    )
    assert (usage.signins, usage.failures, usage.used) == (3, 2, True)
    assert usage.last_signin == T0 - timedelta(hours=1) and usage.last_failure == T0 - timedelta(hours=2)
    assert usage.ips == ("198.51.100.1", "198.51.100.2")  # distinct, most recent first, no failure's IP
    spray = tally([_sign_in(1, error=50126)] * 5)
    assert (spray.signins, spray.failures, spray.used) == (0, 5, False)


def test_sign_ins_are_matched_by_object_id_or_upn_and_counted_once() -> None:
    both = _sign_in(1, user_id="ID-1", upn="Printer@X.com")
    keyed = by_user([both, _sign_in(2, user_id="id-2", upn="other@x.com")])
    assert sign_ins_of(keyed, "id-1", "printer@x.com") == [both]  # under both keys, once
    assert sign_ins_of(keyed, "", "PRINTER@x.com") == [both]
    assert sign_ins_of(keyed, "nobody") == []


def test_the_usage_report_gives_a_protocol_per_sender() -> None:
    report = (
        "\ufeffSender address;Domain;TLS 1.2;Messages sent;AUTHENTICATION PROTOCOL\n"
        "Printer@contoso.com;contoso.com;100;40;Basic\n"
        "printer@contoso.com;contoso.com;100;2;OAuth\n"
        "'-app@contoso.com;contoso.com;100;9;oauth\n"
        "odd@contoso.com;contoso.com;100;9;Kerberos\n"
    )
    assert read_usage_report(report) == {
        "printer@contoso.com": Protocol.BOTH,
        "-app@contoso.com": Protocol.OAUTH,
    }
    with pytest.raises(LayoutError, match="'Sender address' and 'Authentication protocol'"):
        read_usage_report("User,Messages\nprinter@contoso.com,3\n")


def test_a_table_is_read_as_excel_writes_it() -> None:
    table = read_table('\ufeffMailbox;Days ;Reason\r\na@x.com;30;"scan; to email"\r\n\r\nb@x.com;5\r\n')
    assert table.columns == ("mailbox", "days", "reason")
    assert table.rows == [
        (2, {"mailbox": "a@x.com", "days": "30", "reason": "scan; to email"}),
        (4, {"mailbox": "b@x.com", "days": "5", "reason": ""}),  # blank line 3 skipped, line numbers kept
    ]
    assert read_table("").rows == []


@pytest.mark.parametrize("cell", ["=1+1", "+x", "-minus@x.com", "@sum", "\tx", "plain", "'quoted"])
def test_a_neutralised_cell_reads_back_as_it_was(cell: str) -> None:
    assert unquote_safe(spreadsheet_safe(cell)) == cell


@pytest.mark.parametrize(
    ("setting", "org", "on"),
    [(False, True, True), (False, False, True), (None, False, True), (None, True, False), (True, False, False)],
)
def test_effectively_on(setting: bool | None, org: bool, on: bool) -> None:
    assert effectively_on(setting, org) is on


def test_quoted_cells_and_multi_line_rows_read_as_excel_wrote_them() -> None:
    table = read_table('mailbox,reason,days\na@x.com,"he said ""no""",5\nb@x.com,"two\nlines",7\nc@x.com,"x, y",9\n')
    assert table.rows == [
        (2, {"mailbox": "a@x.com", "reason": 'he said "no"', "days": "5"}),
        (3, {"mailbox": "b@x.com", "reason": "two\nlines", "days": "7"}),  # the line it starts on
        (5, {"mailbox": "c@x.com", "reason": "x, y", "days": "9"}),
    ]


def test_an_unknown_organisation_flag_is_not_read_as_off() -> None:
    assert effectively_on(None, None) is True  # as the sweeps read it: only `true` switches it off


def test_a_broken_file_is_a_value_error_not_a_crash() -> None:
    broken = 'mailbox,reason\na@x.com,"never closed\n' + "x" * 140_000 + "\n"
    with pytest.raises(ValueError, match="not a readable CSV file after line"):
        read_table(broken)
    with pytest.raises(LayoutError, match="not a readable CSV file"):
        read_usage_report(broken)
