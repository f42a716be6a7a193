"""The layers of `shared/` import only downwards (see shared/__init__.py).

Every import counts, at the top of a module or inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BASE = {"shared.model", "shared.errors", "shared.settings"}
ADAPTERS = {*BASE, "shared.storage", "shared.microsoft"}
USE_CASES = {*ADAPTERS, "shared.bootstrap"}
# What each layer may import of ours, besides itself. Everything above the use cases sits on top.
ALLOWED: dict[str, set[str]] = {
    "shared": set(),  # the package's map: it imports nothing
    "shared.model": set(),
    "shared.errors": set(),
    "shared.settings": {"shared.errors"},
    "shared.storage": BASE,
    "shared.microsoft": BASE,
    "shared.bootstrap": ADAPTERS,
    "shared.sweep": USE_CASES,
    "shared.workflow": USE_CASES,
    "shared.web": {*USE_CASES, "shared.workflow"},
    "shared.rollout": {*USE_CASES, "shared.workflow"},
    "shared.cli": {*USE_CASES, "shared.sweep", "shared.workflow", "shared.rollout"},
    "functions": {*USE_CASES, "shared.sweep", "shared.workflow", "shared.web"},
    "function_app": {"functions"},
}


def layer_of(module: str) -> str | None:
    matches = [layer for layer in ALLOWED if module == layer or module.startswith(f"{layer}.")]
    return max(matches, key=len) if matches else None


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from shared import bootstrap` imports shared.bootstrap; `from shared.x import y` imports shared.x.
            for alias in node.names:
                named = f"{node.module}.{alias.name}"
                found.append((node.lineno, named if layer_of(named) != layer_of(node.module) else node.module))
    return found


def violations(paths: list[Path]) -> list[str]:
    wrong: list[str] = []
    for path in paths:
        here = layer_of(module_name(path))
        assert here is not None, f"{path.relative_to(ROOT)} belongs to no layer: add it to ALLOWED"
        for line, target in imports_of(path):
            there = layer_of(target)
            if there is None or there == here or there in ALLOWED[here]:
                continue
            wrong.append(f"{path.relative_to(ROOT)}:{line}: {here} may not import {target} ({there})")
    return sorted(set(wrong))


def app_modules() -> list[Path]:
    return [*ROOT.glob("shared/**/*.py"), *ROOT.glob("functions/*.py"), ROOT / "function_app.py"]


def test_every_layer_imports_only_downwards() -> None:
    assert violations(app_modules()) == []


def test_the_model_imports_nothing_of_ours() -> None:
    model = [p for p in app_modules() if module_name(p).startswith("shared.model")]
    ours = [
        target for path in model for _, target in imports_of(path) if target.split(".")[0] in {"shared", "functions"}
    ]
    assert model and [target for target in ours if not target.startswith("shared.model")] == []


@pytest.mark.parametrize(
    ("module", "wrong"),
    [
        ("shared/model/mailbox.py", "from shared.errors import InputError"),
        ("shared/storage/tables.py", "from shared.microsoft.exchange import ExchangeClient"),
        ("shared/workflow/requests.py", "from shared.web.responses import HttpError"),
        ("shared/sweep/engine.py", "import shared.workflow.grants"),
        ("shared/microsoft/graph.py", "from shared.storage import Store"),
    ],
)
def test_a_wrong_import_is_caught(tmp_path: Path, module: str, wrong: str, monkeypatch: pytest.MonkeyPatch) -> None:
    planted = tmp_path / module
    planted.parent.mkdir(parents=True)
    planted.write_text(f"def late() -> None:\n    {wrong}  # inside a function counts too\n")
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    assert len(violations([planted])) == 1
