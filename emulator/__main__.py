"""`python -m emulator ...`: run the emulator as its own process; prints one JSON line of settings."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from datetime import UTC, datetime, timedelta

from .faults import Faults
from .server import EmulatorServer
from .tenant import DEFAULT_TENANT_ID, Tenant


def _fail_cmdlet(text: str) -> tuple[str, int]:
    name, sep, status = text.partition("=")
    if not sep or not status.isdigit():
        raise argparse.ArgumentTypeError("expected CMDLET=STATUS, e.g. Set-CASMailbox=500")
    return name, int(status)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m emulator", description=__doc__)
    p.add_argument("--port", type=int, default=8443, help="0 picks a free port")
    p.add_argument("--mailboxes", type=int, default=500)
    p.add_argument("--seed", type=int, default=42, help="seed for the generated mailboxes")
    p.add_argument("--tenant-id", default=DEFAULT_TENANT_ID)
    p.add_argument("--ca-file", default=".artifacts/emulator-ca.pem")
    p.add_argument(
        "--seed-age-minutes",
        type=float,
        default=0.0,
        help="seed the tenant as it was this long ago, so no seeded change is more recent",
    )
    p.add_argument("--disabled-true", type=float, default=0.6)
    p.add_argument("--disabled-none", type=float, default=0.25)
    p.add_argument("--org-smtp-disabled", choices=("true", "false"), default="true")
    p.add_argument("--latency-ms", type=float, default=0.0)
    p.add_argument("--concurrency-limit", type=int, default=0)
    p.add_argument("--concurrency-retry-after", type=float, default=None)
    p.add_argument("--throttle-rate", type=float, default=0.0)
    p.add_argument("--retry-after-seconds", type=float, default=1.0)
    p.add_argument("--batch-item-throttle-rate", type=float, default=0.0)
    p.add_argument("--error-503-rate", type=float, default=0.0)
    p.add_argument("--fail-cmdlet", type=_fail_cmdlet, action="append", default=[], metavar="CMDLET=STATUS")
    p.add_argument("--fault-seed", type=int, default=42)
    p.add_argument("--no-premium", action="store_true", help="no Entra ID P1: sign-in logs answer 403")
    p.add_argument("--security-defaults", action="store_true", help="security defaults on")
    p.add_argument(
        "--block-legacy-auth",
        choices=("enabled", "disabled", "enabledForReportingButNotEnforced"),
        default=None,
        help='add a "Block legacy authentication" Conditional Access policy in this state',
    )
    return p


def _tenant(args: argparse.Namespace) -> Tenant:
    tenant = Tenant(args.tenant_id)
    tenant.org_smtp_client_authentication_disabled = args.org_smtp_disabled == "true"
    tenant.seed(
        args.mailboxes,
        rng_seed=args.seed,
        now=datetime.now(UTC) - timedelta(minutes=args.seed_age_minutes),
        disabled_true=args.disabled_true,
        disabled_none=args.disabled_none,
    )
    tenant.premium = not args.no_premium
    tenant.security_defaults = args.security_defaults
    if args.block_legacy_auth:
        tenant.block_legacy_auth_policy(args.block_legacy_auth)
    return tenant


def _faults(args: argparse.Namespace) -> Faults:
    return Faults(
        latency_ms=args.latency_ms,
        concurrency_limit=args.concurrency_limit,
        concurrency_retry_after=args.concurrency_retry_after,
        throttle_rate=args.throttle_rate,
        retry_after_seconds=args.retry_after_seconds,
        batch_item_throttle_rate=args.batch_item_throttle_rate,
        error_503_rate=args.error_503_rate,
        failing_cmdlets=dict(args.fail_cmdlet),
        rng_seed=args.fault_seed,
    )


def _serve_until_signalled(server: EmulatorServer) -> None:
    """Start, print the settings line, and run until SIGINT or SIGTERM; the server always stops."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    try:
        print(json.dumps(server.env()), flush=True)  # the one line a parent process reads
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    server = EmulatorServer(_tenant(args), _faults(args), port=args.port, ca_path=args.ca_file)
    _serve_until_signalled(server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
