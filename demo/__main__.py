"""Run the real CLI against Azurite and the local tenant emulator, and show what it does.

Everything stays on 127.0.0.1; both services stop when the demo ends, whatever happens.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

from devservices.azurite import Azurite
from emulator.server import EmulatorServer
from emulator.tenant import Tenant

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / ".artifacts" / "demo"
PRINTER = "scanner-floor2"


def banner(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m" if sys.stdout.isatty() else f"\n== {text}", flush=True)


def cli(env: dict[str, str], *args: str) -> int:
    print("$ python -m shared.cli " + " ".join(f'"{a}"' if " " in a else a for a in args), flush=True)
    return subprocess.run([sys.executable, "-m", "shared.cli", *args], cwd=REPO, env=env, check=False).returncode


def tally(tenant: Tenant) -> str:
    counts = Counter(str(m.smtp_client_authentication_disabled).lower() for m in tenant.snapshot())
    return ", ".join(f"{state}: {counts.get(state, 0)}" for state in ("true", "false", "none"))


def main() -> int:
    tenant = Tenant()
    tenant.seed(40)
    printer = tenant.add_mailbox(PRINTER, type="SharedMailbox", smtp=False, display_name="Scanner floor 2")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with Azurite() as azurite, EmulatorServer(tenant, ca_path=ARTIFACTS / "emulator-ca.pem") as emulator:
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

        steps: list[tuple[str, tuple[str, ...]]] = [
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
        for title, args in steps:
            banner(title)
            if title.startswith("2."):
                print(f"(before) {tally(tenant)}")
            code = cli(env, *args)
            if code != 0:
                print(f"demo stopped: the command exited {code}", file=sys.stderr)
                return code
        banner(f"Final state: {tally(tenant)}")
        print(
            f"{printer.primary_smtp_address}: SmtpClientAuthenticationDisabled="
            f"{tenant.find(printer.guid).smtp_client_authentication_disabled} (its approved exception)"
        )
        print(f"Organisation flag untouched: {tenant.org_smtp_client_authentication_disabled}")
        sets = emulator.calllog.count(cmdlet="Set-CASMailbox", kind="batch_item")
        print(f"Exchange calls: {len(emulator.calllog)} logged, {sets} Set-CASMailbox sub-requests")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
