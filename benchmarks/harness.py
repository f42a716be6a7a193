"""Process and launch helpers shared by the benchmarks.

Everything runs on 127.0.0.1: Azurite (devservices.azurite), the tenant emulator as its own process
(`python -m emulator`, driven through /_emulator/), and the app as a child process (`python -m shared.cli`),
exactly as an operator would run it. Nothing here imports the app.
"""

from __future__ import annotations

import http.client
import json
import os
import platform
import re
import select
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Self
from urllib.parse import urlsplit

from devservices.azurite import Azurite
from devservices.lifecycle import Service, stop_process

REPO: Final = Path(__file__).resolve().parent.parent
ARTIFACTS: Final = REPO / ".artifacts"
PYTHON: Final = sys.executable
# Settings the app needs beyond the emulator's printed env. A real tenant keeps the default cap (500) and
# applies a bigger plan with `sweep --mode enforce --confirm-plan ID` after review; the benchmarks lift it.
BENCH_MAX_CHANGES: Final = 1_000_000
BENCH_TIME_BUDGET: Final = 86_400


# -- machine ------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """nproc, memory, CPU model and Python version, for the JSON artifacts and docs/performance.md."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_total_kb = 0
    try:
        match = re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())
        mem_total_kb = int(match.group(1)) if match else 0
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "mem_total_gib": round(mem_total_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def calibration_ms() -> float:
    """Milliseconds for a fixed pure-Python workload (JSON round trips): the VM's speed right now."""
    document = {"mailbox": "scanner@contoso.example", "days": 30, "devices": ["Ricoh IM C3000"] * 8}
    started = time.perf_counter()
    for _ in range(20_000):
        json.loads(json.dumps(document))
    return round(1000 * (time.perf_counter() - started), 1)


def load_average() -> float:
    """The 1-minute load average: on a shared VM, says whether something else ran beside a measurement."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return -1.0


# -- output -------------------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A plain fixed-width table (also valid-looking Markdown)."""
    text_rows = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in text_rows)]) for i, h in enumerate(headers)]
    lines = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in text_rows]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def write_artifact(name: str, data: Mapping[str, Any]) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"bench-{name}.json"
    path.write_text(json.dumps({"machine": machine(), **data}, indent=2, default=str) + "\n")
    return path


def log(message: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- process measurement ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProcResult:
    args: list[str]
    returncode: int
    wall_s: float
    max_rss_mib: float
    user_s: float
    sys_s: float
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


TIME_BIN: Final = Path("/usr/bin/time")
_TIME_FIELDS: Final = {
    "Maximum resident set size (kbytes)": "max_rss_kib",
    "User time (seconds)": "user_s",
    "System time (seconds)": "sys_s",
}


def run_measured(
    args: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path = REPO,
    timeout: float = 1800,
) -> ProcResult:
    """Run a child to completion: wall time from spawn to exit, peak RSS and CPU time.

    Peak RSS comes from `/usr/bin/time -v` when present. The fallback, wait4's ru_maxrss, over-reports:
    subprocess starts the child with vfork, and Linux carries the parent's RSS high-water mark across
    exec, so a parent that holds a big mailbox snapshot would inflate the child's figure.
    Output goes to temporary files (not pipes), so a large --json document cannot block the child.
    """
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.NamedTemporaryFile("r", suffix=".time") as report,
    ):
        wrapped = [str(TIME_BIN), "-v", "-o", report.name, *args] if TIME_BIN.exists() else list(args)
        started = time.perf_counter()
        proc = subprocess.Popen(wrapped, cwd=cwd, env=dict(env), stdout=out, stderr=err)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)  # already reaped: keep Popen from waiting again
        measured = {"max_rss_kib": float(usage.ru_maxrss), "user_s": usage.ru_utime, "sys_s": usage.ru_stime}
        for line in report.read().splitlines():
            name, _, value = line.strip().rpartition(": ")
            if name in _TIME_FIELDS:
                measured[_TIME_FIELDS[name]] = float(value)
        out.seek(0)
        err.seek(0)
        return ProcResult(
            args=list(args),
            returncode=proc.returncode,
            wall_s=wall,
            max_rss_mib=measured["max_rss_kib"] / 1024,
            user_s=measured["user_s"],
            sys_s=measured["sys_s"],
            stdout=out.read().decode(errors="replace"),
            stderr=err.read().decode(errors="replace"),
        )


def cpu_seconds(pid: int) -> float:
    """User + system CPU a running process has used so far (from /proc/PID/stat)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu_seconds() -> float:
    """CPU seconds every process on the machine has used since boot (user, nice, system, irq, softirq).

    The difference over a measurement, less what the measured processes used, is what else ran meanwhile.
    """
    try:
        first = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in first[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def other_cpu_s(machine_s: float, *measured_s: float) -> float:
    """What the rest of the machine used over a measurement: its CPU less the measured processes' (>= 0;
    per-process figures are counted in clock ticks, so a quiet machine can come out a tick below zero)."""
    return round(max(0.0, machine_s - sum(measured_s)), 2)


def peak_rss_mib(pid: int) -> float:
    """VmHWM (peak resident set) of a running process."""
    try:
        match = re.search(r"VmHWM:\s+(\d+)\s+kB", Path(f"/proc/{pid}/status").read_text())
    except OSError:
        return 0.0
    return int(match.group(1)) / 1024 if match else 0.0


def base_env() -> dict[str, str]:
    """A clean environment: no inherited proxies, cloud credentials or app settings."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": tempfile.gettempdir(),
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "",
        "NO_PROXY": "127.0.0.1,localhost",
    }


def app_env(emulator_env: Mapping[str, str], storage: str, **extra: str) -> dict[str, str]:
    """The app's settings for a benchmark run: the emulator's env, Azurite, enforce mode, lifted caps."""
    env = {
        **base_env(),
        **emulator_env,
        "AzureWebJobsStorage": storage,
        "ENFORCEMENT_MODE": "enforce",
        "MAX_CHANGES_PER_RUN": str(BENCH_MAX_CHANGES),
        "SWEEP_TIME_BUDGET_SECONDS": str(BENCH_TIME_BUDGET),
        "EXCHANGE_CONCURRENCY": "4",
    }
    env.update(extra)
    return env


def cli(args: Sequence[str], env: Mapping[str, str], timeout: float = 3600) -> ProcResult:
    """`python -m shared.cli ARGS` as a measured child process."""
    return run_measured([PYTHON, "-m", "shared.cli", *args], env=env, timeout=timeout)


def init_store(env: Mapping[str, str]) -> None:
    result = cli(["init"], env, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"shared.cli init failed ({result.returncode}): {result.stderr.strip()[:500]}")


# -- the tenant emulator as a separate process -----------------------------------------------------------


@dataclass(slots=True)
class EmulatorOptions:
    mailboxes: int
    latency_ms: float = 30.0
    concurrency_limit: int = 4
    disabled_true: float = 0.6
    disabled_none: float = 0.25
    seed: int = 42
    extra: list[str] = field(default_factory=list)


class EmulatorProcess(Service):
    """`python -m emulator` on a free loopback port; reads its one JSON line of settings.

    Also a small synchronous client of its /_emulator/ control API (keep-alive HTTPS, trusting only its CA).
    """

    def __init__(self, options: EmulatorOptions, *, start_timeout: float = 600) -> None:
        self.options = options
        self.start_timeout = start_timeout
        self._dir = tempfile.TemporaryDirectory(prefix="bench-emulator-")
        self.ca_file = Path(self._dir.name) / "emulator-ca.pem"
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: http.client.HTTPSConnection | None = None
        self.env: dict[str, str] = {}
        self.startup_s = 0.0

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def start(self) -> Self:
        o = self.options
        args = [
            PYTHON,
            "-m",
            "emulator",
            "--port",
            "0",
            "--mailboxes",
            str(o.mailboxes),
            "--seed",
            str(o.seed),
            "--ca-file",
            str(self.ca_file),
            "--disabled-true",
            str(o.disabled_true),
            "--disabled-none",
            str(o.disabled_none),
            "--latency-ms",
            str(o.latency_ms),
            "--concurrency-limit",
            str(o.concurrency_limit),
            *o.extra,
        ]
        started = time.perf_counter()
        self._proc = subprocess.Popen(args, cwd=REPO, env=base_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert self._proc.stdout is not None
        ready, _, _ = select.select([self._proc.stdout], [], [], self.start_timeout)
        line = self._proc.stdout.readline() if ready else b""
        if not line:
            self.stop()
            raise RuntimeError(f"the emulator did not start within {self.start_timeout:.0f}s")
        self.env = json.loads(line)
        self.startup_s = time.perf_counter() - started
        return self

    @property
    def base_url(self) -> str:
        return self.env["EXCHANGE_ENDPOINT"].removesuffix("/exchange")

    def _connection(self) -> http.client.HTTPSConnection:
        if self._conn is None:
            parts = urlsplit(self.base_url)
            assert parts.hostname == "127.0.0.1", "the benchmarks talk to loopback only"
            context = ssl.create_default_context(cafile=str(self.ca_file))
            self._conn = http.client.HTTPSConnection(parts.hostname, parts.port, context=context, timeout=600)
        return self._conn

    def control(self, method: str, path: str, body: Any = None) -> Any:
        """One /_emulator/ call; JSON in, JSON out. Reconnects once if the keep-alive connection dropped."""
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        for attempt in (1, 2):
            conn = self._connection()
            try:
                conn.request(method, f"/_emulator/{path}", body=payload, headers=headers)
                response = conn.getresponse()
                data = response.read()
                break
            except (http.client.HTTPException, ConnectionError):
                conn.close()
                self._conn = None
                if attempt == 2:
                    raise
        if response.status >= 400:
            raise RuntimeError(f"{method} /_emulator/{path}: HTTP {response.status}: {data[:300]!r}")
        return json.loads(data)

    def calls(self) -> list[dict[str, Any]]:
        return list(self.control("GET", "calls")["entries"])

    def clear_calls(self) -> None:
        self.control("DELETE", "calls")

    def mailboxes(self) -> list[dict[str, Any]]:
        return list(self.control("GET", "mailboxes"))

    def add_mailbox(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        return dict(self.control("POST", "mailboxes", dict(spec)))

    def stop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._proc is not None:
            stop_process(self._proc, timeout=30)
            self._proc = None
        self._dir.cleanup()


# -- call-log accounting ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallCounts:
    invokes: int
    pages: int  # Get-CASMailbox listing pages
    batches: int
    batch_items: int
    throttled: int  # top-level 429s (the emulator's concurrency gate)
    other_invokes: int  # Get-TransportConfig and anything else

    @property
    def exchange_calls(self) -> int:
        """Top-level HTTP calls to Exchange: InvokeCommand + $batch (sub-requests are not calls)."""
        return self.invokes + self.batches

    def json(self) -> dict[str, int]:
        return {
            "exchange_calls": self.exchange_calls,
            "invokes": self.invokes,
            "pages": self.pages,
            "batches": self.batches,
            "batch_items": self.batch_items,
            "throttled_429": self.throttled,
            "other_invokes": self.other_invokes,
        }


def count_calls(entries: Iterable[Mapping[str, Any]]) -> CallCounts:
    invokes = pages = batches = items = throttled = other = 0
    for e in entries:
        kind = e.get("kind")
        if kind == "batch_item":
            items += 1
            continue
        if kind not in ("invoke", "batch"):
            continue
        if e.get("status") == 429:
            throttled += 1
        if kind == "batch":
            batches += 1
            continue
        invokes += 1
        if str(e.get("cmdlet") or "").lower() == "get-casmailbox" and not e.get("identity"):
            pages += 1
        else:
            other += 1
    return CallCounts(invokes, pages, batches, items, throttled, other)


def sweep_duration_s(summary: Mapping[str, Any]) -> float | None:
    """finished_at - started_at from the app's --json summary: the run itself, without process start-up."""
    from datetime import datetime

    try:
        started = datetime.fromisoformat(str(summary["started_at"]))
        finished = datetime.fromisoformat(str(summary["finished_at"]))
    except (KeyError, ValueError):
        return None
    return (finished - started).total_seconds()


# -- the app's sweep against Azurite and the emulator -------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sweep:
    """One measured `shared.cli sweep ... --json`, and what the emulator logged and spent meanwhile."""

    proc: ProcResult
    summary: dict[str, Any]  # the app's --json summary
    entries: list[dict[str, Any]]  # the emulator's call log of this sweep alone
    calls: CallCounts
    emulator_cpu_s: float
    azurite_cpu_s: float
    machine_cpu_s: float = 0.0  # every process on the machine, over the sweep


@dataclass(frozen=True, slots=True)
class SweepStack:
    """Azurite and the emulator as processes, and the app's settings for both, its store initialised."""

    azurite: Azurite
    emulator: EmulatorProcess
    env: dict[str, str]

    def sweep(self, args: Sequence[str], *, label: str) -> Sweep:
        """`shared.cli sweep ARGS` on a cleared call log; `label` names the run if it fails."""
        emulator, azurite_pid = self.emulator, self.azurite.pid or 0
        emulator.clear_calls()
        emu_cpu, az_cpu, all_cpu = cpu_seconds(emulator.pid), cpu_seconds(azurite_pid), machine_cpu_seconds()
        proc = cli(["sweep", *args], self.env)
        all_cpu = machine_cpu_seconds() - all_cpu
        emu_cpu, az_cpu = cpu_seconds(emulator.pid) - emu_cpu, cpu_seconds(azurite_pid) - az_cpu
        if proc.returncode != 0:
            raise RuntimeError(f"{label} exited {proc.returncode}: {proc.stderr.strip()[-800:]}")
        summary = proc.json()
        entries = emulator.calls()
        return Sweep(proc, summary, entries, count_calls(entries), emu_cpu, az_cpu, all_cpu)


@contextmanager
def sweep_stack(options: EmulatorOptions, exchange_concurrency: int) -> Iterator[SweepStack]:
    """Start Azurite and the emulator, initialise the app's store; both stop when the block ends."""
    with Azurite() as azurite, EmulatorProcess(options) as emulator:
        env = app_env(emulator.env, azurite.connection_string, EXCHANGE_CONCURRENCY=str(exchange_concurrency))
        init_store(env)
        yield SweepStack(azurite, emulator, env)
