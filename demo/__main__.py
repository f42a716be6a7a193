"""Run the real CLI against Azurite and the local tenant emulator, and show what it does; then the
request and approval workflow on the local host. `python -m demo --serve` keeps everything running
afterwards so that you can click through it in a browser.

Everything stays on 127.0.0.1; every service stops when the demo ends, whatever happens.
"""

from __future__ import annotations

# The app's HTTP clients (aiohttp) read SSL_CERT_FILE once, at import: trust the emulator's CA first.
import os
from pathlib import Path

from emulator.certs import ensure_ca

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / ".artifacts" / "demo"
CA_PATH = ARTIFACTS / "emulator-ca.pem"
ensure_ca(CA_PATH)
os.environ["SSL_CERT_FILE"] = str(CA_PATH)

import argparse  # noqa: E402
import asyncio  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from collections import Counter  # noqa: E402
from dataclasses import dataclass  # noqa: E402

from demo.workflow import request_and_approve  # noqa: E402
from devservices.azurite import Azurite, free_port  # noqa: E402
from devservices.localhost import LocalHost  # noqa: E402
from emulator.server import EmulatorServer  # noqa: E402
from emulator.tenant import Mailbox, Tenant  # noqa: E402

PRINTER = "scanner-floor2"


def banner(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m" if sys.stdout.isatty() else f"\n== {text}", flush=True)


def cli(env: dict[str, str], *args: str) -> int:
    print("$ python -m shared.cli " + " ".join(f'"{a}"' if " " in a else a for a in args), flush=True)
    return subprocess.run([sys.executable, "-m", "shared.cli", *args], cwd=REPO, env=env, check=False).returncode


def tally(tenant: Tenant) -> str:
    counts = Counter(str(m.smtp_client_authentication_disabled).lower() for m in tenant.snapshot())
    return ", ".join(f"{state}: {counts.get(state, 0)}" for state in ("true", "false", "none"))


@dataclass(frozen=True, slots=True)
class People:
    """The demo's named mailboxes, added to a seeded tenant, and the approvers' group."""

    printer: Mailbox
    copier: Mailbox
    requester: Mailbox
    approver: Mailbox
    notify: Mailbox
    approver_group: str


def demo_tenant() -> tuple[Tenant, People]:
    tenant = Tenant()
    tenant.seed(40)
    printer = tenant.add_mailbox(PRINTER, type="SharedMailbox", smtp=False, display_name="Scanner floor 2")
    copier = tenant.add_mailbox("copier-lobby", type="SharedMailbox", smtp=True, display_name="Copier lobby")
    requester = tenant.add_mailbox("riley.requester", smtp=True, display_name="Riley Requester")
    approver = tenant.add_mailbox("avery.approver", smtp=True, display_name="Avery Approver")
    notify = tenant.add_mailbox("smtp-guard", type="SharedMailbox", smtp=True, display_name="SMTP AUTH Guard")
    group = tenant.add_group("SMTP AUTH approvers", [approver.external_directory_object_id])
    return tenant, People(printer, copier, requester, approver, notify, group)


def cli_steps(printer: Mailbox) -> list[tuple[str, tuple[str, ...]]]:
    """(banner, `shared.cli` arguments) of the demo's numbered CLI steps."""
    return [
        ("1. init: create the tables and the install marker", ("init",)),
        ("2. Report mode (the default): plan, store the plan, change nothing", ("sweep", "--full")),
        (
            "3. Grandfather the floor-2 scanner with an exception before enforcing",
            (
                "exceptions",
                "add",
                "--mailbox",
                printer.primary_smtp_address,
                "--days",
                "90",
                "--reason",
                "Scan-to-email; vendor moving to OAuth in Q1",
                "--device",
                "Ricoh IM C3000",
                "--auth",
                "basic",
            ),
        ),
        ("4. Enforce: apply the plan, in $batch calls of 10", ("sweep", "--full", "--mode", "enforce")),
        ("5. Run again: nothing left to change (idempotent)", ("sweep", "--full", "--mode", "enforce")),
    ]


def run_cli_steps(env: dict[str, str], tenant: Tenant, printer: Mailbox) -> int:
    """Each CLI step under its banner; stops at the first that fails and returns its exit code."""
    for title, command in cli_steps(printer):
        banner(title)
        if title.startswith("2."):
            print(f"(before) {tally(tenant)}")
        code = cli(env, *command)
        if code != 0:
            print(f"demo stopped: the command exited {code}", file=sys.stderr)
            return code
    return 0


def print_outcome(tenant: Tenant, printer: Mailbox, emulator: EmulatorServer) -> None:
    banner(f"Final state: {tally(tenant)}")
    print(
        f"{printer.primary_smtp_address}: SmtpClientAuthenticationDisabled="
        f"{tenant.find(printer.guid).smtp_client_authentication_disabled} (its approved exception)"
    )
    print(f"Organisation flag untouched: {tenant.org_smtp_client_authentication_disabled}")
    sets = emulator.calllog.count(cmdlet="Set-CASMailbox", kind="batch_item")
    print(f"Exchange calls: {len(emulator.calllog)} logged, {sets} Set-CASMailbox sub-requests")


def run_workflow(env: dict[str, str], tenant: Tenant, people: People, emulator: EmulatorServer, *, keep: bool) -> None:
    """Step 6 on the local host, in this process (so the app's settings go into os.environ); `keep` serves on."""
    port = free_port()
    os.environ.update(env)
    os.environ.update(
        PUBLIC_BASE_URL=f"http://localhost:{port}",
        NOTIFY_FROM=people.notify.primary_smtp_address,
        APPROVER_GROUP_ID=people.approver_group,
    )
    from shared.bootstrap import close_all

    with LocalHost(
        port=port,
        users_url=f"{emulator.base_url}/_emulator/users",
        tenant_id=tenant.tenant_id,
        on_stop=[close_all],
    ) as host:
        banner(f"6. The request and approval workflow on the local host ({os.environ['PUBLIC_BASE_URL']})")
        asyncio.run(request_and_approve(host, tenant, people.requester, people.approver, people.copier))
        if keep:
            serve(host)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="store_true", help="keep the local host running until Ctrl+C")
    args = parser.parse_args()
    tenant, people = demo_tenant()
    with Azurite() as azurite, EmulatorServer(tenant, ca_path=CA_PATH, reuse_ca=True) as emulator:
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": os.environ.get("HOME", str(ARTIFACTS)),
            **emulator.env(),
            "AzureWebJobsStorage": azurite.connection_string,
            "ENFORCEMENT_MODE": "report",
        }
        banner(
            f"A local tenant: {len(tenant)} mailboxes of every type. SmtpClientAuthenticationDisabled: {tally(tenant)}"
        )
        print(f"Organisation flag (Get-TransportConfig): {tenant.org_smtp_client_authentication_disabled}")
        print(f"Exchange emulator: {emulator.exchange_endpoint}; Azurite tables: 127.0.0.1:{azurite.port}")
        code = run_cli_steps(env, tenant, people.printer)
        if code != 0:
            return code
        print_outcome(tenant, people.printer, emulator)
        run_workflow(env, tenant, people, emulator, keep=args.serve)
    return 0


def serve(host: LocalHost) -> None:
    banner("Serving: open these in a browser (Ctrl+C stops everything)")
    print(f"  request form:   http://localhost:{host.port}/api/exceptions/new")
    print("  sign in as:     riley.requester (requester) or avery.approver (approver)")
    print(f"  send the outbox now: curl -X POST http://localhost:{host.port}/admin/functions/send_notifications")
    print("  approval links arrive in the emulator's outbox: GET <emulator>/_emulator/mail")
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()


if __name__ == "__main__":
    raise SystemExit(main())
