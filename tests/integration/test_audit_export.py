"""`audit export`: every change row, filtered, streamed, as JSON or as CSV that a spreadsheet cannot run."""

from __future__ import annotations

import csv
import io
import json
import tracemalloc
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from emulator.server import EmulatorServer
from shared.cli import _write_export
from shared.model.actor import Actor
from shared.model.mailbox import Change, ChangeReason
from shared.model.runs import AuditEntry
from shared.storage import Store


def exported(cli: Any, *args: str) -> Any:
    result = cli("audit", "export", *args)
    assert result.code == 0, result.err
    return result.out


def test_filters_combine_and_json_and_csv_agree(cli: Any, emulator: EmulatorServer) -> None:
    tenant = emulator.tenant
    formulas = [tenant.add_mailbox(address, smtp=False) for address in ("=cmd@contoso.com", "+sum@contoso.com")]
    formulas.append(tenant.add_mailbox("-minus@contoso.com", smtp=None))
    mixed = tenant.add_mailbox("Mixed.Case@contoso.com", smtp=False)  # Exchange keeps an address's case
    assert cli("init").code == 0
    assert json.loads(exported(cli)) == []  # no rows: an empty array, exit 0
    first = json.loads(cli("sweep", "--full", "--mode", "enforce", "--json").out)
    assert first["outcome"] == "completed" and first["applied"] > 3

    rows = json.loads(exported(cli))
    assert len(rows) == first["applied"] and {r["run_id"] for r in rows} == {first["run_id"]}
    assert set(rows[0]) == {
        "run_id",
        "at",
        "mailbox",
        "mailbox_guid",
        "before",
        "after",
        "reason",
        "actor",
        "recovered",
    }
    printer = next(r for r in rows if r["mailbox"] == "-minus@contoso.com")
    assert (printer["before"], printer["after"], printer["recovered"]) == (None, True, False)
    assert printer["at"].endswith("Z") and datetime.fromisoformat(printer["at"]).tzinfo is not None

    assert json.loads(exported(cli, "--run", first["run_id"])) == rows
    assert json.loads(exported(cli, "--run", "20200101T000000Z-00000000")) == []
    one = json.loads(exported(cli, "--mailbox=-minus@contoso.com"))
    assert [r["mailbox_guid"] for r in one] == [formulas[2].guid]
    at = datetime.fromisoformat(rows[0]["at"])
    assert json.loads(exported(cli, "--since", (at + timedelta(hours=1)).isoformat())) == []
    assert len(
        json.loads(exported(cli, "--since", (at - timedelta(hours=1)).isoformat(), "--until", "2999-01-01"))
    ) == len(rows)
    assert json.loads(exported(cli, "--until", "2020-01-01", "--mailbox=-minus@contoso.com")) == []
    assert [r["mailbox_guid"] for r in json.loads(exported(cli, "--mailbox", "mixed.case@CONTOSO.com"))] == [mixed.guid]

    table = list(csv.reader(io.StringIO(exported(cli, "--format", "csv"))))
    assert table[0] == ["run_id", "at", "mailbox", "mailbox_guid", "before", "after", "reason", "actor", "recovered"]
    assert len(table) == len(rows) + 1
    by_guid = {r["mailbox_guid"]: r for r in rows}
    for cells in table[1:]:
        record = by_guid[cells[3]]
        assert cells[4:6] == ["null" if record["before"] is None else str(record["before"]).lower(), "true"]
        expected = record["mailbox"] if record["mailbox"][0] not in "=+-@" else f"'{record['mailbox']}"
        assert cells[2] == expected  # formula-like cells neutralised, the rest as they are
    assert {c[2] for c in table[1:]} >= {"'=cmd@contoso.com", "'+sum@contoso.com", "'-minus@contoso.com"}


def test_bad_filters_are_refused_with_the_field_named(cli: Any, emulator: EmulatorServer, tmp_path: Any) -> None:
    assert cli("init").code == 0
    for args, field in (
        (("--since", "yesterday"), "--since"),
        (("--since", "2026-12-02", "--until", "2026-12-01"), "--until"),
        (("--mailbox", "not an address"), "--mailbox"),
    ):
        result = cli("audit", "export", *args, "--output", str(tmp_path / "out.json"))
        assert result.code == 2 and result.err.startswith(f"error: {field}:"), result.err
    assert list(tmp_path.iterdir()) == []  # nothing written
    done = cli("audit", "export", "--format", "csv", "--output", str(tmp_path / "all.csv"))
    assert done.code == 0 and (tmp_path / "all.csv").read_text().startswith("run_id,at,")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["all.csv"]  # no .partial left behind


class _Sink(io.TextIOBase):
    def __init__(self) -> None:
        self.size = 0

    def write(self, text: str) -> int:
        self.size += len(text)
        return len(text)


@pytest.mark.usefixtures("app_env")
async def test_an_export_streams_with_flat_memory(store: Store, emulator: EmulatorServer) -> None:
    await store.state.initialise(emulator.tenant.tenant_id, "test")
    actor, now = Actor(object_id="admin", app_id="app"), datetime.now(UTC)

    async def peak_for(run_id: str, count: int) -> tuple[int, int]:
        entries = [
            AuditEntry(
                run_id,
                Change(f"{i:08d}-0000-4000-8000-{run_id[-12:]}", f"m{i}@contoso.com", False, True, ChangeReason.DRIFT),
                actor,
                now,
            )
            for i in range(count)
        ]
        await store.audit.append(entries)
        del entries
        sink = _Sink()
        tracemalloc.start()
        written = await _write_export(store.audit.export(run_id=run_id), "csv", sink)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert written == count and sink.size > count * 100
        return peak, written

    small, _ = await peak_for("20261201T000000Z-000000000001", 2_000)
    large, _ = await peak_for("20261201T000000Z-000000000002", 20_000)
    assert large < 2 * small, (small, large)  # ten times the rows, not ten times the memory


@pytest.mark.usefixtures("app_env")
async def test_a_mailbox_history_is_read_through_its_index_not_the_table(
    store: Store, storage: str, emulator: EmulatorServer
) -> None:
    from azure.data.tables.aio import TableServiceClient

    await store.state.initialise(emulator.tenant.tenant_id, "test")
    actor, start = Actor(object_id="admin", app_id="app"), datetime(2026, 11, 1, tzinfo=UTC)
    printer = Change("00000000-0000-4000-8000-00000000beef", "Printer@contoso.com", None, True, ChangeReason.DRIFT)

    async def runs(first: int, count: int, *, with_printer: bool) -> None:
        for n in range(first, first + count):
            others = [
                Change(
                    f"{n:08d}-{i:04d}-4000-8000-000000000000", f"m{n}.{i}@contoso.com", False, True, ChangeReason.NULL
                )
                for i in range(30)
            ]
            run_id, at = f"20261101T{n:06d}Z-run{n:05d}", start + timedelta(hours=n)
            await store.audit.append([AuditEntry(run_id, c, actor, at) for c in others + [printer] * with_printer])

    requests: list[str] = []
    counted = Store(
        TableServiceClient.from_connection_string(
            storage, raw_request_hook=lambda r: requests.append(r.http_request.url)
        )
    )

    async def history() -> list[str]:
        requests.clear()
        found = [c.run_id async for c in counted.audit.export(address="printer@CONTOSO.com")]
        return found

    async with counted:
        await runs(0, 3, with_printer=True)
        small = await history()
        reads_small = len(requests)
        await runs(3, 40, with_printer=False)  # the table grows fourteen times, the printer's history does not
        large = await history()
    assert small == large == [f"20261101T{n:06d}Z-run{n:05d}" for n in range(3)]
    # The mailbox's index rows, the runs not yet indexed (none here), then one read per run that changed it.
    assert reads_small == len(requests) == 2 + 3
    since = [
        c.run_id async for c in store.audit.export(address="printer@contoso.com", since=start + timedelta(hours=1))
    ]
    assert since == small[1:]
