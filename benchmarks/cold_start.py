"""Cold start: how long a fresh worker process takes to import the function app.

The Functions host imports `function_app` to index the functions, with no guarantee that app settings are
present, so the import must be fast and must not need any setting. Each sample is a fresh interpreter
(cwd = repo, no app settings in the environment), measured two ways:

- in-process: time.perf_counter() around the import statement (what the host waits for after start-up);
- whole process: spawn to exit of `python -c "import X"` (adds interpreter start-up and teardown).

`azure.functions` alone is the floor any Python v2-model app pays.
"""

from __future__ import annotations

import re
import statistics
import subprocess
import time
from typing import Any, Final

from .harness import PYTHON, REPO, base_env, log, table, write_artifact

RUNS: Final = 21
QUICK_RUNS: Final = 5
TARGET_S: Final = 1.0
MODULES: Final = ("function_app", "azure.functions")
_TIMED = "import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
_IMPORTTIME = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)")


def _python(*args: str) -> subprocess.CompletedProcess[str]:
    """A fresh `python ARGS` in the repo with a clean environment, its output captured."""
    return subprocess.run(
        [PYTHON, *args], cwd=REPO, env=base_env(), capture_output=True, text=True, check=True, timeout=120
    )


def _in_process(module: str) -> float:
    return float(_python("-c", _TIMED.format(module=module)).stdout.strip())


def _whole_process(module: str) -> float:  # output not captured: no pipes inside the timing
    started = time.perf_counter()
    subprocess.run([PYTHON, "-c", f"import {module}"], cwd=REPO, env=base_env(), check=True, timeout=120)
    return time.perf_counter() - started


def _heaviest_imports(module: str, top: int = 12) -> list[dict[str, Any]]:
    """Top-level packages by cumulative import time, from one `-X importtime` run."""
    rows = []
    for match in _IMPORTTIME.finditer(_python("-X", "importtime", "-c", f"import {module}").stderr):
        cumulative_us, indent, name = int(match.group(2)), len(match.group(3)), match.group(4)
        if indent <= 1 or "." not in name:  # direct imports of the module, and top-level packages
            rows.append({"module": name, "cumulative_ms": round(cumulative_us / 1000, 1), "depth": indent})
    unique: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row["module"] not in unique or row["cumulative_ms"] > unique[row["module"]]["cumulative_ms"]:
            unique[row["module"]] = row
    return sorted(unique.values(), key=lambda r: -r["cumulative_ms"])[:top]


def _stats(samples: list[float]) -> dict[str, float]:
    return {
        "median_s": round(statistics.median(samples), 4),
        "min_s": round(min(samples), 4),
        "max_s": round(max(samples), 4),
        "stdev_s": round(statistics.stdev(samples), 4) if len(samples) > 1 else 0.0,
    }


def run(quick: bool = False) -> dict[str, Any]:
    runs = QUICK_RUNS if quick else RUNS
    print(f"\n== cold start: {runs} fresh interpreters per module, cwd {REPO}, no app settings")
    for module in MODULES:  # one warm-up each: bytecode caches written, files in the page cache
        _in_process(module)
    samples: dict[str, dict[str, list[float]]] = {m: {"in_process": [], "whole_process": []} for m in MODULES}
    for i in range(runs):  # interleaved, so drift on the machine hits both modules alike
        for module in MODULES:
            samples[module]["in_process"].append(_in_process(module))
            samples[module]["whole_process"].append(_whole_process(module))
        if (i + 1) % 5 == 0:
            log(f"{i + 1}/{runs} rounds")
    stats = {m: {kind: _stats(values) for kind, values in s.items()} for m, s in samples.items()}
    app = stats["function_app"]["in_process"]["median_s"]
    floor = stats["azure.functions"]["in_process"]["median_s"]
    heaviest = _heaviest_imports("function_app")
    print(
        table(
            ["import", "in-process median ms", "min", "max", "whole process median ms", "min", "max"],
            [
                [
                    m,
                    *(stats[m]["in_process"][k] * 1000 for k in ("median_s", "min_s", "max_s")),
                    *(stats[m]["whole_process"][k] * 1000 for k in ("median_s", "min_s", "max_s")),
                ]
                for m in MODULES
            ],
        )
    )
    print(
        f"function_app adds {app - floor:.3f}s over azure.functions; target median <= {TARGET_S:g}s: {app <= TARGET_S}"
    )
    print("heaviest imports under `import function_app` (-X importtime, one run, cumulative):")
    print(table(["module", "cumulative ms"], [[r["module"], r["cumulative_ms"]] for r in heaviest]))
    result = {
        "benchmark": "cold_start",
        "quick": quick,
        "runs": runs,
        "stats": stats,
        "samples": samples,
        "target_median_s": TARGET_S,
        "target_met": app <= TARGET_S,
        "function_app_over_azure_functions_s": round(app - floor, 4),
        "heaviest_imports": heaviest,
    }
    path = write_artifact("coldstart-quick" if quick else "coldstart", result)
    print(f"written {path}")
    return result
